"""--profile DIR: the aijobs hot paths under pyinstrument, as text reports in DIR.

drain-worker.txt: one burst worker draining no-op jobs; io-worker.txt: the same for simulated 1 s AI calls;
enqueue-web.txt: the web process under POST /api/jobs load at concurrency 50; e2e-web.txt and e2e-worker.txt: the
web process and the worker through one round of the e2e figure (instant titles jobs); with the pgstore figure chosen,
drain-worker-postgres.txt: the drain worker on the PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from .drain import burst
from .e2e import one_round
from .harness import Bench
from .loadgen import request_bytes, run_load


def run(bench: Bench, out: Path, *, postgres: bool = False) -> dict[str, Any]:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = bench.sizes
    reports: dict[str, Any] = {}
    drain = burst(
        bench, "aijobs", "noop", min(sizes.drain_jobs, 3000), sizes.drain_max_jobs, profile=out / "drain-worker.txt"
    )
    reports["drain-worker.txt"] = round(drain.rate)
    bench.log(f"profiled drain: {drain.rate:,.0f} jobs/s under the profiler -> {out / 'drain-worker.txt'}")
    if postgres:
        path = out / "drain-worker-postgres.txt"
        pg = burst(
            bench, "aijobs", "noop", min(sizes.drain_jobs, 3000), sizes.drain_max_jobs, profile=path,
            database_url=bench.pg.urls["aijobs"],
        )  # fmt: skip
        reports[path.name] = round(pg.rate)
        bench.log(f"profiled PostgreSQL drain: {pg.rate:,.0f} jobs/s under the profiler -> {path}")
    io = burst(bench, "aijobs", "ai_call", sizes.io_jobs, sizes.io_max_jobs, profile=out / "io-worker.txt")
    reports["io-worker.txt"] = round(io.seconds, 2)
    bench.log(f"profiled io: {io.seconds:.2f} s under the profiler -> {out / 'io-worker.txt'}")
    server = bench.serve("aijobs web (profiled)", "bench.aijobs_app:app", profile=out / "enqueue-web.txt")
    req = request_bytes("POST", "/api/jobs", body=b'{"type":"noop","input":{}}', headers=bench.auth)
    result = asyncio.run(run_load(server.port, lambda: req, concurrency=50, seconds=sizes.load_seconds))
    server.proc.stop(timeout=30, sig=signal.SIGINT)  # uvicorn re-raises it: pyinstrument still writes
    reports["enqueue-web.txt"] = round(result.rate)
    bench.log(f"profiled enqueue: {result.rate:,.0f} req/s under the profiler -> {out / 'enqueue-web.txt'}")
    bench.flush()
    server = bench.serve("aijobs web (profiled)", "bench.aijobs_app:app", profile=out / "e2e-web.txt")
    e2e, _ = one_round(bench, "aijobs", sizes.e2e_jobs, 0, server=server, profile=out / "e2e-worker.txt")
    server.proc.stop(timeout=30, sig=signal.SIGINT)
    reports["e2e-web.txt"] = reports["e2e-worker.txt"] = round(sizes.e2e_jobs / e2e.seconds)
    bench.log(f"profiled e2e: {sizes.e2e_jobs / e2e.seconds:,.0f} jobs/s under the profiler -> {out}/e2e-*.txt")
    return reports
