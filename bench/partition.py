"""The issue's partial partition, measured as a user would meet it: 8 running six-second jobs on a worker whose path
to Redis is blackholed for 30 s (tests/blackhole.py; the store stays reachable), once with REDIS_SOCKET_TIMEOUT=0
(no bound: how Redis connections were before) and once with the default.

    python -m bench.partition [--cut 30] [--jobs 8] [--seconds 6]

Prints, per setting, when each job was recorded `completed` in the store, in seconds after the cut started, and how
many of them ended during the cut. Real processes: an embedded Redis, a SQLite store, a web process (Redis direct)
and a worker process (Redis through the proxy), as tests/test_partition.py runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from service.config import Settings
from service.embedded import EmbeddedRedis, free_port
from tests.blackhole import blackhole
from tests.conftest import make_user
from tests.procs import spawn, web_process, workers


async def one(socket_timeout: str, *, cut: float, jobs: int, seconds: float) -> list[float]:
    """Seconds after the cut at which each job was recorded completed (inf: not by the end)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        redis = EmbeddedRedis(base / "redis", port=free_port(), persist=False).start()
        try:
            settings = Settings(
                redis_url=redis.url,
                database_url=f"sqlite:///{base / 'jobs.db'}",
                data_dir=base,
                queue_name="aijobs:bench:partition",
                log_json=False,
                cookie_secure=False,
            )
            token = await make_user(settings, "bench")
            async with blackhole("127.0.0.1", redis.port) as proxy:
                env = {
                    "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
                    "WORKER_CONCURRENCY": str(jobs),
                    "LEASE_SECONDS": "60",
                    "HEARTBEAT_SECONDS": "2",
                    "REDIS_SOCKET_TIMEOUT": socket_timeout,
                }
                with workers(settings, base) as started:
                    spawn(started, settings, base, **env)
                    auth = {"Authorization": f"Bearer {token}"}
                    async with (
                        web_process(settings, base / "web.log") as web,
                        httpx.AsyncClient(base_url=web.url, timeout=30, headers=auth) as c,
                    ):
                        ids = []
                        for i in range(jobs):
                            text = f"Job {i} [[slow:{seconds}]]"
                            body = {"type": "chat", "input": {"messages": [{"role": "user", "content": text}]}}
                            ids.append((await c.post("/api/jobs", json=body)).json()["job_id"])
                        while True:
                            states = [(await c.get(f"/api/jobs/{j}")).json()["status"] for j in ids]
                            if all(s == "processing" for s in states):
                                break
                            await asyncio.sleep(0.05)
                        await asyncio.sleep(1.0)  # mid-job: each has streamed for a second
                        proxy.cut()
                        cut_at = time.monotonic()
                        ended: dict[str, float] = {}
                        while len(ended) < jobs and time.monotonic() - cut_at < cut + 60:
                            if time.monotonic() - cut_at >= cut and not proxy.open.is_set():
                                proxy.heal()
                            for j in ids:
                                if j not in ended and (await c.get(f"/api/jobs/{j}")).json()["status"] == "completed":
                                    ended[j] = time.monotonic() - cut_at
                            await asyncio.sleep(0.1)
                        proxy.heal()
                        return [ended.get(j, float("inf")) for j in ids]
        finally:
            redis.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cut", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    for label, timeout in (("REDIS_SOCKET_TIMEOUT=0 (before)", "0"), ("REDIS_SOCKET_TIMEOUT=5 (default)", "5")):
        ends = asyncio.run(one(timeout, cut=args.cut, jobs=args.jobs, seconds=args.seconds))
        during = sum(1 for e in ends if e < args.cut)
        print(
            f"{label}: completed after the cut started: min {min(ends):.1f} s, median {statistics.median(ends):.1f} s, "
            f"max {max(ends):.1f} s; {during}/{len(ends)} during the {args.cut:.0f} s cut"
        )


if __name__ == "__main__":
    main()
