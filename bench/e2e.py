"""End to end: N instant jobs POSTed over HTTP at concurrency 50 until every one has completed, aijobs (its web
app, its worker, `titles` jobs on a 0 s simulated provider) against bare Starlette calling arq's `enqueue_job` and
a bare arq worker running the same work (the simulated call and the parse) with nothing around it.

Timed by the client from the first POST until every job is done: aijobs when the store says `completed` for all
of them, arq when its queue is empty (arq removes a job from it only once the function has returned). Each round
starts the system's worker, runs, stops it and empties Redis and the store; rounds alternate which system goes
first. Also counted: events per aijobs job (the stored seq, checked against the Streams of a sample).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from service.config import Settings

from .alternate import CONCURRENCY
from .drain import ARQ_POLL
from .harness import Bench, Server, Stat, process_cpu
from .loadgen import _read_response, request_bytes
from .report import Row

BARE = "bare Starlette + arq"
BARE_QUEUE = "bench:bare"  # the bare web app's queue (Servers.bare)
MAX_JOBS = 50
DONE_POLL = 0.002  # seconds between two looks at "all done?" once every POST is answered


@dataclass
class RoundResult:
    seconds: float
    worker_cpu_us: float  # worker CPU per job
    web_cpu_us: float  # web process CPU per job


async def post_all(port: int, requests: list[bytes], concurrency: int) -> int:
    """Send every request, `concurrency` at a time on keep-alive connections; the number answered 202."""
    left = iter(requests)
    accepted = 0

    async def connection() -> None:
        nonlocal accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for req in left:
                writer.write(req)
                if await _read_response(reader) == 202:
                    accepted += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return accepted


def _completed(db_path: str) -> int:
    with sqlite3.connect(db_path, timeout=30) as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'completed'").fetchone()[0])


async def timed_round(bench: Bench, system: str, server: Server, requests: list[bytes]) -> float:
    """Seconds from the first POST until all `requests` are done (see the module's docstring)."""
    n = len(requests)
    redis = Redis.from_url(bench.redis_url)
    try:
        started = time.monotonic()
        accepted = await post_all(server.port, requests, CONCURRENCY)
        if accepted != n:
            raise RuntimeError(f"e2e {system}: {accepted} of {n} POSTs accepted")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if system == "aijobs":
                done = await asyncio.to_thread(_completed, str(bench.db_path)) == n
            else:
                done = await redis.zcard(BARE_QUEUE) == 0
            if done:
                return time.monotonic() - started
            await asyncio.sleep(DONE_POLL)
        raise TimeoutError(f"e2e {system}: jobs still not done after 120 s")
    finally:
        await redis.aclose()


def events_per_job(bench: Bench) -> float:
    """The mean stored seq of the round's jobs (every event bumps it), checked against the Streams of a sample."""
    with sqlite3.connect(bench.db_path, timeout=30) as db:
        rows = db.execute("SELECT id, seq FROM jobs").fetchall()
    if not rows:
        return 0.0
    pipe = bench.redis.pipeline(transaction=False)
    sample = rows[:50]
    for job_id, _ in sample:
        pipe.xlen(f"aijobs:events:{job_id}")
    for (job_id, seq), length in zip(sample, pipe.execute(), strict=True):
        if length != seq:
            raise RuntimeError(f"e2e: job {job_id} has seq {seq} in the store but {length} events in its Stream")
    return sum(seq for _, seq in rows) / len(rows)


def one_round(
    bench: Bench, system: str, n: int, offset: int, *, server: Server | None = None, profile: Path | None = None
) -> tuple[RoundResult, float]:
    """Start the system's worker, time n jobs through it, stop it and empty everything; (result, events per job).
    `server` and `profile`: another web process, and a pyinstrument report of the worker (`--profile`)."""
    if system == "aijobs":
        server = server or bench.servers.aijobs
        path, queue, poll = "/api/jobs", bench.queue, Settings().poll_delay
    else:
        server = server or bench.servers.bare
        path, queue, poll = "/enqueue/titles", BARE_QUEUE, ARQ_POLL
    requests = []
    for i in range(n):  # each its own post: identical titles calls in flight would share one (coalescing)
        data = {"text": f"Post {offset + i}: what a queue in front of an AI provider is for.", "count": 5}
        body = json.dumps({"type": "titles", "input": data} if system == "aijobs" else {"input": data}).encode()
        requests.append(request_bytes("POST", path, body=body, headers=bench.auth))
    worker = bench.worker("aijobs" if system == "aijobs" else "arq", queue, burst=False, max_jobs=MAX_JOBS, poll=poll,
                          sim_delay=0.0, profile=profile)  # fmt: skip
    try:
        worker.wait_ready()
        web_cpu, worker_cpu = server.cpu(), process_cpu(worker.popen.pid)
        seconds = asyncio.run(timed_round(bench, system, server, requests))
        web_cpu, worker_cpu = server.cpu() - web_cpu, process_cpu(worker.popen.pid) - worker_cpu
        events = events_per_job(bench) if system == "aijobs" else 0.0
    finally:
        worker.stop(timeout=30)
    bench.flush()
    return RoundResult(seconds, worker_cpu / n * 1e6, web_cpu / n * 1e6), events


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    n = sizes.e2e_jobs
    systems = ["aijobs", BARE]
    rates: dict[str, list[float]] = {k: [] for k in systems}
    cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in systems}
    events: list[float] = []
    for r in range(sizes.rounds):
        for system in systems if r % 2 == 0 else list(reversed(systems)):
            result, per_job = one_round(bench, system, n, offset=(2 * r + systems.index(system)) * n)
            rates[system].append(n / result.seconds)
            cpu[system].append((result.web_cpu_us, result.worker_cpu_us))
            if system == "aijobs":
                events.append(per_job)
            bench.log(
                f"e2e round {r + 1} {system}: {n / result.seconds:,.0f} jobs/s ({result.seconds:.2f} s); CPU per job: "
                f"web {result.web_cpu_us:.0f} µs, worker {result.worker_cpu_us:.0f} µs"
                + (f"; {per_job:.2f} events per job" if system == "aijobs" else "")
            )
    note = "; ".join(
        f"{k} CPU/job: web {Stat.of([web for web, _ in v]).median:.0f} µs, "
        f"worker {Stat.of([worker for _, worker in v]).median:.0f} µs"
        for k, v in cpu.items()
    )
    return [
        Row(
            "e2e",
            f"{n:,} instant titles jobs/s, POST (c={CONCURRENCY}) until all completed",
            Stat.of(rates["aijobs"]),
            {BARE: Stat.of(rates[BARE])},
            True,
            "≥ 0.7",
            note,
        ),
        Row("e2e", "events per instant titles job", Stat.of(events), {}, False, "≤ 8"),
    ]
