"""A partial partition must not hang a worker (issue 16, point 10).

A worker process's path to Redis is blackholed (tests/blackhole.py: packets held, no reset) while its running jobs
are mid-way; its path to the store stays up. Its jobs finish and are recorded in the store during the cut (Redis
calls on a job's path are bounded by REDIS_SOCKET_TIMEOUT, and events are skipped while Redis is silent), and once
the path heals the worker re-announces them, so each job's stream ends with its one terminal event.

Then the other half: a worker's path to PostgreSQL blackholed, its Redis path up. Its leases lapse, another worker
takes its jobs over, and its late writes are refused once the path heals: one terminal state and event per job."""

from __future__ import annotations

import signal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis

from service.config import Settings
from service.embedded import EmbeddedRedis
from service.events import EventLog

from .blackhole import blackhole
from .conftest import assert_ended_once, fast_settings, make_user, submit_all, until
from .postgres import EmbeddedPostgres, migrate
from .procs import pid_of, spawn, store_row, web_process, workers

JOBS = 8
PG_JOBS = 4


async def test_a_worker_cut_off_from_redis_finishes_its_running_jobs(settings: Settings, tmp_path: Path) -> None:
    assert settings.redis_url
    target = urlsplit(settings.redis_url)
    token = await make_user(settings, "alice")
    async with blackhole(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        through = settings.redis_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
        env = {
            "REDIS_URL": through,  # the worker's Redis path goes through the proxy; the web process's does not
            "WORKER_CONCURRENCY": str(JOBS),
            "LEASE_SECONDS": "30",  # the store stays reachable: the worker keeps its leases through the cut
            "HEARTBEAT_SECONDS": "1",
            "REDIS_SOCKET_TIMEOUT": "2",
            "REDIS_CONNECT_TIMEOUT": "1",
        }
        with workers(settings, tmp_path) as started:
            worker = spawn(started, settings, tmp_path, **env)
            async with (
                web_process(settings, tmp_path / "web.log") as web,
                httpx.AsyncClient(base_url=web.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c,
            ):
                ids = await submit_all(
                    c,
                    [
                        {"type": "chat", "input": {"messages": [{"role": "user", "content": f"Job {i} [[slow:6]]"}]}}
                        for i in range(JOBS)
                    ],
                )

                async def all_running() -> bool:
                    assert worker.proc.poll() is None, worker.log()[-3000:]
                    return all(store_row(settings, j)["status"] == "processing" for j in ids)

                await until(all_running, timeout=30, what="every job running")
                proxy.cut()

                statuses: dict[str, str] = {}

                async def all_done() -> bool:  # read through the web process, whose Redis path is up
                    for job_id in ids:
                        r = await c.get(f"/api/jobs/{job_id}")
                        assert r.status_code == 200, r.text
                        statuses[job_id] = r.json()["status"]
                    return all(s in {"completed", "failed", "cancelled"} for s in statuses.values())

                try:
                    try:
                        await until(all_done, timeout=60, what="every job ending while Redis is cut off")
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}: {statuses}\n{worker.log()[-3000:]}") from None
                    assert not proxy.open.is_set()  # still cut: they ended during the partition
                finally:
                    proxy.heal()
                assert set(statuses.values()) == {"completed"}, statuses
                for job_id in ids:
                    row = store_row(settings, job_id)
                    assert row["attempts"] == 1, row  # the worker kept every job: no take-over, no retry
                assert "Redis timed out; best-effort calls are skipped" in worker.log()

                # Healed: the worker's probe gets an answer and it re-announces the jobs whose events it skipped.
                redis = Redis.from_url(settings.redis_url)
                try:
                    log = EventLog(redis)

                    async def ends_announced() -> bool:
                        for job_id in ids:
                            events = await log.read_after(job_id, 0)
                            terminal = [e for e in events if e.terminal]
                            assert len(terminal) <= 1, [(e.seq, e.kind) for e in events]
                            if not terminal:
                                return False
                            assert terminal[0].data["status"] == "completed", terminal[0]
                        return True

                    await until(ends_announced, timeout=30, what="every job's end announced after the heal")
                finally:
                    await redis.aclose()
                assert worker.proc.poll() is None, worker.log()[-3000:]
    assert "Traceback" not in worker.log(), worker.log()[-3000:]


async def test_a_worker_cut_off_from_postgres_loses_its_jobs_to_another(
    private_postgres: EmbeddedPostgres, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Worker A's path to PostgreSQL is blackholed mid-job (its Redis path stays up): its leases lapse, worker B's
    sweeper takes its jobs over and runs them to the end, once each; when A's path heals, the writes it held are
    refused (its lease token is spent), so no job gets a second terminal state or event."""
    await migrate(private_postgres.url)
    settings = fast_settings(redis_server, tmp_path, database_url=private_postgres.url)
    token = await make_user(settings, "alice")
    # A cut between a write batch's UPDATEs and its COMMIT leaves A's transaction open on the server, holding the jobs'
    # rows: DATABASE_STATEMENT_TIMEOUT (idle_in_transaction_session_timeout too) is what lets B write them. A's own
    # writes through the proxy get no answer at all (the test's proxy, unlike a real path, keeps TCP happy), so it is
    # A's bounded heartbeat that stops its runs once their leases are over.
    fast = {
        "LEASE_SECONDS": "8",
        "HEARTBEAT_SECONDS": "0.5",
        "SWEEP_SECONDS": "1",
        "WORKER_CONCURRENCY": str(PG_JOBS),
        "DATABASE_STATEMENT_TIMEOUT": "3",
    }
    async with blackhole("127.0.0.1", private_postgres.port) as proxy:
        through = private_postgres.url.replace(f":{private_postgres.port}/", f":{proxy.port}/")
        with workers(settings, tmp_path) as started:
            a = spawn(started, settings, tmp_path, DATABASE_URL=through, **fast)
            async with (
                web_process(settings, tmp_path / "web.log") as web,
                httpx.AsyncClient(base_url=web.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c,
            ):
                ids = await submit_all(
                    c, [{"type": "summary", "input": {"text": f"Job {i}. [[slow:4]]"}} for i in range(PG_JOBS)]
                )

                async def all_on_a() -> bool:
                    assert a.proc.poll() is None, a.log()[-3000:]
                    rows = [store_row(settings, j) for j in ids]
                    return all(r["status"] == "processing" and pid_of(r) == a.pid for r in rows)

                await until(all_on_a, timeout=30, what="every job running on worker A")
                proxy.cut()
                # runs A had started: a claim committed just before the cut may have its answer held by the cut
                started_on_a = a.log().count("job started")
                b = spawn(started, settings, tmp_path, **fast)  # direct: its path to PostgreSQL is up
                try:

                    async def all_done_on_b() -> bool:
                        assert b.proc.poll() is None, b.log()[-3000:]
                        assert a.proc.poll() is None, a.log()[-3000:]
                        rows = [store_row(settings, j) for j in ids]
                        return all(r["status"] == "completed" for r in rows)

                    try:
                        await until(all_done_on_b, timeout=90, what="worker B finishing A's jobs")
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}\nA:\n{a.log()[-2000:]}\nB:\n{b.log()[-2000:]}") from None
                    for job_id in ids:
                        row = store_row(settings, job_id)
                        assert pid_of(row) == b.pid and row["attempts"] == 2, row  # taken over: B's attempt 2
                    # A stopped every run it had itself once its lease was over, although its renewals got no answer
                    assert a.log().count("lease lost, run stopped") >= started_on_a, a.log()[-3000:]
                finally:
                    proxy.heal()

                # Healed: whatever A held reaches the store (and is refused: its lease tokens are spent). A stopped
                # (SIGTERM) has flushed or given up every write it held, so what the store has now is final.
                a.signal(signal.SIGTERM)
                await a.wait_exit(timeout=60)
                for job_id in ids:
                    done = (await c.get(f"/api/jobs/{job_id}")).json()
                    assert done["status"] == "completed" and done["attempt"] == 2, done
                    assert [h["error"] for h in done["attempts"]] == ["worker_lost", None], done["attempts"]
                assert "job completed" not in a.log()  # none of A's runs recorded an end
                assert a.log().count("lease lost") >= PG_JOBS, a.log()[-3000:]  # each stopped, abandoned or refused

    await assert_ended_once(redis_server.url, ids, "completed")
