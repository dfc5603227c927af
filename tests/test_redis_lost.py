"""Redis restarted empty, and Redis down while users submit: the store is the truth and nothing is lost."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.config import Settings
from service.embedded import EmbeddedRedis, free_port
from service.errors import StoreUnavailable
from service.events import EventLog
from service.jobs import JobService
from service.store.sqlite import SQLiteJobStore
from service.tasks import default_registry

from .conftest import serve, user_client, wait_for_status
from .procs import spawn, store_row, workers


@pytest.fixture
def own_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A Redis of this test's own on a fixed port, so it can be killed and started again empty."""
    port = free_port()
    servers = [EmbeddedRedis(tmp_path / "own-redis", port=port, persist=False).start()]

    def restart() -> EmbeddedRedis:
        servers[-1].kill()
        servers.append(EmbeddedRedis(tmp_path / "own-redis", port=port, persist=False).start())
        return servers[-1]

    yield servers[0], restart
    for s in servers:
        s.kill()


async def test_redis_restarted_empty_with_jobs_queued_and_running(
    settings: Settings, tmp_path: Path, own_redis
) -> None:  # type: ignore[no-untyped-def]
    redis, restart = own_redis
    s = replace(settings, redis_url=redis.url)
    async with serve(create_app(s, redis_url=redis.url)) as live, user_client(live, s, "alice") as client:
        with workers(s, tmp_path) as started:
            w = spawn(started, s, tmp_path, WORKER_CONCURRENCY="1")
            running = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "a [[slow:3]]"}})
            running_id = running.json()["job_id"]
            await wait_for_status(client, running_id, {"processing"})
            queued_ids = [
                (await client.post("/api/jobs", json={"type": "summary", "input": {"text": f"q{i}"}})).json()["job_id"]
                for i in range(3)
            ]
            restart()  # every queue entry, event stream and arq key is gone
            for job_id in [running_id, *queued_ids]:
                done = await wait_for_status(client, job_id, {"completed", "failed", "cancelled"}, timeout=40)
                assert done["status"] == "completed", done
            assert all(store_row(s, j)["status"] == "completed" for j in queued_ids)
            assert store_row(s, running_id)["attempts"] == 1  # the running job was not disturbed
            assert w.proc.poll() is None, w.log()[-2000:]  # and the worker rode out the outage


async def test_redis_down_while_submitting(settings: Settings, tmp_path: Path, own_redis) -> None:  # type: ignore[no-untyped-def]
    redis, restart = own_redis
    s = replace(settings, redis_url=redis.url)
    async with serve(create_app(s, redis_url=redis.url)) as live, user_client(live, s, "alice") as client:
        redis.kill()
        accepted = []
        for i in range(3):
            r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": f"while down {i}"}})
            assert r.status_code == 202, r.text  # the store holds it: a promise we can keep
            accepted.append(r.json()["job_id"])
            assert store_row(s, accepted[-1])["status"] == "queued"
        restart()
        with workers(s, tmp_path) as started:
            spawn(started, s, tmp_path)
            for job_id in accepted:
                done = await wait_for_status(client, job_id, {"completed", "failed"}, timeout=30)
                assert done["status"] == "completed"


async def test_store_that_cannot_take_the_job_is_refused(settings: Settings, tmp_path: Path) -> None:
    """No 2xx without a stored row: the service raises StoreUnavailable, which the API answers with 503."""
    store = SQLiteJobStore(tmp_path / "closed.db")
    await store.open()
    await store.close()
    from arq.connections import RedisSettings, create_pool

    assert settings.redis_url
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    try:
        from service.queue import JobQueue

        jobs = JobService(
            store=store,
            queue=JobQueue(redis, queue_name=settings.queue_name),
            events=EventLog(redis),
            registry=default_registry(),
            max_attempts=3,
        )
        with pytest.raises(StoreUnavailable):
            await jobs.submit("anonymous", {"type": "summary", "input": {"text": "x"}})
        assert await redis.zcard(settings.queue_name) == 0  # nothing was enqueued either
    finally:
        await redis.aclose()


async def test_api_answers_503_when_the_store_refuses(client: httpx.AsyncClient, settings: Settings) -> None:
    """A store that cannot write (here: a trigger aborting every insert, as a full disk would) gets no 2xx."""
    with sqlite3.connect(settings.sqlite_path) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "x"}})
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    assert int(r.headers["Retry-After"]) > 0
    assert settings.redis_url
    with sqlite3.connect(settings.sqlite_path) as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        db.execute("DROP TRIGGER refuse")
    ok = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "x"}})
    assert ok.status_code == 202
