"""A worker process whose Redis is unreachable for a while keeps running and takes jobs again once it is back.

Found by the multi-host test (tests/test_multihost.py): a worker host cut off across a minute boundary died, because
the cleanup cron's enqueue (or any new connection the poll loop needs) failed with a connection error that ended
arq's main loop, and with it the process and every job it was running."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from service.api.app import create_app
from service.config import Settings
from service.embedded import EmbeddedRedis, free_port

from .conftest import serve, until, user_client, wait_for_status
from .procs import spawn, workers


async def test_worker_rides_out_redis_down(settings: Settings, tmp_path: Path) -> None:
    """Redis killed under an idle worker process: it says so, keeps running, and runs a job once Redis is back."""
    port = free_port()
    redis = EmbeddedRedis(tmp_path / "redis", port=port, persist=False).start()
    s = replace(settings, redis_url=redis.url)
    try:
        with workers(s, tmp_path) as started:
            w = spawn(started, s, tmp_path)

            async def ready() -> bool:
                assert w.proc.poll() is None, w.log()[-3000:]
                return "Starting worker" in w.log()

            await until(ready, timeout=30, what="the worker started")
            redis.kill()  # every poll, heartbeat and new connection now fails: refused

            async def noticed() -> bool:
                assert w.proc.poll() is None, w.log()[-3000:]
                return "Redis unreachable" in w.log()

            await until(noticed, timeout=30, what="the worker noticing Redis gone")
            redis = EmbeddedRedis(tmp_path / "redis", port=port, persist=False).start()
            async with serve(create_app(s, redis_url=s.redis_url)) as live, user_client(live, s, "alice") as c:
                r = await c.post("/api/jobs", json={"type": "summary", "input": {"text": "After the outage."}})
                assert r.status_code == 202, r.text
                done = await wait_for_status(c, r.json()["job_id"], {"completed", "failed"}, timeout=30)
            assert done["status"] == "completed", done
            assert w.proc.poll() is None, w.log()[-3000:]  # the same process, not a restarted one
            assert "Redis back" in w.log()
    finally:
        redis.kill()
