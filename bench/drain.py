"""Drain: N no-op jobs end to end with one worker process: aijobs (queued → completed in the store, every
event written) vs bare arq with the same max_jobs, vs SAQ at its best concurrency. Jobs/s.

Every run seeds its queue first (not timed), then starts a burst worker that exits once the queue is empty.
The worker itself notes the first job start and the last job end, so every queue is timed the same way.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from service.config import Settings

from .harness import Bench, Stat
from .report import Row

SEED_BATCH = 200
ARQ_POLL = 0.01  # arq's default 0.5 s poll would starve a burst worker between reads; give it its best chance


@dataclass
class BurstResult:
    jobs: int
    seconds: float
    worker_cpu: float = 0.0  # seconds of CPU the worker process used while jobs ran
    redis_cpu: float = 0.0  # seconds of CPU redis-server used over the same run

    @property
    def cpu_per_job_us(self) -> tuple[float, float]:
        return self.worker_cpu / self.jobs * 1e6, self.redis_cpu / self.jobs * 1e6

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


def aijobs_settings(bench: Bench, queue: str, max_jobs: int) -> Settings:
    return Settings(
        redis_url=bench.redis_url,
        database_url=f"sqlite:///{bench.db_path}",
        data_dir=bench.tmp,
        queue_name=queue,
        worker_concurrency=max_jobs,
        log_level="WARNING",
    )


async def seed_aijobs(bench: Bench, queue: str, job_type: str, n: int) -> list[str]:
    """Submit through JobService, as POST /api/jobs does (store row, queued event, enqueue)."""
    from arq.connections import RedisSettings, create_pool

    from service.events import EventLog
    from service.jobs import JobService
    from service.queue import JobQueue, json_deserializer, json_serializer
    from service.store import open_store

    from .tasks import bench_registry

    settings = aijobs_settings(bench, queue, 50)
    redis = await create_pool(
        RedisSettings.from_dsn(bench.redis_url), job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    store = open_store(settings)
    await store.open()
    try:
        jobs = JobService(
            store=store,
            queue=JobQueue(redis, queue_name=queue),
            events=EventLog(redis),
            registry=bench_registry(),
            max_attempts=1,
        )
        ids: list[str] = []
        body = {"type": job_type, "input": {}}
        for start in range(0, n, SEED_BATCH):
            batch = await asyncio.gather(*(jobs.submit("bench", body) for _ in range(min(SEED_BATCH, n - start))))
            ids += [job.id for job in batch]
        return ids
    finally:
        await store.close()
        await redis.aclose()


async def seed_arq(bench: Bench, queue: str, function: str, n: int) -> None:
    from arq.connections import RedisSettings, create_pool

    redis = await create_pool(RedisSettings.from_dsn(bench.redis_url))
    try:
        for start in range(0, n, SEED_BATCH):
            await asyncio.gather(
                *(redis.enqueue_job(function, _queue_name=queue) for _ in range(min(SEED_BATCH, n - start)))
            )
    finally:
        await redis.aclose()


async def seed_saq(bench: Bench, queue: str, function: str, n: int) -> None:
    from saq import Queue

    q = Queue.from_url(bench.redis_url, name=queue)
    await q.connect()
    try:
        for start in range(0, n, SEED_BATCH):
            await asyncio.gather(*(q.enqueue(function, timeout=120) for _ in range(min(SEED_BATCH, n - start))))
    finally:
        await q.disconnect()


def check_aijobs(bench: Bench, ids: list[str]) -> None:
    """Every job completed in the store, and its three events (queued, processing, completed) in its Stream."""
    db = sqlite3.connect(bench.db_path)
    try:
        done = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            row = db.execute(f"SELECT COUNT(*) FROM jobs WHERE status = 'completed' AND id IN ({marks})", chunk)
            done += row.fetchone()[0]
    finally:
        db.close()
    if done != len(ids):
        raise RuntimeError(f"aijobs drain: only {done} of {len(ids)} jobs completed in the store")
    pipe = bench.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.xlen(f"aijobs:events:{job_id}")
    short = sum(1 for length in pipe.execute() if length < 3)
    if short:
        raise RuntimeError(f"aijobs drain: {short} jobs are missing events in their Stream")


def burst(
    bench: Bench, system: str, function: str, n: int, max_jobs: int, *, sim_delay: float = 1.0, profile: Any = None
) -> BurstResult:
    """Seed a fresh queue with n jobs, run one burst worker over it, and time it from inside the worker."""
    queue = bench.fresh_queue(system)
    seeding = time.monotonic()
    ids: list[str] = []
    if system == "aijobs":
        ids = asyncio.run(seed_aijobs(bench, queue, function, n))
        poll = Settings().poll_delay
    elif system == "arq":
        asyncio.run(seed_arq(bench, queue, function, n))
        poll = ARQ_POLL
    else:
        asyncio.run(seed_saq(bench, queue, function, n))
        poll = 0.0
    bench.log(f"seeded {n:,} {system} jobs in {time.monotonic() - seeding:.1f} s")
    redis_cpu = _redis_cpu(bench)
    proc = bench.worker(system, queue, burst=True, max_jobs=max_jobs, poll=poll, sim_delay=sim_delay, profile=profile)
    report = proc.finish(timeout=600)
    redis_cpu = _redis_cpu(bench) - redis_cpu
    if report.get("ended", 0) < n or report.get("first") is None:
        raise RuntimeError(f"{system} burst worker ended {report.get('ended')} of {n} jobs")
    if ids:
        check_aijobs(bench, ids)
    bench.flush()
    return BurstResult(jobs=n, seconds=report["last"] - report["first"], worker_cpu=report["cpu"], redis_cpu=redis_cpu)


def _redis_cpu(bench: Bench) -> float:
    info = bench.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def best_saq_concurrency(bench: Bench, function: str, n: int, **kwargs: Any) -> tuple[int, dict[int, float]]:
    """SAQ at its best: try each concurrency on a smaller batch, keep the fastest."""
    candidates = bench.sizes.saq_concurrency
    if len(candidates) == 1:
        return candidates[0], {}
    rates = {c: burst(bench, "saq", function, n, c, **kwargs).rate for c in candidates}
    bench.log("SAQ concurrency scan: " + ", ".join(f"{c}: {r:,.0f}/s" for c, r in rates.items()))
    return max(rates, key=lambda c: rates[c]), rates


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    n, max_jobs = sizes.drain_jobs, sizes.drain_max_jobs
    saq_c, scan = best_saq_concurrency(bench, "noop", max(200, n // 10))
    names = {"aijobs": "aijobs", "arq": f"bare arq (max_jobs={max_jobs})", "saq": f"SAQ (concurrency={saq_c})"}
    rates: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    systems = list(names)
    for r in range(sizes.heavy_rounds):
        order = systems[r % 3 :] + systems[: r % 3]
        for system in order:
            result = burst(bench, system, "noop", n, saq_c if system == "saq" else max_jobs)
            rates[system].append(result.rate)
            cpu[system].append(result.cpu_per_job_us)
            worker_us, redis_us = result.cpu_per_job_us
            bench.log(
                f"drain round {r + 1} {system}: {result.rate:,.0f} jobs/s ({result.seconds:.2f} s); "
                f"CPU per job: worker {worker_us:.0f} µs, redis {redis_us:.0f} µs"
            )
    per_job = "; ".join(
        f"{k} CPU/job: worker {Stat.of([c[0] for c in v]).median:.0f} µs, "
        f"redis {Stat.of([c[1] for c in v]).median:.0f} µs"
        for k, v in cpu.items()
    )
    note = per_job + (f"; SAQ concurrency scan (jobs/s): {scan}" if scan else "")
    return [
        Row(
            "drain",
            f"{n:,} no-op jobs/s, 1 worker",
            Stat.of(rates["aijobs"]),
            {names["arq"]: Stat.of(rates["arq"]), names["saq"]: Stat.of(rates["saq"])},
            True,
            "≥ 0.7 of arq, > SAQ",
            note,
        )
    ]
