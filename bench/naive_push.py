"""The naive push fan-out, the reference row of scripts/bench-push: what issue #3 measured before the gateway.

One Redis subscription per process (as the gateway), but each client gets its own queue and its own
sse-starlette `EventSourceResponse`, which encodes every event per client and runs a task group per client.
No resume, no coalescing, no owner check: it only forwards the user's channel, so it is a lower bound on the
work a naive server does, not a service.

uvicorn --factory bench.naive_push:app   (REDIS_URL, NAIVE_CHANNEL)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class FanOut:
    def __init__(self, redis: Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self.queues: set[asyncio.Queue[dict[str, Any]]] = set()

    async def listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                event = json.loads(msg["data"])
                for queue in self.queues:
                    queue.put_nowait(event)


def app() -> Starlette:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    fanout = FanOut(redis, os.environ["NAIVE_CHANNEL"])

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(fanout.listen())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()

    async def events(request: Request) -> Response:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        fanout.queues.add(queue)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            try:
                yield {"event": "snapshot", "data": '{"kind":"snapshot"}'}
                while True:
                    event = await queue.get()
                    data = json.dumps(event, separators=(",", ":"))
                    yield {"id": str(event.get("seq", "")), "event": event["kind"], "data": data}
            finally:
                fanout.queues.discard(queue)

        return EventSourceResponse(stream(), ping=15)

    async def healthz(_: Request) -> Response:
        return Response(json.dumps({"gateway": {"connections": len(fanout.queues)}}), media_type="application/json")

    return Starlette(routes=[Route("/api/jobs/{job_id}/events", events), Route("/healthz", healthz)], lifespan=lifespan)
