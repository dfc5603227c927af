"""Every spell of a job logs the id (and trace) of the request that submitted it: a retry the runner enqueues again,
and a spell another worker's sweeper enqueues after the one that carried them died with its worker (real worker
processes, their JSON log lines). The take-over's spell gets them from the job's row, not from the dead spell's
queue entry, which another worker may run and delete first; so does a spell the reconciler enqueues again after
Redis lost the queue entry (in-process, on the suite's store and Redis)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from arq.connections import RedisSettings, create_pool
from arq.constants import job_key_prefix

from service.api.app import create_app
from service.config import Settings
from service.embedded import EmbeddedRedis
from service.events import EventLog
from service.lifecycle import Maintenance
from service.models import Job, JobStatus, now
from service.queue import JobQueue, arq_job_id, json_deserializer, json_serializer
from service.store import open_store

from .conftest import fast_settings, make_user, run_worker, serve, wait_for_status
from .procs import WorkerProcess, spawn, store_row, workers

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"


def lines_about(worker: WorkerProcess, job_id: str) -> list[dict[str, Any]]:
    out = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("job_id") == job_id:
                out.append(record)
    return out


async def submit(client: httpx.AsyncClient, text: str, request_id: str, **headers: str) -> str:
    r = await client.post(
        "/api/jobs", json={"type": "summary", "input": {"text": text}}, headers={"X-Request-ID": request_id, **headers}
    )
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


async def test_a_retried_job_logs_the_submitting_requests_id_in_every_attempt(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    with workers(settings, tmp_path) as started:
        a = spawn(started, settings, tmp_path, LOG_JSON="true")
        # A retry: the runner enqueues the job again (service/runner/run.py `_enqueue`).
        retried = await submit(client, "Fails once. [[fail:500:times=1]]", "req-of-the-retried-job")
        done = await wait_for_status(client, retried, {"completed", "failed", "cancelled"})
        assert done["status"] == "completed" and done["attempt"] == 2, done
        started_lines = [r for r in lines_about(a, retried) if r["msg"] == "job started"]
        assert [r["attempt"] for r in started_lines] == [1, 2], lines_about(a, retried)
        assert {r.get("request_id") for r in lines_about(a, retried)} == {"req-of-the-retried-job"}


async def test_a_job_taken_over_from_a_dead_worker_logs_the_submitting_requests_id_and_trace(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    with workers(settings, tmp_path) as started:
        a = spawn(started, settings, tmp_path, LOG_JSON="true")
        lost = await submit(client, "Outlives its worker. [[slow:3]]", "req-of-the-lost-run", traceparent=TRACEPARENT)
        row = store_row(settings, lost)
        assert (row["request_id"], row["traceparent"]) == ("req-of-the-lost-run", TRACEPARENT), "kept by the submit"
        deadline = asyncio.get_running_loop().time() + 30
        while store_row(settings, lost)["status"] != "processing":
            assert asyncio.get_running_loop().time() < deadline, store_row(settings, lost)
            await asyncio.sleep(0.05)
        a.signal(signal.SIGKILL)  # the spell whose queue entry carried the ids dies with its worker
        await a.wait_exit()
        b = spawn(started, settings, tmp_path, LOG_JSON="true")
        done = await wait_for_status(client, lost, {"completed", "failed", "cancelled"}, timeout=30)
        assert done["status"] == "completed" and done["attempt"] == 2, done
        mine = lines_about(b, lost)
        assert any(r["msg"] == "lapsed lease taken over" for r in mine), mine  # b's sweeper, not a's last spell
        second = [r for r in mine if r.get("attempt") == 2]
        assert {"job started", "job completed"} <= {r["msg"] for r in second}, mine
        for record in mine:  # every line on the worker that took it over: its sweeper's and the new spell's
            assert record.get("request_id") == "req-of-the-lost-run", record
            assert record.get("trace_id") == TRACE, record


async def queue_entry_kwargs(m: Maintenance, job: Job) -> dict[str, Any]:
    """The keyword arguments run_job gets from this spell's queue entry."""
    raw = await m.queue.redis.get(job_key_prefix + arq_job_id(job.id, job.seq))
    assert raw is not None, f"spell {job.seq} of {job.id} is not on the queue"
    return dict(json_deserializer(raw)["k"])


async def test_the_sweeper_and_the_reconciler_enqueue_a_job_with_its_stored_origin(settings: Settings) -> None:
    """Neither has the lost spell's queue entry to read: both take the ids from the job's row."""
    s = replace(settings, sweep_seconds=30)
    assert s.redis_url
    redis = await create_pool(  # as the worker's and web's pools: JSON entries
        RedisSettings.from_dsn(s.redis_url), job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    store = open_store(s)
    await store.open()
    try:
        m = Maintenance(store=store, queue=JobQueue(redis, queue_name=s.queue_name), events=EventLog(redis), settings=s)
        run = uuid.uuid4().hex[:8]
        lapsed = Job(id=f"lapsed-{run}", user_id="u", type="summary", input={}, request_id="req-l",
                     traceparent=TRACEPARENT)  # fmt: skip
        await store.create(lapsed)
        assert await store.claim(lapsed.id, worker_id="dead", token="t", ticket=lapsed.seq, lease_seconds=-1)
        missing = Job(id=f"missing-{run}", user_id="u", type="summary", input={}, request_id="req-m")
        missing.created_at = missing.updated_at = missing.ready_at = now() - 60  # past the reconciler's grace
        missing.expires_at = now() + 600
        await store.create(missing)  # and never enqueued: as if Redis lost its entry
        before = Job(id=f"before-{run}", user_id="u", type="summary", input={})  # submitted before the columns
        await store.create(before)
        assert await store.claim(before.id, worker_id="dead", token="t", ticket=before.seq, lease_seconds=-1)

        assert await m.sweep_leases() == 2 and await m.reconcile() == 1
        back, found, old = [await store.get(j.id) for j in (lapsed, missing, before)]
        assert back is not None and back.status is JobStatus.QUEUED and back.request_id == "req-l", back
        assert await queue_entry_kwargs(m, back) == {"request_id": "req-l", "traceparent": TRACEPARENT}
        assert found is not None and await queue_entry_kwargs(m, found) == {"request_id": "req-m"}
        assert old is not None and await queue_entry_kwargs(m, old) == {}, "no ids: runs on without them"
    finally:
        await store.close()
        await redis.aclose()


async def test_a_taken_over_run_is_a_span_in_the_submitting_posts_trace(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """With TRACING on, the run the sweeper enqueued after a lost one is a child of the POST's span, as the first
    run would have been (in-process web and worker; the dead worker is a claim whose lease has already lapsed)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = fast_settings(
        redis_server, tmp_path, tracing=True, sim_delay=0.05, lease_seconds=2.0, heartbeat_seconds=0.5,
        sweep_seconds=0.5,
    )  # fmt: skip
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url, tracer_provider=provider)) as web:
        token = await make_user(settings, "alice")
        headers = {"Authorization": f"Bearer {token}", "traceparent": TRACEPARENT}
        async with httpx.AsyncClient(base_url=web.url, timeout=10, headers=headers) as alice:
            r = await alice.post("/api/jobs", json={"type": "titles", "input": {"text": "Traced past a dead worker"}})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            store = open_store(settings)
            await store.open()
            try:  # a worker took the first spell and died with it: no worker has run anything yet
                dead = await store.claim(job_id, worker_id="gone:1:x", token="dead", ticket=1, lease_seconds=-1)
            finally:
                await store.close()
            assert dead is not None and dead.attempts == 1
            async with run_worker(settings, tracer_provider=provider):
                done = await wait_for_status(alice, job_id, {"completed", "failed", "cancelled"})
                assert done["status"] == "completed" and done["attempt"] == 2, done
                deadline = asyncio.get_running_loop().time() + 10
                while not any(s.name == "run titles" for s in exporter.get_finished_spans()):
                    assert asyncio.get_running_loop().time() < deadline, exporter.get_finished_spans()
                    await asyncio.sleep(0.02)  # the run's span ends just after its completion is written
    spans = exporter.get_finished_spans()
    [post] = [s for s in spans if s.name == "POST /api/jobs"]
    [run] = [s for s in spans if s.name == "run titles"]  # the dead spell's stale entry is skipped before a span
    assert post.context.trace_id == run.context.trace_id == int(TRACE, 16)
    assert run.parent is not None and run.parent.span_id == post.context.span_id, "a child of the POST's span"
    assert run.attributes is not None and run.attributes["aijobs.attempt"] == 2
