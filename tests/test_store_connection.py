"""The store's connection layer: statements batched into one transaction keep their own results and errors,
and a process sharing the file with others never sees `database is locked` from a half-read statement."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest

from service.models import Job, JobStatus
from service.store.connection import Connection
from service.store.sqlite import SQLiteJobStore
from service.store.users import JobSecrets


async def test_a_batch_keeps_each_statements_result_and_error(tmp_path: Path) -> None:
    db = Connection(tmp_path / "c.db")
    await db.open()
    try:
        await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
        await db.execute("INSERT INTO t VALUES ('a', 1)")
        inserts = [db.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", i)) for i in range(50)]
        clash = db.execute("INSERT INTO t VALUES ('a', 2)")  # queued in the same batch as the others
        fenced = db.execute("UPDATE t SET v = 9 WHERE k = 'a' AND v = 5")
        taken = db.execute("UPDATE t SET v = 9 WHERE k = 'a' AND v = 1 RETURNING v")
        results = await asyncio.gather(*inserts, clash, fenced, taken, return_exceptions=True)
        assert all(r.rowcount == 1 for r in results[:50])  # type: ignore[union-attr]
        assert isinstance(results[50], sqlite3.IntegrityError)
        assert results[51].rowcount == 0  # type: ignore[union-attr]
        async with taken as cur:
            assert tuple(await cur.fetchone()) == (9,)
        async with db.execute("SELECT COUNT(*) FROM t") as cur:
            assert (await cur.fetchone())[0] == 51  # the clash undid nothing but itself
    finally:
        await db.close()
    with pytest.raises(sqlite3.ProgrammingError):
        await db.execute("SELECT 1")


async def test_reads_and_writes_interleaved_with_another_process_writing_are_never_locked(tmp_path: Path) -> None:
    """The drain bug: a read left open on the shared connection made the next write fail at once."""
    ours, theirs = SQLiteJobStore(tmp_path / "jobs.db"), SQLiteJobStore(tmp_path / "jobs.db")
    await ours.open()
    await theirs.open()
    secrets = JobSecrets(ours)
    try:
        stop = asyncio.Event()

        async def other_writer() -> int:
            n = 0
            while not stop.is_set():
                await theirs.create(Job(id=uuid.uuid4().hex, user_id="u", type="summary", input={"n": n}))
                n += 1
            return n

        writer = asyncio.create_task(other_writer())
        for round_ in range(40):
            created = await ours.create(Job(id=uuid.uuid4().hex, user_id="u", type="summary", input={}))
            await asyncio.gather(
                *(ours.get(created.id) for _ in range(5)),
                *(secrets.delete(f"job-{round_}-{i}") for i in range(5)),
                ours.list_active(),
            )
        stop.set()
        assert await writer > 0
        assert all(j.status is JobStatus.QUEUED for j in await ours.list_active())
    finally:
        await ours.close()
        await theirs.close()
