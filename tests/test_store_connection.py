"""The store's connection layer: statements batched into one transaction keep their own results and errors,
and a process sharing the file with others never sees `database is locked` from a half-read statement."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.models import Job, JobStatus
from service.store.connection import Connection, lock_held_elsewhere
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


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's long write: SQLite's write lock taken and kept until the caller rolls it back."""
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    return lock


async def test_a_write_the_write_lock_keeps_out_is_a_store_outage(tmp_path: Path) -> None:
    """`database is locked` past busy_timeout is StoreUnavailable (503 on the web, a held write on a worker), like an
    unreachable PostgreSQL, for a lone write and a group-committed batch alike; nothing of it is written."""
    store = SQLiteJobStore(tmp_path / "jobs.db", busy_timeout=0.1)
    await store.open()
    try:
        kept = await store.create(Job(id=uuid.uuid4().hex, user_id="u", type="summary", input={}))
        lock = hold_write_lock(tmp_path / "jobs.db")
        try:
            with pytest.raises(StoreUnavailable) as refused:
                await store.create(Job(id="lone", user_id="u", type="summary", input={}))
            assert isinstance(refused.value.__cause__, sqlite3.OperationalError), refused.value.__cause__
            batch = await asyncio.gather(
                *(store.create(Job(id=f"b{i}", user_id="u", type="summary", input={})) for i in range(5)),
                store.request_cancel(kept.id, "u"),
                return_exceptions=True,
            )
            assert all(isinstance(r, StoreUnavailable) for r in batch), batch
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert [j.id for j in await store.list_active()] == [kept.id]
        assert await store.create(Job(id="after", user_id="u", type="summary", input={}))  # the store answers again
    finally:
        await store.close()


def test_a_stale_snapshot_is_not_an_outage(tmp_path: Path) -> None:
    """SQLITE_BUSY_SNAPSHOT (a read transaction left open on our own connection, then a write) fails at once,
    whatever the busy timeout: a bug of ours that waiting cannot cure, so it is not reported as an outage."""
    path = tmp_path / "s.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as a:
        a.execute("PRAGMA journal_mode=WAL")
        a.execute("CREATE TABLE t (v INTEGER)")
        a.execute("INSERT INTO t VALUES (1)")
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as b:
            a.execute("BEGIN")
            a.execute("SELECT * FROM t").fetchall()  # a's snapshot
            b.execute("INSERT INTO t VALUES (2)")  # committed after it
            with pytest.raises(sqlite3.OperationalError) as stale:
                a.execute("UPDATE t SET v = 3")
            a.execute("ROLLBACK")
            b.execute("BEGIN IMMEDIATE")
            with pytest.raises(sqlite3.OperationalError) as busy:
                a.execute("BEGIN IMMEDIATE")  # busy_timeout 0: at once
            b.execute("ROLLBACK")
    assert stale.value.sqlite_errorname == "SQLITE_BUSY_SNAPSHOT", stale.value.sqlite_errorname
    assert not lock_held_elsewhere(stale.value)
    assert lock_held_elsewhere(busy.value)
    assert not lock_held_elsewhere(sqlite3.OperationalError("no such table: t"))
    assert not lock_held_elsewhere(sqlite3.IntegrityError("UNIQUE constraint failed"))


async def test_reads_go_on_while_a_write_waits_for_the_write_lock(tmp_path: Path) -> None:
    """WAL lets readers read while another process writes: a read neither fails nor waits because a write of ours
    waits for the write lock (an open WebSocket broke on that); the write lands once the lock is free."""
    store = SQLiteJobStore(tmp_path / "jobs.db", busy_timeout=60)  # the write waits for the lock, however long
    await store.open()
    try:
        job = await store.create(Job(id=uuid.uuid4().hex, user_id="u", type="summary", input={}))
        lock = hold_write_lock(tmp_path / "jobs.db")
        try:
            write = asyncio.ensure_future(store.touch_queued(job.id, job.seq, step="Touched"))
            await asyncio.sleep(0)  # on its way to the store's thread
            for _ in range(3):  # read after read, each queued while the write waits
                read, owned, active = await asyncio.wait_for(
                    asyncio.gather(store.get(job.id), store.get_owned_ranked(job.id, "u"), store.list_active()), 30
                )
                assert read is not None and read.seq == job.seq and read.current_step != "Touched"
                assert owned is not None and owned[1] == 0 and [j.id for j in active] == [job.id]
            assert not write.done()  # still waiting for the lock
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        touched = await write
        assert touched is not None and touched.seq == job.seq + 1
        assert await store.get(job.id) == touched  # and every read after it sees it
    finally:
        await store.close()


async def _now_db(path: Path) -> Connection:
    db = Connection(path, busy_timeout_ms=5_000)
    await db.open()
    await db.call(lambda c: c.execute("PRAGMA journal_mode=WAL").fetchall())
    await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    await db.execute("INSERT INTO t VALUES ('a', 1)")
    db._writer._idle_since = -1.0  # as if idle for long (the writer just answered the setup's writes)
    return db


def _threads_of(db: Connection) -> list[tuple[int, str]]:
    """Record (thread, statement) for every statement the writer's connection runs from here on."""
    ran: list[tuple[int, str]] = []
    assert db._writer.conn is not None
    with db._writer.lock:
        db._writer.conn.set_trace_callback(lambda sql: ran.append((threading.get_ident(), sql)))
    return ran


async def test_a_lone_write_now_on_an_idle_writer_runs_on_the_loop_in_one_turn(tmp_path: Path) -> None:
    """The claim's path on an idle worker: the statement runs on the loop's thread when the turn's writes are
    handed over, on the writer's own connection, and nothing else runs with it (the idle writer's thread had set
    busy_timeout 0 already); the thread's next batch waits for the write lock again."""
    db = await _now_db(tmp_path / "n.db")
    try:
        lane = db._writer
        deadline = asyncio.get_running_loop().time() + 5
        while not lane._no_wait:  # the idle thread readies the connection
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        ran = _threads_of(db)
        pending = db.execute_now("UPDATE t SET v = 2 WHERE k = 'a' AND v = 1 RETURNING v")
        assert not pending._future.done()  # the turn's other writes may still join it
        await asyncio.sleep(0)
        assert pending._future.done()  # handed over at the turn's end: run there, not on the thread
        assert ran == [(threading.get_ident(), "UPDATE t SET v = 2 WHERE k = 'a' AND v = 1 RETURNING v")]
        async with pending as cur:
            assert tuple(await cur.fetchone()) == (2,)
        async with db.execute("SELECT v FROM t WHERE k = 'a'") as cur:  # committed: the reader sees it
            assert (await cur.fetchone())[0] == 2
        await db.execute("INSERT INTO t VALUES ('c', 1)")  # the thread's next batch waits for the lock again
        assert db._writer.conn is not None
        with db._writer.lock:
            db._writer.conn.set_trace_callback(None)
            assert db._writer.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5_000
        db._writer._idle_since = -1.0
        with pytest.raises(sqlite3.IntegrityError):  # its own error, from the writer's path
            await db.execute_now("INSERT INTO t VALUES ('a', 3)")
    finally:
        await db.close()


async def test_writes_now_batch_on_the_thread_in_a_burst_behind_queued_writes_and_on_a_busy_writer(
    tmp_path: Path,
) -> None:
    """Writes commit in the order made (one queued: the next goes behind it); a burst in one turn of the loop (a
    take's claims) goes to the writer's thread whole, as one group commit; a writer that answered within
    IDLE_FOR_NOW is busy, and its writes batch."""
    db = await _now_db(tmp_path / "n.db")
    try:
        first = db.execute("INSERT INTO t VALUES ('b', 1)")  # queued, not yet run
        second = db.execute_now("UPDATE t SET v = 5 WHERE k = 'b' RETURNING v")
        assert (await first).rowcount == 1
        async with second as cur:
            assert tuple(await cur.fetchone()) == (5,)  # it saw the insert made before it

        db._writer._idle_since = -1.0
        ran = _threads_of(db)
        burst = [db.execute_now("INSERT INTO t VALUES (?, ?)", (f"k{i}", i)) for i in range(5)]
        assert all(r.rowcount == 1 for r in await asyncio.gather(*burst))
        inserts = [t for t, sql in ran if sql.startswith("INSERT")]
        assert len(inserts) == 5 and threading.get_ident() not in inserts
        assert sum(sql == "BEGIN IMMEDIATE" for _, sql in ran) == 1  # one transaction for the burst

        ran.clear()
        busy = db.execute_now("UPDATE t SET v = 6 WHERE k = 'b'")  # the writer answered just now
        assert (await busy).rowcount == 1
        assert [t for t, sql in ran if sql.startswith("UPDATE")] != [threading.get_ident()]
    finally:
        await db.close()


async def test_a_write_now_with_the_lock_held_elsewhere_waits_on_the_writers_thread(tmp_path: Path) -> None:
    """Another process holds the write lock: the try at once fails at once (the loop never waits for the lock)
    and the write goes to the writer, which waits for the lock as every write does."""
    path = tmp_path / "n.db"
    db = await _now_db(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        pending = db.execute_now("UPDATE t SET v = 7 WHERE k = 'a' RETURNING v")
        assert not pending._future.done()
        deadline = asyncio.get_running_loop().time() + 5
        while db._writer.outstanding == 0:  # handed to the writer, which now waits for the lock
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert not pending._future.done()
        other.execute("ROLLBACK")
        async with pending as cur:
            assert tuple(await cur.fetchone()) == (7,)
        async with db.execute("PRAGMA busy_timeout") as cur:  # the writer's own timeout is back
            pass
        assert db._writer.conn is not None
        assert db._writer.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5_000
    finally:
        other.close()
        await db.close()
