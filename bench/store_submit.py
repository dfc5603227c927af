"""The submit path's store write with many users at once: `create_ranked(max_active=…)` on SQLite and PostgreSQL.

Run: `python -m bench.store_submit [POSTGRES_URL]` (default: this machine's 127.0.0.1:5432/test; a fresh schema
is made and dropped). 50 users submit at once, each one job after another; then one user alone with 50 submits in
flight, which that user's cap row serializes; then 50 users again over a standing queue of 5000 jobs (a submit's
cost must not grow with the queue).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from service.config import Settings
from service.models import Job
from service.store import open_store

USERS = 50
PER_USER = 20  # = MAX_ACTIVE_JOBS's default: every submit is accepted, and checked against the cap


async def _rate(database_url: str, users: int, per_user: int, pool: int = 10, standing: int = 0) -> float:
    store = open_store(Settings(database_url=database_url, database_pool_size=pool))
    await store.open()
    cap = per_user * (USERS if users == 1 else 1)
    await store.db.execute("DELETE FROM jobs")  # each round starts from an empty queue, or `standing` jobs (not timed)
    for _ in range(0, standing, 250):
        await asyncio.gather(
            *(store.create(Job(id=uuid.uuid4().hex, user_id=f"q{i}", type="summary", input={})) for i in range(250))
        )
    try:

        async def user(name: str) -> None:
            for _ in range(per_user):
                job = Job(id=uuid.uuid4().hex, user_id=name, type="summary", input={"text": "x" * 200})
                assert await store.create_ranked(job, max_active=cap) is not None

        t = time.perf_counter()
        if users == 1:  # one user, 50 submits in flight at once
            await asyncio.gather(*(user("solo") for _ in range(USERS)))
            n = USERS * per_user
        else:
            await asyncio.gather(*(user(f"user{i}") for i in range(users)))
            n = users * per_user
        return n / (time.perf_counter() - t)
    finally:
        await store.close()


async def main(pg_url: str) -> None:
    import psycopg

    from tests.postgres import with_params

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = with_params(pg_url, options=f"-c search_path={schema}")
    try:
        from service.store import migrate

        await migrate(Settings(database_url=url))
        with tempfile.TemporaryDirectory() as tmp:
            sqlite_url = f"sqlite:///{Path(tmp) / 'jobs.db'}"
            print(f"submits/s ({PER_USER} each; best of 3)   50 users   1 user, 50 in flight   50 users, 5000 queued")
            for name, db in (("SQLite", sqlite_url), ("PostgreSQL", url)):
                many = max([await _rate(db, USERS, PER_USER) for _ in range(3)])
                one = max([await _rate(db, 1, PER_USER) for _ in range(3)])
                deep = max([await _rate(db, USERS, PER_USER, standing=5000) for _ in range(3)])
                print(f"{name:12s}                      {many:8.0f}   {one:10.0f}          {deep:10.0f}")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"))
