"""Which PostgreSQL driver for the store: psycopg 3 (+ psycopg_pool) against asyncpg on the store's hot statements.

Run: `python -m bench.pg_driver [POSTGRES_URL]` (default: this machine's 127.0.0.1:5432, else an embedded server).
Both drivers run the same statements the same way the store does (the submit: one statement taking a slot in the
user's counter row and inserting; claim; progress), with server-side prepared statements off as PgBouncer's transaction
mode needs (psycopg prepare_threshold=None, asyncpg statement_cache_size=0), 50 concurrent tasks on a pool of 10.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

TABLE = """
CREATE TABLE IF NOT EXISTS bench_jobs (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL,
    percentage DOUBLE PRECISION NOT NULL DEFAULT 0, current_step TEXT, partial_output TEXT, lease_token TEXT,
    seq BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS bench_user_active (user_id TEXT PRIMARY KEY, n INTEGER NOT NULL);
TRUNCATE bench_jobs, bench_user_active;
"""
N = 4000
TASKS = 50
POOL = 10


def _ins(ph: list[str]) -> str:
    """The store's submit shape: take a slot in the user's counter row under the cap, insert only then."""
    return (
        f"WITH slot AS (INSERT INTO bench_user_active AS u (user_id, n) VALUES ({ph[0]}, 1) ON CONFLICT (user_id) "
        "DO UPDATE SET n = u.n + 1 WHERE u.n < 1000000 RETURNING 1) "
        f"INSERT INTO bench_jobs (id, user_id, status, input, seq, created_at, updated_at) "
        f"SELECT {ph[1]}, {ph[2]}, 'queued', {ph[3]}, 1, {ph[4]}, {ph[5]} "
        "WHERE EXISTS (SELECT 1 FROM slot) RETURNING seq"
    )


def _claim(ph: list[str]) -> str:
    return (
        f"UPDATE bench_jobs SET status = 'processing', lease_token = {ph[0]}, seq = seq + 1, updated_at = {ph[1]} "
        f"WHERE id = {ph[2]} AND status = 'queued' RETURNING *"
    )


def _progress(ph: list[str]) -> str:
    return (
        f"UPDATE bench_jobs SET percentage = {ph[0]}, partial_output = COALESCE(partial_output, '') || {ph[1]}, "
        f"seq = seq + 1, updated_at = {ph[2]} WHERE id = {ph[3]} AND lease_token = {ph[4]} "
        "AND status = 'processing' RETURNING *"
    )


async def _run(label: str, fn, ids: list[str]) -> float:  # type: ignore[no-untyped-def]
    it = iter(ids)

    async def task() -> None:
        for job_id in it:
            await fn(job_id)

    t = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    rate = len(ids) / (time.perf_counter() - t)
    print(f"  {label:10s} {rate:8.0f}/s")
    return rate


async def bench_psycopg(url: str) -> dict[str, float]:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    async def configure(conn: psycopg.AsyncConnection) -> None:
        conn.prepare_threshold = None

    pool = AsyncConnectionPool(url, min_size=POOL, max_size=POOL, open=False, configure=configure)
    await pool.open(wait=True)
    async with pool.connection() as c:
        await c.execute(TABLE)
    ids = [uuid.uuid4().hex for _ in range(N)]
    ph = ["%s"] * 6
    ins, claim, prog = _ins(ph), _claim(ph), _progress(ph)

    async def insert(job_id: str) -> None:
        async with pool.connection() as c:
            await (await c.execute(ins, (job_id[:2], job_id, job_id[:2], '{"x": 1}', t := time.time(), t))).fetchone()

    async def do_claim(job_id: str) -> None:
        async with pool.connection() as c:
            await (await c.execute(claim, ("tok", time.time(), job_id))).fetchone()

    async def do_progress(job_id: str) -> None:
        async with pool.connection() as c:
            await (await c.execute(prog, (0.5, "delta ", time.time(), job_id, "tok"))).fetchone()

    print("psycopg", psycopg.__version__)
    out = {
        "insert": await _run("insert", insert, ids),
        "claim": await _run("claim", do_claim, ids),
        "progress": await _run("progress", do_progress, ids),
    }
    await pool.close()
    return out


async def bench_asyncpg(url: str) -> dict[str, float]:
    import asyncpg

    pool = await asyncpg.create_pool(url, min_size=POOL, max_size=POOL, statement_cache_size=0)
    async with pool.acquire() as c:
        await c.execute(TABLE)
    ids = [uuid.uuid4().hex for _ in range(N)]
    ph = [f"${i}" for i in range(1, 7)]
    ins = _ins(ph)
    claim = _claim(ph)
    prog = _progress(ph)

    async def insert(job_id: str) -> None:
        async with pool.acquire() as c:
            await c.fetchrow(ins, job_id[:2], job_id, job_id[:2], '{"x": 1}', t := time.time(), t)

    async def do_claim(job_id: str) -> None:
        async with pool.acquire() as c:
            await c.fetchrow(claim, "tok", time.time(), job_id)

    async def do_progress(job_id: str) -> None:
        async with pool.acquire() as c:
            await c.fetchrow(prog, 0.5, "delta ", time.time(), job_id, "tok")

    print("asyncpg", asyncpg.__version__)
    out = {
        "insert": await _run("insert", insert, ids),
        "claim": await _run("claim", do_claim, ids),
        "progress": await _run("progress", do_progress, ids),
    }
    await pool.close()
    return out


async def main(url: str) -> None:
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    best: dict[str, dict[str, float]] = {"psycopg": {}, "asyncpg": {}}
    for _ in range(rounds):  # alternate, so neither driver always runs on a warmer server
        for name, fn in (("psycopg", bench_psycopg), ("asyncpg", bench_asyncpg)):
            for k, v in (await fn(url)).items():
                best[name][k] = max(best[name].get(k, 0.0), v)
    print(f"\nbest of {rounds}, {N} jobs, {TASKS} tasks, pool {POOL} (statements/s):")
    print(f"{'':10s} {'psycopg':>9s} {'asyncpg':>9s} {'ratio':>6s}")
    for k in ("insert", "claim", "progress"):
        p, a = best["psycopg"][k], best["asyncpg"][k]
        print(f"{k:10s} {p:9.0f} {a:9.0f} {a / p:6.2f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"))
