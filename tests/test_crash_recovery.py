"""Real worker processes killed, frozen and stopped mid-job: every job still ends exactly as recorded."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from service.config import Settings
from service.events import EventLog
from service.queue import JobQueue

from .conftest import TEST_STORE, WAIT_SECONDS, wait_for_status
from .procs import pid_of, spawn, store_row, workers


async def submit(client: httpx.AsyncClient, text: str, **extra: object) -> str:
    r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": text}, **extra})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


async def wait_row(settings: Settings, job_id: str, pred, timeout: float = 20) -> dict:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = store_row(settings, job_id)
        if pred(row):
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached for {job_id}: {row}")
        await asyncio.sleep(0.05)


async def test_sigkill_mid_job_runs_again_elsewhere(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    with workers(settings, tmp_path) as started:
        a = spawn(started, settings, tmp_path)
        ids = [await submit(client, f"Job {i} about queues. [[slow:2]]") for i in range(4)]
        for job_id in ids:
            await wait_row(settings, job_id, lambda r: r["status"] == "processing")
        a.signal(signal.SIGKILL)
        await a.wait_exit()
        b = spawn(started, settings, tmp_path)
        for job_id in ids:
            done = await wait_for_status(client, job_id, {"completed", "failed", "cancelled"}, timeout=30)
            assert done["status"] == "completed", done
            assert done["attempt"] == 2
            assert [(h["provider"], h["model"], h["error"]) for h in done["attempts"]] == [
                ("simulated", "sim-1", "worker_lost"),  # what the killed attempt was on, not null
                ("simulated", "sim-1", None),
            ]
            row = store_row(settings, job_id)
            assert pid_of(row) == b.pid and row["lease_token"] is None  # finished by B, lease dropped
        assert "job completed" in b.log()


async def test_sigstop_past_lease_late_writes_refused(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    with workers(settings, tmp_path) as started:
        a = spawn(started, settings, tmp_path)
        job_id = await submit(client, "Frozen worker story. [[slow:3]]")
        row = await wait_row(settings, job_id, lambda r: r["status"] == "processing" and r["percentage"] > 0)
        assert pid_of(row) == a.pid
        first_token = row["lease_token"]
        a.signal(signal.SIGSTOP)
        b = spawn(started, settings, tmp_path)
        taken = await wait_row(
            settings, job_id, lambda r: r["status"] == "processing" and r["lease_token"] != first_token
        )
        assert pid_of(taken) == b.pid
        a.signal(signal.SIGCONT)  # wakes up believing it still owns the job
        done = await wait_for_status(client, job_id, {"completed", "failed"}, timeout=30)
        assert done["status"] == "completed" and done["attempt"] == 2
        deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
        while "lease lost" not in a.log():
            assert asyncio.get_running_loop().time() < deadline, a.log()[-3000:]
            await asyncio.sleep(0.1)
        final = store_row(settings, job_id)
        assert final["status"] == "completed" and final["seq"] == done["last_seq"]  # nothing written after
        log = await EventLog(client_redis := Redis.from_url(settings.redis_url or "")).read_after(job_id, 0)
        await client_redis.aclose()
        seqs = [e.seq for e in log]
        assert seqs == sorted(set(seqs)) and seqs[-1] == final["seq"]  # one ordered story, ending where the store does
        assert log[-1].terminal and log[-1].data["status"] == "completed"


async def test_poison_pill_ends_worker_lost(client: httpx.AsyncClient, settings: Settings, tmp_path: Path) -> None:
    """A job that takes its worker down on every attempt fails with worker_lost after max attempts."""
    with workers(settings, tmp_path) as started:
        job_id = await submit(client, "Poison. [[slow:30]]")
        for attempt in (1, 2, 3):
            w = spawn(started, settings, tmp_path)
            row = await wait_row(
                settings, job_id, lambda r, n=attempt: r["status"] == "processing" and r["attempts"] == n
            )
            assert pid_of(row) == w.pid
            w.signal(signal.SIGKILL)  # "the job crashed its worker"
            await w.wait_exit()
        spawn(started, settings, tmp_path)  # someone must sweep
        done = await wait_for_status(client, job_id, {"failed", "completed"})
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "worker_lost" and done["attempt"] == 3
        assert [(h["provider"], h["model"], h["error"]) for h in done["attempts"]] == [
            ("simulated", "sim-1", "worker_lost")
        ] * 3
        # Each lost attempt is timed from its own claim, not from the job's first: at least the lease (2 s), and no
        # longer than since the previous attempt was recorded lost (it was claimed after that). How much longer than
        # the lease depends on how soon the next worker started, which a loaded machine stretches.
        seconds = [h["seconds"] for h in done["attempts"]]
        ended = [datetime.fromisoformat(h["at"].replace("Z", "+00:00")).timestamp() for h in done["attempts"]]
        assert min(seconds) >= 1.9, seconds
        assert all(seconds[k] <= ended[k] - ended[k - 1] + 0.01 for k in (1, 2)), (seconds, ended)


async def test_lost_attempt_names_the_fallback_step_it_was_on(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    """A chain `sim-fail-400` on the simulated primary, then `backup:gpt-b` on an OpenAI-compatible server: the
    worker is SIGKILLed while the backup holds its request, and the sweeper's `worker_lost` entry names the backup
    and gpt-b (the step the attempt was on), not the primary, and not null."""
    from .fake_openai import serve_fake_openai

    async with serve_fake_openai() as backup:
        chain = {
            "AI_MODEL": "sim-fail-400",
            "AI_FALLBACK_MODELS": "backup:gpt-b",
            "AI_PROVIDERS": f"backup={backup.base_url.replace('http://', 'http://sk-backup@')}",
        }
        backup.hang()  # the first request to the backup gets no answer: the attempt is in flight there
        with workers(settings, tmp_path) as started:
            a = spawn(started, settings, tmp_path, **chain)
            job_id = await submit(client, "Which step was I on?")
            deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
            while not backup.requests:
                assert asyncio.get_running_loop().time() < deadline, a.log()[-3000:]
                await asyncio.sleep(0.05)
            row = store_row(settings, job_id)
            assert row["status"] == "processing" and row["model_index"] == 1 and pid_of(row) == a.pid, row
            a.signal(signal.SIGKILL)
            await a.wait_exit()
            spawn(started, settings, tmp_path, **chain)
            done = await wait_for_status(client, job_id, {"completed", "failed", "cancelled"}, timeout=30)
    assert done["status"] == "completed" and (done["provider"], done["model"]) == ("backup", "gpt-b"), done
    assert [(h["attempt"], h["provider"], h["model"], h["error"]) for h in done["attempts"]] == [
        (1, "simulated", "sim-fail-400", "provider_bad_request"),
        (1, "backup", "gpt-b", "worker_lost"),
        (2, "backup", "gpt-b", None),
    ]


async def test_sigterm_gives_running_job_back_without_spending_an_attempt(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    with workers(settings, tmp_path) as started:
        a = spawn(started, settings, tmp_path, SHUTDOWN_GRACE="1")
        long_id = await submit(client, "Long one. [[slow:6]]")
        short_id = await submit(client, "Short one. [[slow:0.5]]")
        await wait_row(settings, long_id, lambda r: r["status"] == "processing")
        await wait_row(settings, short_id, lambda r: r["status"] == "processing")
        a.signal(signal.SIGTERM)
        assert await a.wait_exit() == 0
        short = await wait_for_status(client, short_id, {"completed", "failed", "queued"})
        assert short["status"] == "completed"  # finished within the grace period
        back = store_row(settings, long_id)
        assert back["status"] == "queued" and back["attempts"] == 0, back
        spawn(started, settings, tmp_path)
        done = await wait_for_status(client, long_id, {"completed", "failed"}, timeout=30)
        assert done["status"] == "completed" and done["attempt"] == 1


@pytest.mark.skipif(
    TEST_STORE == "postgres", reason="holds SQLite's write lock; PostgreSQL outages are issue 16 point 11's test"
)
async def test_worker_that_cannot_write_the_store_runs_nothing_it_cannot_record(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    """The store refuses the worker's writes (another process holds SQLite's write lock): its run stops (the lease
    cannot be renewed), the next job is neither claimed nor dropped from the queue, and once the store answers
    again both jobs complete."""
    assert settings.redis_url
    with workers(settings, tmp_path) as started:
        # A short busy timeout: each refused write fails after 1 s instead of the default 10 s.
        a = spawn(started, settings, tmp_path, WORKER_CONCURRENCY="1", STORE_BUSY_TIMEOUT="1")
        first = await submit(client, "A long one. [[slow:3]]")
        await wait_row(settings, first, lambda r: r["status"] == "processing")
        second = await submit(client, "Waits its turn.")
        ticket = store_row(settings, second)["seq"]
        lock = sqlite3.connect(settings.sqlite_path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # every write of the worker now waits out its busy timeout, then fails
        redis = Redis.from_url(settings.redis_url)
        try:
            deadline = asyncio.get_running_loop().time() + 90
            while "store unreachable: job left on the queue" not in a.log():
                assert asyncio.get_running_loop().time() < deadline, a.log()[-3000:]
                assert a.proc.poll() is None, a.log()[-3000:]
                await asyncio.sleep(0.1)
            assert await JobQueue(redis, queue_name=settings.queue_name).holds(second, ticket)  # kept its place
            assert store_row(settings, second)["status"] == "queued"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
            await redis.aclose()
        for job_id in (first, second):
            done = await wait_for_status(client, job_id, {"completed", "failed", "cancelled"}, timeout=60)
            assert done["status"] == "completed", done
        # The first run was stopped, not left running unrecorded: its lease lapsed and the sweeper gave it back.
        first_done = (await client.get(f"/api/jobs/{first}")).json()
        assert [h["error"] for h in first_done["attempts"]] == ["worker_lost", None], first_done["attempts"]
        assert (await client.get(f"/api/jobs/{second}")).json()["attempt"] == 1
