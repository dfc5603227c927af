"""The worker process: arq underneath, JSON on the wire, our runner around every task."""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import httpx
from arq import Worker, func
from arq.connections import RedisSettings

from .arq_worker import WakeableWorker
from .config import Settings
from .events import EventLog
from .models import dumps
from .providers.base import Provider
from .providers.factory import build_provider
from .queue import RUN_JOB_FUNCTION, JobQueue
from .runner import JobRunner
from .store import open_store
from .tasks import TaskRegistry, default_registry


def json_serializer(value: Any) -> bytes:
    return dumps(value).encode()


def json_deserializer(raw: bytes) -> Any:
    return json.loads(raw)


async def run_job(ctx: dict[str, Any], job_id: str) -> str:
    runner: JobRunner = ctx["runner"]
    return await runner.run(job_id)


def build_worker(
    settings: Settings,
    *,
    redis_url: str,
    registry: TaskRegistry | None = None,
    provider: Provider | None = None,
    burst: bool = False,
    handle_signals: bool = True,
) -> Worker:
    """An arq Worker wired to our store, event log and provider; resources open in on_startup."""
    registry = registry or default_registry()
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    async def startup(ctx: dict[str, Any]) -> None:
        store = open_store(settings)
        await store.open()
        http = httpx.AsyncClient(timeout=settings.ai_timeout) if provider is None else None
        ai = provider or build_provider(
            base_url=settings.ai_base_url,
            api_key=settings.ai_api_key,
            model=settings.ai_model,
            image_model=settings.ai_image_model,
            sim_delay=settings.sim_delay,
            client=http,
        )
        ctx.update(store=store, http=http, provider=ai)
        ctx["runner"] = JobRunner(
            store=store,
            events=EventLog(ctx["redis"], maxlen=settings.event_stream_maxlen),
            queue=JobQueue(ctx["redis"], queue_name=settings.queue_name),
            registry=registry,
            provider=ai,
            worker_id=worker_id,
            default_timeout=settings.job_timeout,
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "store" in ctx:
            await ctx["store"].close()
        if provider is None and "provider" in ctx:
            await ctx["provider"].aclose()
        if ctx.get("http") is not None:
            await ctx["http"].aclose()

    max_timeout = max([settings.job_timeout, *(s.timeout or 0 for s in registry)])
    return WakeableWorker(
        functions=[func(run_job, name=RUN_JOB_FUNCTION, max_tries=1000, timeout=max_timeout + 30)],
        queue_name=settings.queue_name,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=settings.worker_concurrency,
        poll_delay=settings.poll_delay,
        keep_result=0,
        job_serializer=json_serializer,
        job_deserializer=json_deserializer,
        burst=burst,
        handle_signals=handle_signals,
        max_burst_jobs=-1,
    )
