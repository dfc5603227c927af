"""Live workers: each worker process refreshes a small Redis key with a TTL; a worker that dies simply expires."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger("aijobs.workers")

HEARTBEAT_SECONDS = 5.0
TTL_SECONDS = 15


def worker_key(queue_name: str, worker_id: str) -> str:
    """Namespaced by queue, so deployments (and test runs) sharing one Redis don't see each other's workers."""
    return f"aijobs:workers:{queue_name}:{worker_id}"


class WorkerHeartbeat:
    def __init__(self, redis: Redis, *, queue_name: str, worker_id: str, concurrency: int) -> None:
        self.redis = redis
        self.key = worker_key(queue_name, worker_id)
        self.info = {"id": worker_id, "concurrency": concurrency, "started_at": time.time()}
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        await self.redis.set(self.key, json.dumps({**self.info, "seen_at": time.time()}), ex=TTL_SECONDS)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.beat()
            except Exception as exc:  # Redis away for a moment: the key may lapse, the worker goes on
                log.warning("worker heartbeat failed", extra={"error": exc.__class__.__name__})

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._loop(), name="aijobs-worker-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.redis.delete(self.key)


async def live_workers(redis: Redis, queue_name: str) -> list[dict[str, Any]]:
    keys = [k async for k in redis.scan_iter(match=worker_key(queue_name, "*"), count=200)]
    if not keys:
        return []
    out = []
    for raw in await redis.mget(keys):
        if raw:
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
    return sorted(out, key=lambda w: w.get("id", ""))
