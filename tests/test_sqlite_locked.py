"""SQLite's write lock held by another process for longer than the busy timeout: a store outage, as an unreachable
PostgreSQL is (tests/test_pg_outage.py). The web answers 503 store_unavailable to what needs to write and keeps
answering reads (WAL lets readers read); a real worker process holds its writes and goes on, and one stopped
meanwhile exits within its grace instead of waiting for the store."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.embedded import EmbeddedRedis

from .conftest import TEST_STORE, fast_settings, until, wait_for_status
from .procs import spawn, store_row, workers

pytestmark = pytest.mark.skipif(
    TEST_STORE == "postgres", reason="SQLite's own lock; PostgreSQL outages are tests/test_pg_outage.py"
)

BUSY = "0.3"  # STORE_BUSY_TIMEOUT: each write the lock keeps out fails after 0.3 s, not the default 10 s


@pytest.fixture
def settings(redis_server: EmbeddedRedis, tmp_path: Path) -> Settings:
    return fast_settings(redis_server, tmp_path, store_busy_timeout=float(BUSY))


@pytest.fixture
def write_lock(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A connection ready to take SQLite's write lock (`BEGIN IMMEDIATE`) and keep it, as a long write elsewhere."""
    lock = sqlite3.connect(settings.sqlite_path, isolation_level=None)
    try:
        yield lock
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()


async def submit(client: httpx.AsyncClient, text: str) -> httpx.Response:
    return await client.post("/api/jobs", json={"type": "summary", "input": {"text": text}})


async def test_a_worker_holds_its_writes_through_a_held_write_lock_and_the_web_answers_503(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path, write_lock: sqlite3.Connection
) -> None:
    # A lease longer than the lock is held: the worker keeps its job through it, as through a short PG restart.
    with workers(settings, tmp_path) as started:
        worker = spawn(started, settings, tmp_path, LEASE_SECONDS="30", STORE_BUSY_TIMEOUT=BUSY)
        r = await submit(client, "Held through the lock. [[slow:1]]")
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        async def running() -> bool:
            return store_row(settings, job_id)["status"] == "processing"

        await until(running, timeout=20, what="the job running")
        write_lock.execute("BEGIN IMMEDIATE")
        try:
            refused = await submit(client, "During the lock.")
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "store_unavailable", refused.text
            assert int(refused.headers["retry-after"]) >= 1
            read = await client.get(f"/api/jobs/{job_id}")  # a read needs no write lock
            assert read.status_code == 200 and read.json()["status"] == "processing", read.text

            async def held() -> bool:
                return "write held until it answers" in worker.log()

            # The provider call ends under the lock: the run's final writes wait for the store.
            await until(held, timeout=20, what="the worker holding a write")
            assert worker.proc.poll() is None, worker.log()[-3000:]
        finally:
            write_lock.execute("ROLLBACK")
        done = await wait_for_status(client, job_id, {"completed", "failed", "cancelled"}, timeout=20)
        assert done["status"] == "completed", done
        assert [h["error"] for h in done["attempts"]] == [None], done["attempts"]  # kept its job: no take-over
        assert (await submit(client, "After.")).status_code == 202
        log = worker.log()
        assert "store back: write done" in log, log[-3000:]
        assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


async def test_a_worker_stopped_while_the_store_is_locked_exits_and_its_job_is_handed_on(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path, write_lock: sqlite3.Connection
) -> None:
    """SIGTERM with the store unavailable: the hand-back cannot be written, and the worker does not wait for the
    store to let it: it exits after its grace. The job's lease lapses and another worker's sweeper hands it on."""
    with workers(settings, tmp_path) as started:
        # A lease longer than the shutdown: the run is stopped by the signal, not by its own lapsed lease.
        a = spawn(started, settings, tmp_path, LEASE_SECONDS="3", SHUTDOWN_GRACE="1", STORE_BUSY_TIMEOUT=BUSY)
        r = await submit(client, "Stopped under the lock. [[slow:3]]")
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        async def running() -> bool:
            return store_row(settings, job_id)["status"] == "processing"

        await until(running, timeout=20, what="the job running")
        write_lock.execute("BEGIN IMMEDIATE")
        try:
            a.signal(signal.SIGTERM)
            assert await a.wait_exit(timeout=30) == 0
        finally:
            write_lock.execute("ROLLBACK")
        assert "not given back" in a.log(), a.log()[-3000:]
        row = store_row(settings, job_id)
        assert row["status"] == "processing" and row["attempts"] == 1, row  # left to its lease, not lost
        spawn(started, settings, tmp_path)
        done = await wait_for_status(client, job_id, {"completed", "failed", "cancelled"}, timeout=40)
        assert done["status"] == "completed", done
        assert [h["error"] for h in done["attempts"]] == ["worker_lost", None], done["attempts"]
