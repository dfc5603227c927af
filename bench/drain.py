"""Drain: N no-op jobs end to end with one worker process: aijobs (queued → completed in the store, every
event written) vs bare arq with the same max_jobs, vs SAQ at its best concurrency. Jobs/s.

Every run seeds its queue first (not timed), then starts a burst worker that exits once the queue is empty.
The worker itself notes the first job start and the last job end, so every queue is timed the same way.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
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
    enqueue_rate: float = 0.0  # jobs/s of the (untimed by the worker) seeding

    @property
    def cpu_per_job_us(self) -> tuple[float, float]:
        return self.worker_cpu / self.jobs * 1e6, self.redis_cpu / self.jobs * 1e6

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


def aijobs_settings(bench: Bench, queue: str, max_jobs: int, database_url: str | None = None) -> Settings:
    return Settings(
        redis_url=bench.redis_url,
        database_url=database_url or f"sqlite:///{bench.db_path}",
        data_dir=bench.tmp,
        queue_name=queue,
        worker_concurrency=max_jobs,
        log_level="WARNING",
    )


async def pump(n: int, concurrency: int, call: Callable[[], Awaitable[Any]]) -> list[Any]:
    """`call()` n times, `concurrency` of them in flight at once (each caller starts the next as one ends)."""
    out: list[Any] = []
    left = iter(range(n))

    async def caller() -> None:
        for _ in left:
            out.append(await call())

    await asyncio.gather(*(caller() for _ in range(min(n, concurrency))))
    return out


async def seed_aijobs(
    bench: Bench, queue: str, job_type: str, n: int, database_url: str | None = None, concurrency: int = SEED_BATCH
) -> list[str]:
    """Submit through JobService, as POST /api/jobs does (store row, queued event, enqueue)."""
    from arq.connections import RedisSettings, create_pool

    from service.events import EventLog
    from service.jobs import JobService
    from service.queue import JobQueue, json_deserializer, json_serializer
    from service.store import open_store

    from .tasks import bench_registry

    settings = aijobs_settings(bench, queue, 50, database_url)
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
        body = {"type": job_type, "input": {}}
        return [job.id for job in await pump(n, concurrency, lambda: jobs.submit("bench", body))]
    finally:
        await store.close()
        await redis.aclose()


async def seed_arq(bench: Bench, queue: str, function: str, n: int) -> None:
    from arq.connections import RedisSettings, create_pool

    redis = await create_pool(RedisSettings.from_dsn(bench.redis_url))
    try:
        await pump(n, SEED_BATCH, lambda: redis.enqueue_job(function, _queue_name=queue))
    finally:
        await redis.aclose()


async def seed_saq(bench: Bench, queue: str, function: str, n: int) -> None:
    from saq import Queue

    q = Queue.from_url(bench.redis_url, name=queue)
    await q.connect()
    try:
        await pump(n, SEED_BATCH, lambda: q.enqueue(function, timeout=120))
    finally:
        await q.disconnect()


async def seed_procrastinate(url: str, queue: str, function: str, n: int, concurrency: int) -> None:
    """One `defer_async` per job, as an app defers a job per request, on a pool the size of aijobs' own."""
    from procrastinate import App, PsycopgConnector

    from .workers import POOL_SIZE

    app = App(connector=PsycopgConnector(conninfo=url, min_size=POOL_SIZE, max_size=POOL_SIZE))
    async with app.open_async():
        deferrer = app.configure_task(function, queue=queue)
        await pump(n, concurrency, deferrer.defer_async)


async def seed_pgqueuer(url: str, function: str, n: int, concurrency: int) -> None:
    """One `enqueue` per job (PgQueuer also takes lists: a batch insert, which a request's single job is not)."""
    import asyncpg
    from pgqueuer import AsyncpgPoolDriver, Queries

    from .workers import POOL_SIZE

    pool = await asyncpg.create_pool(url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        queries = Queries(AsyncpgPoolDriver(pool))
        await pump(n, concurrency, lambda: queries.enqueue(function, None))
    finally:
        await pool.close()


def check_aijobs(bench: Bench, ids: list[str], database_url: str | None = None) -> None:
    """Every job completed in the store, and its three events (queued, processing, completed) in its Stream."""
    done = 0
    if database_url:
        import psycopg

        with psycopg.connect(database_url) as conn:
            for start in range(0, len(ids), 5000):
                row = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'completed' AND id = ANY(%s)",
                    (ids[start : start + 5000],),
                ).fetchone()
                done += row[0] if row else 0
    else:
        db = sqlite3.connect(bench.db_path)
        try:
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


def check_pg_baseline(system: str, url: str, n: int) -> None:
    """Every job of a PostgreSQL baseline done in its own tables (Procrastinate keeps them `succeeded`; PgQueuer
    moves them from its queue to its log)."""
    import psycopg

    sql = {
        "procrastinate": "SELECT COUNT(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
        "pgqueuer": "SELECT COUNT(*) FROM pgqueuer_log WHERE status = 'successful'",
    }[system]
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    if not row or row[0] != n:
        raise RuntimeError(f"{system} drain: {row[0] if row else 0} of {n} jobs done in its tables")


def burst(
    bench: Bench,
    system: str,
    function: str,
    n: int,
    max_jobs: int,
    *,
    sim_delay: float = 1.0,
    profile: Any = None,
    database_url: str | None = None,
    workers: int = 1,
    seed_concurrency: int = SEED_BATCH,
    batch: int = 10,
) -> BurstResult:
    """Seed a fresh queue with n jobs, run burst workers over it, and time it from inside the workers.

    aijobs uses the bench's SQLite file unless `database_url` names a PostgreSQL; Procrastinate and PgQueuer their
    own databases on the bench's PostgreSQL. With several workers the time runs from the first start any of them
    saw to the last end. The seeding is timed too (the enqueue rate of `seed_concurrency` callers in one process).
    """
    queue = bench.fresh_queue(system)
    seeding = time.monotonic()
    ids: list[str] = []
    env = None
    if system == "aijobs":
        ids = asyncio.run(seed_aijobs(bench, queue, function, n, database_url, seed_concurrency))
        poll = Settings().poll_delay
        if database_url:
            env = bench.env(DATABASE_URL=database_url)
    elif system == "arq":
        asyncio.run(seed_arq(bench, queue, function, n))
        poll = ARQ_POLL
    elif system == "saq":
        asyncio.run(seed_saq(bench, queue, function, n))
        poll = 0.0
    elif system == "procrastinate":
        database_url = bench.pg.urls[system]
        asyncio.run(seed_procrastinate(database_url, queue, function, n, seed_concurrency))
        poll, env = 0.0, bench.env(BENCH_PG_URL=database_url)
    elif system == "pgqueuer":
        database_url = bench.pg.urls[system]
        asyncio.run(seed_pgqueuer(database_url, function, n, seed_concurrency))
        poll, env = 0.5, bench.env(BENCH_PG_URL=database_url)
    else:
        raise ValueError(system)
    seeded = time.monotonic() - seeding
    bench.log(f"seeded {n:,} {system} jobs in {seeded:.1f} s ({n / seeded:,.0f}/s)")
    if database_url:
        _analyze(database_url)
    redis_cpu = _redis_cpu(bench)
    procs = [
        bench.worker(
            system,
            queue,
            burst=True,
            max_jobs=max_jobs,
            poll=poll,
            sim_delay=sim_delay,
            profile=profile,
            env=env,
            batch=batch,
        )  # fmt: skip
        for _ in range(workers)
    ]
    reports = [proc.finish(timeout=600) for proc in procs]
    redis_cpu = _redis_cpu(bench) - redis_cpu
    ended = sum(r.get("ended", 0) for r in reports)
    starts = [r["first"] for r in reports if r.get("first") is not None]
    if ended < n or not starts:
        raise RuntimeError(f"{system} burst worker(s) ended {ended} of {n} jobs")
    if ids:
        check_aijobs(bench, ids, database_url)
    elif system in ("procrastinate", "pgqueuer"):
        assert database_url
        check_pg_baseline(system, database_url, n)
    bench.flush()
    last = max(r["last"] for r in reports if r.get("last") is not None)
    return BurstResult(
        jobs=n,
        seconds=last - min(starts),
        worker_cpu=sum(r["cpu"] for r in reports),
        redis_cpu=redis_cpu,
        enqueue_rate=n / seeded,
    )


def _analyze(url: str) -> None:
    """Fresh statistics after the seeding, as autovacuum would make within a minute: no PostgreSQL-based queue is
    drained on the planner's idea of the empty table it was just before (Procrastinate's fetch suffers most)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


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
