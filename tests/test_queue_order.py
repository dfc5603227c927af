"""Priorities, queue position and ETA compared with what happened, shared provider back-off, expiry, cleanup."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis

from service.config import Settings
from service.events import EventLog, stream_key
from service.lifecycle import Maintenance
from service.queue import PRIORITY_STEP_SECONDS, JobQueue, queue_score_ms
from service.store import open_store
from service.store.sqlite import SQLiteJobStore

from .conftest import WAIT_SECONDS, run_worker, wait_for_status
from .procs import store_row


async def submit(client: httpx.AsyncClient, text: str, priority: int = 5) -> str:
    r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": text}, "priority": priority})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


async def test_higher_priority_runs_first(client: httpx.AsyncClient, settings: Settings) -> None:
    one = replace(settings, worker_concurrency=1)
    async with run_worker(one):
        blocker = await submit(client, "blocker [[slow:1]]")
        await wait_for_status(client, blocker, {"processing"})
        low = await submit(client, "low", 1)
        high = await submit(client, "high", 10)
        mid = await submit(client, "mid", 5)
        ahead = (await client.get(f"/api/jobs/{low}")).json()["queue"]["position"]
        assert ahead == 2  # high and mid overtake it
        for job_id in (low, high, mid):
            await wait_for_status(client, job_id, {"completed"})
    order = sorted((store_row(settings, j)["started_at"], name) for j, name in ((low, "1"), (high, "10"), (mid, "5")))
    assert [name for _, name in order] == ["10", "5", "1"]


def test_low_priority_is_not_starved() -> None:
    """Each priority step is worth a 10 s head start: a priority-1 job waiting 90 s+ beats a new priority 10."""
    t0 = 1_000_000.0
    waited = (10 - 1) * PRIORITY_STEP_SECONDS + 1
    assert queue_score_ms(t0, 1) < queue_score_ms(t0 + waited, 10)
    assert queue_score_ms(t0, 1) > queue_score_ms(t0 + waited - 2, 10)


async def test_position_and_eta_are_honest(client: httpx.AsyncClient, settings: Settings) -> None:
    one = replace(settings, worker_concurrency=1, heartbeat_seconds=0.5, lease_seconds=5)
    async with run_worker(one):
        for i in range(2):  # measured run times of this type, as the estimate uses
            await wait_for_status(client, await submit(client, f"warm up {i}"), {"completed"})
        ids = [await submit(client, f"batch {i}") for i in range(4)]
        last = (await client.get(f"/api/jobs/{ids[-1]}")).json()
        queue = last["queue"]
        assert last["status"] == "queued" and queue["workers_capacity"] == 1
        assert queue["position"] >= 2 and queue["estimated_wait"] is not None
        running = await wait_for_status(client, ids[-1], {"processing", "completed"})
        if running["status"] == "processing":
            assert running["progress"]["estimated_time_remaining"] is not None
        await wait_for_status(client, ids[-1], {"completed"})
        events = await EventLog(client_redis := Redis.from_url(settings.redis_url or "")).read_after(ids[-1], 0)
        await client_redis.aclose()
    assert any("estimated_time_remaining" in e.data for e in events if e.kind.value == "progress")
    row = store_row(settings, ids[-1])
    actual = row["started_at"] - row["created_at"]
    estimated = queue["estimated_wait"]
    print(f"estimated wait {estimated:.2f} s, actual {actual:.2f} s, position {queue['position']}")
    assert estimated / 3 - 0.3 <= actual <= estimated * 3 + 0.5


async def test_no_worker_means_unknown_wait(client: httpx.AsyncClient) -> None:
    job = (await client.post("/api/jobs", json={"type": "summary", "input": {"text": "alone"}})).json()
    assert job["queue"]["estimated_wait"] is None and job["queue"]["workers_capacity"] == 0


@pytest.mark.parametrize("governor", [False, True], ids=["provider-pause", "governor"])
async def test_shared_backoff_holds_other_jobs_without_spending_attempts(
    client: httpx.AsyncClient, settings: Settings, governor: bool
) -> None:
    """A 429 with Retry-After holds the other jobs for that provider back (the governor: for that provider, model
    and key) until it is over, without spending their attempts."""
    async with run_worker(replace(settings, worker_concurrency=4, retry_base=0.05, retry_cap=0.1, governor=governor)):
        first = await submit(client, "limited [[fail:429:retry_after=1.5:times=1]]")
        deadline = time.monotonic() + WAIT_SECONDS
        while (
            not (await client.get(f"/api/jobs/{first}")).json()["error"]
            or store_row(settings, first)["status"] != "queued"
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        paused_at = time.time()
        second = await submit(client, "innocent bystander")
        done = await wait_for_status(client, second, {"completed", "failed"})
        assert done["status"] == "completed" and done["attempt"] == 1 and done["attempts"][0]["error"] is None
        assert store_row(settings, second)["completed_at"] >= paused_at + 1.0  # its call waited for the pause
        await wait_for_status(client, first, {"completed"})


@pytest.fixture
async def maintenance(settings: Settings):  # type: ignore[no-untyped-def]
    assert settings.redis_url
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    store = open_store(settings)
    await store.open()
    yield lambda s: Maintenance(
        store=store, queue=JobQueue(redis, queue_name=s.queue_name), events=EventLog(redis), settings=s
    )
    await store.close()
    await redis.aclose()


async def test_job_not_started_in_time_expires(settings: Settings, maintenance) -> None:  # type: ignore[no-untyped-def]
    from service.api.app import create_app

    from .conftest import serve, user_client

    quick = replace(settings, job_max_wait=0.2)
    assert quick.redis_url
    async with serve(create_app(quick, redis_url=quick.redis_url)) as live, user_client(live, quick, "alice") as c:
        body = {"type": "summary", "input": {"text": "nobody will run me"}, "user_provided_key": "sk-user-exp"}
        job_id = (await c.post("/api/jobs", json=body)).json()["job_id"]
        await asyncio.sleep(0.3)  # past its maximum wait
        sweeper = maintenance(quick)
        assert await sweeper.expire() == 1
        job = (await c.get(f"/api/jobs/{job_id}")).json()
        assert await sweeper.forget_keys() == 1  # the user's sealed key does not outlive the job
        assert await sweeper.forget_keys() == 0
    assert job["status"] == "expired" and job["error"]["code"] == "expired"
    assert "worker is running" in job["error"]["message"] and "retry" in job["error"]["message"]


async def test_cleanup_purges_old_results_and_streams(
    client: httpx.AsyncClient, settings: Settings, worker: object, maintenance
) -> None:  # type: ignore[no-untyped-def]
    job_id = await submit(client, "short lived")
    await wait_for_status(client, job_id, {"completed"})
    keep = maintenance(settings)
    assert await keep.cleanup() == 0  # within retention
    assert (await client.get(f"/api/jobs/{job_id}")).status_code == 200
    gone = maintenance(replace(settings, retention_completed=0, event_retention=0))
    assert await gone.cleanup() == 1
    assert (await client.get(f"/api/jobs/{job_id}")).status_code == 404
    assert not await gone.queue.redis.exists(stream_key(job_id))


async def test_deferred_retry_position_counts_what_runs_before_it(settings: Settings) -> None:
    """A retry backing off is scored at its due time with no head start, in Redis and in queue_ahead alike."""
    from service.models import Job, JobError

    assert settings.redis_url
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    store = open_store(settings)
    await store.open()
    queue = JobQueue(redis, queue_name=settings.queue_name)
    try:
        retry = await store.create(Job(id="retry", user_id="u", type="summary", input={}, priority=10))
        await store.claim(retry.id, worker_id="w", token="t")
        error = JobError(message="busy", code="rate_limited", retryable=True)
        deferred = await store.requeue(retry.id, "t", error=error, step="Retrying…", delay=5.0)
        assert deferred is not None
        await queue.enqueue(deferred.id, ticket=deferred.seq, priority=deferred.priority, defer_seconds=5.0)
        for name, priority in (("low", 1), ("mid", 5), ("high", 10)):
            fresh = Job(id=name, user_id="u", type="summary", input={}, priority=priority)
            fresh.ready_at = fresh.created_at
            await store.create(fresh)
            await queue.enqueue(name, ticket=fresh.seq, priority=priority)
        # Redis's order is what really runs first: the retry is last despite its priority 10.
        in_redis = [m.decode().split(".")[0] for m in await redis.zrange(settings.queue_name, 0, -1)]
        assert in_redis == ["high", "mid", "low", "retry"]
        for position, job_id in enumerate(in_redis):
            job = await store.get(job_id)
            assert job is not None
            assert await store.queue_ahead(job) == position, job_id
    finally:
        await store.close()
        await redis.aclose()


async def test_watchers_of_a_queued_job_see_its_place_and_wait_move(settings: Settings) -> None:
    """Over SSE and WebSocket, a queued job's watchers get `position` updates as the jobs ahead drain: never an
    increase, down to 0, then the job starts; the first wait pushed is close to what happened."""
    import json

    import websockets

    from service.api.app import create_app

    from .conftest import serve, user_client
    from .sse import read_events

    s = replace(settings, worker_concurrency=1, position_push_seconds=0.1, heartbeat_seconds=0.5, lease_seconds=5)
    assert s.redis_url
    async with serve(create_app(s, redis_url=s.redis_url)) as live, user_client(live, s, "pat") as pat, run_worker(s):
        for i in range(2):  # measured run times of this type, as the estimate uses
            await wait_for_status(pat, await submit(pat, f"warm up {i} [[slow:0.8]]"), {"completed"})
        ahead = [await submit(pat, f"ahead {i} [[slow:0.8]]") for i in range(3)]
        await wait_for_status(pat, ahead[0], {"processing"})
        mine = await submit(pat, "mine [[slow:0.8]]")

        async def over_sse() -> list[tuple[float, dict]]:
            seen: list[tuple[float, dict]] = []
            async with pat.stream("GET", f"/api/jobs/{mine}/events") as response:
                async for event in read_events(response):
                    assert (event.id is None) == (event.event == "position")  # Last-Event-ID stays on logged events
                    seen.append((time.time(), {"kind": event.event, **event.data}))
                    if event.event == "status" and event.data["status"] != "queued":
                        return seen
            return seen

        async def over_all_events() -> list[tuple[float, dict]]:  # GET /api/events: every job of the caller
            seen: list[tuple[float, dict]] = []
            async with pat.stream("GET", "/api/events") as response:
                async for event in read_events(response):
                    data = event.data["job"] if event.event == "snapshot" else event.data
                    if data["job_id"] != mine:
                        continue
                    if event.event == "position":
                        assert event.id is None  # no id: the cursor does not move
                    seen.append((time.time(), {"kind": event.event, **event.data}))
                    if event.event == "status" and event.data["status"] != "queued":
                        return seen
            return seen

        async def over_ws() -> list[tuple[float, dict]]:
            seen: list[tuple[float, dict]] = []
            url = live.url.replace("http://", "ws://") + "/api/ws"
            headers = {"Authorization": pat.headers["authorization"]}
            async with websockets.connect(url, additional_headers=headers) as ws:
                await ws.send(json.dumps({"type": "subscribe", "job_id": mine}))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if "kind" not in msg:
                        continue
                    seen.append((time.time(), msg))
                    if msg["kind"] == "status" and msg["status"] != "queued":
                        return seen

        sse_seen, all_seen, ws_seen = await asyncio.wait_for(
            asyncio.gather(over_sse(), over_all_events(), over_ws()), 60
        )
        await wait_for_status(pat, mine, {"completed"})
    started = store_row(s, mine)["started_at"]
    for seen in (sse_seen, all_seen, ws_seen):
        pushed = [(at, m) for at, m in seen if m["kind"] == "position"]
        places = [m["queue"]["position"] for _, m in pushed]
        assert len(places) >= 2 and places[-1] == 0, places  # it moved, and reached the head of the queue
        assert places == sorted(places, reverse=True), places  # never an increase
        assert all("seq" not in m for _, m in pushed)  # ephemeral: no resume point
        assert seen[-1][1]["kind"] == "status" and seen[-1][1]["status"] == "processing"
        at, first = pushed[0]
        estimated, actual = first["queue"]["estimated_wait"], started - at
        print(f"pushed: places {places}, first wait {estimated:.2f} s, actual {actual:.2f} s")
        assert estimated / 3 - 0.3 <= actual <= estimated * 3 + 0.5


async def test_migration_6_counts_the_jobs_already_there(tmp_path: Path) -> None:
    """A store made before the counts existed starts with them right: seeded from its rows by the migration."""
    import sqlite3

    from service.store.migrations import MIGRATIONS, statements
    from service.store.queries import JobQueries

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for number, sql in enumerate(MIGRATIONS[:5], start=1):
            for statement in statements(sql):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={number}")
        for i, (user, status) in enumerate([("a", "queued"), ("a", "processing"), ("a", "completed"), ("b", "queued")]):
            db.execute(
                "INSERT INTO jobs (id, user_id, type, status, input, created_at, updated_at, ready_at) "
                "VALUES (?, ?, 'noop', ?, '{}', ?, ?, ?)",
                (f"j{i}", user, status, 1000.0 + i, 1000.0 + i, 1000.0 + i),
            )
    store = SQLiteJobStore(path)
    await store.open()
    try:
        queries = JobQueries(store)
        assert [await queries.count_active(u) for u in ("a", "b", "c")] == [2, 1, 0]
        async with store.db.execute("SELECT queued FROM queue_size") as cur:
            assert (await cur.fetchone())[0] == 2
    finally:
        await store.close()
