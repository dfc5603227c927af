"""A partial partition must not hang a worker (issue 16, point 10).

A worker process's path to Redis is blackholed (tests/blackhole.py: packets held, no reset) while its running jobs
are mid-way; its path to the store stays up. Its jobs finish and are recorded in the store during the cut (Redis
calls on a job's path are bounded by REDIS_SOCKET_TIMEOUT, and events are skipped while Redis is silent), and once
the path heals the worker re-announces them, so each job's stream ends with its one terminal event."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis

from service.config import Settings
from service.events import EventLog

from .blackhole import blackhole
from .conftest import make_user, until
from .procs import spawn, store_row, web_process, workers

JOBS = 8


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
                ids = []
                for i in range(JOBS):
                    body = {"type": "chat", "input": {"messages": [{"role": "user", "content": f"Job {i} [[slow:6]]"}]}}
                    r = await c.post("/api/jobs", json=body)
                    assert r.status_code == 202, r.text
                    ids.append(r.json()["job_id"])

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
