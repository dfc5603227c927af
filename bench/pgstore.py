"""PostgreSQL store: aijobs with DATABASE_URL on PostgreSQL beside the SQLite store, and beside two queues that live
in PostgreSQL (Procrastinate and PgQueuer) on the same server, in the same run.

- POST /api/jobs req/s at concurrency 50: one aijobs web process per store, same uvicorn settings, alternating.
- enqueue jobs/s: the seeding of the drain rounds, timed: one job per call, 50 calls in flight from one process
  (aijobs: JobService.submit, what POST /api/jobs runs: the store row, the `queued` event, the enqueue;
  Procrastinate: `defer_async`; PgQueuer: `enqueue` of one job), each on a pool of 10 connections.
- drain: 10,000 no-op jobs, one worker process, max_jobs=50, as the drain figure (every aijobs job `completed` in the
  store with its 3 events checked); Procrastinate at its best concurrency and PgQueuer at its best batch size of
  those tried in the same run; and aijobs on PostgreSQL with two worker processes on one queue.
- writes: store writes per streamed chat job (3 s of streaming; --smoke 1 s) on both stores, and the WAL bytes per
  job on PostgreSQL (bench/store_writes.py: only the worker's writes; WAL counted for the bench's database alone
  when pg_walinspect can be used, else server-wide).
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.config import Settings

from .alternate import CONCURRENCY, alternate
from .drain import BurstResult, burst
from .harness import Bench, Stat
from .loadgen import request_bytes
from .report import Row, cpu_note

FIGURE = "PostgreSQL store"
SQLITE = "aijobs, SQLite store"
SEED_CONCURRENCY = 50
# Procrastinate fetches one job per round trip and slows as its backlog grows (here ~60 jobs/s on 1,000 queued, ~25 on
# 10,000): it drains this many, so a round takes a minute, not many. A smaller backlog only flatters it.
PROCRASTINATE_JOBS = 2_000
# Before checkpoints (a store write per event), measured by bench/store_writes.py: README, Architecture.
BEFORE = {"writes": 51, "wal_kib": 44.8}


def _scan(
    bench: Bench, system: str, candidates: tuple[int, ...], n: int, **kwargs: Any
) -> tuple[int, dict[int, float]]:
    """A baseline at its best: each setting on a smaller batch, keep the fastest (as the drain figure does SAQ)."""
    if len(candidates) == 1:
        return candidates[0], {}
    rates: dict[int, float] = {}
    for c in candidates:
        args = {"batch": c, "max_jobs": 50} if system == "pgqueuer" else {"max_jobs": c}
        rates[c] = burst(bench, system, "noop", n, **args, **kwargs).rate  # type: ignore[arg-type]
    bench.log(f"{system} scan: " + ", ".join(f"{c}: {r:,.0f}/s" for c, r in rates.items()))
    return max(rates, key=lambda c: rates[c]), rates


def post(bench: Bench, pg_url: str) -> list[Row]:
    """POST /api/jobs on a web process per store, alternating rounds."""
    from .users import make_token

    token = asyncio.run(make_token(database_url=pg_url))
    server = bench.serve("aijobs web (PostgreSQL)", "bench.aijobs_app:app", env=bench.env(DATABASE_URL=pg_url))
    body = b'{"type":"noop","input":{}}'
    pg_auth = {"Authorization": f"Bearer {token}"}
    sides = {
        "PostgreSQL": (server, request_bytes("POST", "/api/jobs", body=body, headers=pg_auth)),
        SQLITE: (bench.servers.aijobs, request_bytes("POST", "/api/jobs", body=body, headers=bench.auth)),
    }
    s = alternate(bench, "POST on each store", sides)
    server.proc.stop()
    ours, base = s["PostgreSQL"], s[SQLITE]
    return [
        Row(
            FIGURE,
            f"POST /api/jobs req/s (c={CONCURRENCY})",
            Stat.of(ours.rates),
            {SQLITE: Stat.of(base.rates)},
            True,
            "",
            cpu_note({name: side.cpu for name, side in s.items()}),
        ),
        Row(FIGURE, "POST /api/jobs p99 ms", Stat.of(ours.p99), {SQLITE: Stat.of(base.p99)}, False),
    ]


def drains(bench: Bench, pg_url: str) -> list[Row]:
    sizes = bench.sizes
    n, max_jobs = sizes.drain_jobs, sizes.drain_max_jobs
    scan_n = max(200, n // 10)
    pq_n = min(n, PROCRASTINATE_JOBS)
    pq_c, pq_scan = _scan(bench, "procrastinate", sizes.procrastinate_concurrency, max(200, pq_n // 4))
    pg_b, pg_scan = _scan(bench, "pgqueuer", sizes.pgqueuer_batch, scan_n)
    runs = {
        "pg": lambda: burst(
            bench, "aijobs", "noop", n, max_jobs, database_url=pg_url, seed_concurrency=SEED_CONCURRENCY
        ),
        "sqlite": lambda: burst(bench, "aijobs", "noop", n, max_jobs, seed_concurrency=SEED_CONCURRENCY),
        "procrastinate": lambda: burst(bench, "procrastinate", "noop", pq_n, pq_c, seed_concurrency=SEED_CONCURRENCY),
        "pgqueuer": lambda: burst(
            bench, "pgqueuer", "noop", n, max_jobs, batch=pg_b, seed_concurrency=SEED_CONCURRENCY
        ),
        "pg2": lambda: burst(
            bench, "aijobs", "noop", n, max_jobs, database_url=pg_url, workers=2, seed_concurrency=SEED_CONCURRENCY
        ),
    }
    results: dict[str, list[BurstResult]] = {k: [] for k in runs}
    systems = list(runs)
    for r in range(sizes.heavy_rounds):
        order = systems[r % len(systems) :] + systems[: r % len(systems)]
        for system in order:
            result = runs[system]()
            results[system].append(result)
            bench.log(
                f"PostgreSQL drain round {r + 1} {system}: {result.rate:,.0f} jobs/s ({result.seconds:.2f} s); "
                f"seeded at {result.enqueue_rate:,.0f}/s; worker CPU {result.cpu_per_job_us[0]:.0f} µs/job"
            )

    def rate(k: str) -> Stat:
        return Stat.of([x.rate for x in results[k]])

    def enq(k: str) -> Stat:
        return Stat.of([x.enqueue_rate for x in results[k]])

    def cpu(k: str) -> str:
        return f"{Stat.of([x.cpu_per_job_us[0] for x in results[k]]).median:.0f} µs"

    procrastinate = f"Procrastinate (concurrency={pq_c}{f', {pq_n:,} jobs' if pq_n < n else ''})"
    pgqueuer = f"PgQueuer (batch_size={pg_b})"
    scans = "".join(
        f"; {name} scan (jobs/s): {scan}" for name, scan in (("Procrastinate", pq_scan), ("PgQueuer", pg_scan)) if scan
    )
    note = (
        f"worker CPU/job: PostgreSQL {cpu('pg')}, SQLite {cpu('sqlite')}, Procrastinate {cpu('procrastinate')}, "
        f"PgQueuer {cpu('pgqueuer')}, PostgreSQL × 2 workers {cpu('pg2')} (both){scans}"
    )
    return [
        Row(
            FIGURE,
            f"enqueue jobs/s (one per call, {SEED_CONCURRENCY} in flight)",
            enq("pg"),
            {
                SQLITE: enq("sqlite"),
                "Procrastinate defer_async": enq("procrastinate"),
                "PgQueuer enqueue": enq("pgqueuer"),
            },
            True,
        ),
        Row(
            FIGURE,
            f"drain {n:,} no-op jobs/s, 1 worker",
            rate("pg"),
            {SQLITE: rate("sqlite"), procrastinate: rate("procrastinate"), pgqueuer: rate("pgqueuer")},
            True,
            "≥ 0.8 of SQLite, > Procrastinate",
            note,
        ),
        Row(
            FIGURE,
            f"drain {n:,} no-op jobs/s, 2 worker processes",
            rate("pg2"),
            {"PostgreSQL store, 1 worker": rate("pg")},
            True,
        ),
    ]


def writes(bench: Bench, pg_url: str) -> list[Row]:
    """Store writes per streamed chat job on both stores, WAL bytes per job on PostgreSQL (one round: counts)."""
    from service.store import migrate

    from .store_writes import run as run_writes

    n, seconds = bench.sizes.writes_jobs, bench.sizes.writes_seconds
    body = {"type": "chat", "input": {"messages": [{"role": "user", "content": f"A story [[slow:{seconds}]]"}]}}
    out: dict[str, tuple[float, float | None]] = {}
    for name, url in (("SQLite", f"sqlite:///{bench.tmp / 'writes.db'}"), ("PostgreSQL", pg_url)):
        settings = Settings(
            redis_url=bench.redis_url, database_url=url, data_dir=bench.tmp, queue_name=bench.fresh_queue("writes"),
            log_level="WARNING", log_json=False, coalesce=False,  # identical jobs: count each one's own writes
        )  # fmt: skip
        asyncio.run(migrate(settings))
        counts, wal = asyncio.run(run_writes(settings, "chat", n, body))
        out[name] = (sum(counts.values()) / n, None if wal is None else wal / n / 1024)
        bench.log(f"writes {name}: {out[name][0]:.1f} per chat job {dict(counts)}, WAL {out[name][1]} KiB/job")
    bench.flush()
    return [
        Row(
            FIGURE,
            f"store writes per chat job ({seconds} s streamed), PostgreSQL",
            Stat.of([out["PostgreSQL"][0]]),
            {"SQLite store": Stat.of([out["SQLite"][0]])},
            False,
            f"before checkpoints: {BEFORE['writes']}",
        ),
        Row(
            FIGURE,
            f"WAL KiB per chat job ({seconds} s streamed)",
            Stat.of([out["PostgreSQL"][1] or 0.0]),
            {},
            False,
            f"before checkpoints: {BEFORE['wal_kib']}",
        ),
    ]


def run(bench: Bench) -> list[Row]:
    pg = bench.pg
    url = pg.urls["aijobs"]
    return post(bench, url) + drains(bench, url) + writes(bench, url)
