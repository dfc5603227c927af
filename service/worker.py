"""The worker process: arq underneath, JSON on the wire, our runner around every task."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import uuid
from collections.abc import Iterable
from typing import Any, cast

import httpx
from arq import Retry, Worker, cron, func
from prometheus_client.core import GaugeMetricFamily, Metric

from . import logs, tracing
from .arq_worker import WakeableWorker
from .coalesce import Coalescer
from .config import Settings
from .coordination import ProviderBackoff, listen_for_cancels, unregister_worker
from .crypto import KeyBox, SecretBox, load_server_secret
from .errors import StoreUnavailable
from .events import EventLog
from .files import tighten_dir
from .governor import RateLimitWaits, build_governor
from .lifecycle import Maintenance
from .metrics import Metrics, serve_metrics, store_errors
from .provider_keys import ProviderKeys
from .providers.base import Provider
from .providers.factory import build_chain_providers, build_provider
from .queue import RUN_JOB_FUNCTION, JobQueue, json_deserializer, json_serializer, parse_arq_job_id
from .redis_url import arq_pool, follow_primary
from .runner import HeldBack, JobRunner
from .store import JobStore, job_secrets, open_store
from .store.patient import PatientWrites
from .tasks import TaskRegistry, default_registry
from .tracing import Tracing
from .webhooks.dispatch import Dispatcher
from .webhooks.targets import Resolver

log = logging.getLogger("aijobs.worker")

CLEANUP_CRON = "aijobs:cleanup"


# Young objects allocated between two collections of the youngest generation (CPython's default: 700). A worker with
# hundreds of jobs in flight allocates that many in a fraction of a job, so every job's objects were collected a
# few times while alive and promoted, and full collections (each walking every job in flight, 0.1-0.35 s at 1,000)
# came every second or two. At 10,000 the same objects mostly die young: a tenth of the collections, and no full one
# in a 3,000-job burst (README, Performance). A few MB more between collections, no more.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """For the worker process, before it runs: collect once, freeze what is alive (modules, classes, the app's
    setup: never garbage, and walked by every full collection otherwise), and collect young objects less often.
    Process-wide, so the `aijobs worker` entry and the bench's worker call it, not build_worker (tests and embedded
    runs share their process with other things)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def run_job(
    ctx: dict[str, Any], job_id: str, request_id: str | None = None, traceparent: str | None = None
) -> str:
    """`request_id`, `traceparent`: the submitting request's, from the queue entry (tracing.Origin)."""
    origin = tracing.begin(tracing.Origin(request_id, traceparent))
    fields = logs.bind(job_id=job_id)
    try:
        return await _run_job(ctx, job_id)
    finally:
        logs.unbind(fields)
        tracing.end(origin)


async def _run_job(ctx: dict[str, Any], job_id: str) -> str:
    runner: JobRunner = ctx["runner"]
    _, ticket = parse_arq_job_id(str(ctx.get("job_id", "")))
    try:
        outcome = await runner.run(job_id, ticket)
    except HeldBack as held:  # a shared provider back-off: wait in the queue, no attempt spent
        raise Retry(defer=held.seconds) from None
    except StoreUnavailable as exc:  # the claim was not recorded: the job keeps its place, and this worker takes
        # no job until the store answers
        pause = ctx["store_pause"]
        log.warning(
            "store unreachable: job left on the queue, taking no jobs",
            extra={"job_id": job_id, "error": str(exc), "pause": pause},
        )
        ctx["pause_taking_jobs"](pause)
        raise Retry(defer=pause) from None
    if outcome in ("completed", "failed", "cancelled"):  # the job is over: its sealed provider key (if any) goes too
        await ctx["provider_keys"].forget(job_id)
    return outcome


async def cleanup_job(ctx: dict[str, Any]) -> int:
    maintenance: Maintenance = ctx["maintenance"]
    return await maintenance.cleanup()


async def start_metrics_server(settings: Settings, metrics: Metrics) -> asyncio.Server | None:
    """The worker's own /metrics on METRICS_HOST:METRICS_PORT; a port already taken is logged, not fatal (the jobs
    matter more than their numbers, and Prometheus shows the target down)."""
    try:
        server = await serve_metrics(
            metrics, host=settings.metrics_host, port=settings.metrics_port, token=settings.metrics_token
        )
    except OSError as exc:
        log.error(
            "the worker's metrics endpoint could not listen; running without it",
            extra={"host": settings.metrics_host, "port": settings.metrics_port, "error": str(exc)},
        )
        return None
    log.info("metrics endpoint listening", extra={"host": settings.metrics_host, "port": settings.metrics_port})
    return server


def watch_worker(metrics: Metrics, *, store: JobStore, runner: JobRunner, slots: int) -> None:
    """What a worker reports at scrape time: its runs in flight, its job slots, its store's errors."""

    def running() -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "aijobs_worker_running_jobs", "Attempts running in this worker now", value=len(runner.active)
        )
        yield GaugeMetricFamily(
            "aijobs_worker_slots", "Jobs this worker runs at once (WORKER_CONCURRENCY)", value=slots
        )

    metrics.collect(running)
    metrics.collect(store_errors(store))


def build_worker(
    settings: Settings,
    *,
    redis_url: str,
    registry: TaskRegistry | None = None,
    provider: Provider | None = None,
    burst: bool = False,
    handle_signals: bool = True,
    resolver: Resolver | None = None,
    tracer_provider: Any = None,
) -> Worker:
    """An arq Worker wired to our store, event log and provider; resources open in on_startup. `resolver`: how webhook
    hosts are looked up (the system's by default; tests give their own names). `tracer_provider`: an OpenTelemetry
    TracerProvider for TRACING=true (tests); None: the process's own."""
    registry = registry or default_registry()
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    metrics = Metrics(role="worker", prices=settings.prices, process=True)

    async def startup(ctx: dict[str, Any]) -> None:
        tighten_dir(settings.data_dir)  # an older version left it readable by others
        store = open_store(settings)
        await store.open()
        ctx["metrics"] = metrics
        if settings.metrics_port:
            ctx["metrics_server"] = await start_metrics_server(settings, metrics)
        http = httpx.AsyncClient(timeout=settings.ai_timeout) if provider is None else None
        ai = provider or build_provider(
            base_url=settings.ai_base_url,
            api_key=settings.ai_api_key,
            model=settings.ai_model,
            image_model=settings.ai_image_model,
            sim_delay=settings.sim_delay,
            client=http,
        )
        chain_providers = build_chain_providers(
            ai,
            settings.providers.values(),
            model=settings.ai_model,
            sim_delay=settings.sim_delay,
            client=http,
        )
        server_secret = load_server_secret(settings)
        keys = ProviderKeys(job_secrets(store), KeyBox(server_secret))
        webhooks = ctx["webhooks"] = Dispatcher(
            store=store, settings=settings, box=SecretBox(server_secret), resolver=resolver
        )
        ctx.update(store=store, http=http, provider=ai, provider_keys=keys, chain_providers=chain_providers)
        events = ctx["events"] = EventLog(ctx["redis"], maxlen=settings.event_stream_maxlen)
        events.reread = store.get  # a job whose events a silent Redis missed is announced from the store when back
        queue = JobQueue(ctx["redis"], queue_name=settings.queue_name)
        governor = build_governor(ctx["redis"], settings)
        chat_models = (settings.ai_model, *settings.ai_fallback_models) if settings.ai_fallback_models else ()
        patient = ctx["patient"] = PatientWrites(store)  # a run's writes wait out a store outage (until shutdown)
        runner = ctx["runner"] = JobRunner(
            store=cast(JobStore, patient),
            events=events,
            queue=queue,
            registry=registry,
            provider=ai,
            worker_id=worker_id,
            default_timeout=settings.job_timeout,
            provider_keys=keys,
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            retry_base=settings.retry_base,
            retry_cap=settings.retry_cap,
            chat_models=chat_models,
            # A 429 pauses the provider/model for every worker, unless the governor paces that provider: then it
            # holds back that provider, model and key only.
            backoff=ProviderBackoff(ctx["redis"]),
            providers=chain_providers,
            waits=RateLimitWaits(ctx["redis"], max_wait=settings.rate_limit_max_wait),
            governor=governor,
            # A dead leader's call is taken over after a job lease, as a dead worker's job is.
            coalescer=Coalescer(ctx["redis"], lease=settings.lease_seconds, batch=events.batch)
            if settings.coalesce
            else None,
            result_cache_seconds=settings.result_cache_seconds,
            on_end=lambda job: webhooks.wake() if job.webhook else None,
            metrics=metrics,
            tracing=Tracing.from_settings(settings.tracing, service="aijobs-worker", provider=tracer_provider),
        )
        maintenance = ctx["maintenance"] = Maintenance(
            store=store, queue=queue, events=events, settings=settings, worker_id=worker_id, metrics=metrics
        )
        watch_worker(metrics, store=store, runner=runner, slots=settings.worker_concurrency)
        ctx["background"] = [
            asyncio.create_task(maintenance.run_forever()),
            asyncio.create_task(listen_for_cancels(ctx["redis"], runner.cancel_local)),
            asyncio.create_task(follow_primary(ctx["redis"])),  # Sentinel: see redis_url.py
            asyncio.create_task(webhooks.run_forever(), name="aijobs-webhooks"),
        ]

    async def shutdown(ctx: dict[str, Any]) -> None:
        server = ctx.pop("metrics_server", None)
        if server is not None:
            server.close()
        for task in ctx.get("background", []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if "events" in ctx:  # terminal events are queued, not awaited (JobRunner._announce): out before Redis closes
            await ctx["events"].drain()
        with contextlib.suppress(Exception):
            await unregister_worker(ctx["redis"], settings.queue_name, worker_id, settings.worker_concurrency)
        if "store" in ctx:
            await ctx["store"].close()
        if provider is None and "provider" in ctx:
            await ctx["provider"].aclose()
        for extra in ctx.get("chain_providers", {}).values():
            if extra is not ctx.get("provider"):
                await extra.aclose()
        if ctx.get("http") is not None:
            await ctx["http"].aclose()

    max_timeout = max([settings.job_timeout, *(s.timeout or 0 for s in registry)])
    worker = WakeableWorker(
        functions=[func(run_job, name=RUN_JOB_FUNCTION, max_tries=1000, timeout=max_timeout + 30)],
        # unique: every worker enqueues the same minute's id, so one runs it; its result kept 2 min makes a late
        # worker's enqueue of that id (a slow loop, a skewed clock) a no-op too, not a second run after the first ended
        cron_jobs=[cron(cleanup_job, name=CLEANUP_CRON, second={0}, unique=True, timeout=60, keep_result=120)],
        job_completion_wait=settings.shutdown_grace,  # SIGTERM: finish, then give back
        queue_name=settings.queue_name,
        pool_factory=functools.partial(
            arq_pool,
            redis_url,
            job_serializer=json_serializer,
            job_deserializer=json_deserializer,
            default_queue_name=settings.queue_name,
            retry=metrics.redis_errors,  # counts every command that fails for want of Redis
            socket_timeout=settings.redis_socket_timeout,
            connect_timeout=settings.redis_connect_timeout,
        ),
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
        inline_functions=frozenset({RUN_JOB_FUNCTION}),
    )

    def stopping(signum: signal.Signals) -> None:
        """SHUTDOWN_GRACE is over and the running jobs were just cancelled: their hand-backs are tried, but not held
        through a store outage, so the worker exits within its grace plus one store timeout; a job not given back is
        handed on by another worker's sweeper once its lease lapses."""
        patient: PatientWrites | None = worker.ctx.get("patient")
        if patient is not None:
            patient.give_up()

    worker.on_stop = stopping
    worker.ctx["pause_taking_jobs"] = worker.pause
    worker.ctx["store_pause"] = settings.heartbeat_seconds  # how long a worker that could not claim waits to retry
    return worker
