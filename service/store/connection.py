"""Two SQLite connections on threads of their own, with group commit: what the asyncio code awaits instead of
aiosqlite.

aiosqlite hops to its thread and back for every call (execute, fetch, close: three loop wake-ups per
statement), and lets other coroutines' statements run between a cursor's execute and its close: a SELECT
left stepping holds a read snapshot open on the shared connection, and the next write on it then fails at
once with `database is locked` (SQLITE_BUSY_SNAPSHOT skips the busy handler).

Here every operation runs whole (execute, fetch every row, close) on its connection's thread, so statements
never interleave. Each thread takes every operation waiting when it wakes, runs them as one batch and hands all
their results back to the loop in one wake-up. The writer runs a batch inside one `BEGIN IMMEDIATE … COMMIT` (one
lock, one WAL commit for many statements, and busy_timeout applies to the BEGIN). Each operation keeps its own
result (rows, rowcount) or exception, and none resolves before its batch committed. If a statement's error rolled
the whole transaction back (SQLite does for a few errors), the batch runs again one statement at a time.

A lone write on an idle writer (the worker's claim, `execute_now`) runs on the loop's thread when the turn's writes
are handed over, on the writer's own connection under the lock the writer's thread holds for each batch: a job's
start then pays the statement, not two thread hand-overs. Only when it is all that turn of the loop queued and the
writer has answered everything and been idle IDLE_FOR_NOW: a busy worker's claims (a take's burst, or one after each
finish in a drain) group-commit on the thread as before (run one commit each on the loop, they halved a drain), and
so does the first claim of a burst on a worker just idle (run alone at once, it cost the e2e figure ~9 % of the
worker's CPU per job: that job ran ahead of its burst, and the rest went as smaller batches). The writer's thread,
idle that long, sets busy_timeout 0 for it meanwhile (the loop must never wait for the lock) and back before its
next batch.

A SELECT goes to the reader instead: in WAL mode a reader takes no lock a writer holds, so while our writer waits
for the write lock (another process holds it), reads go on, neither failing nor waiting with it. A read sees
every write that resolved before it was queued (those committed first). A statement that the write lock kept out
past busy_timeout (a long or stuck write elsewhere) fails as `StoreUnavailable`, a store outage as an unreachable
PostgreSQL is: the web answers 503 with Retry-After, a worker holds its fenced writes until the store answers
(store/patient.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from ..errors import StoreUnavailable

IDLE_FOR_NOW = 0.005  # seconds the writer must have been idle for `_run_here` (a busy worker's writes batch instead)
MAX_BATCH = 256  # statements per transaction: bounds how long one batch holds the write lock


class Result:
    """Everything one statement returned, already fetched: rows, rowcount and lastrowid."""

    __slots__ = ("lastrowid", "rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int, lastrowid: int | None) -> None:
        self.rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    async def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> list[Any]:
        return self.rows

    async def __aenter__(self) -> Result:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Op:
    __slots__ = ("fn", "future", "params", "readonly", "sql")

    def __init__(
        self,
        future: asyncio.Future[Any],
        sql: str | None,
        params: Sequence[Any],
        fn: Callable[[sqlite3.Connection], Any] | None = None,
    ) -> None:
        self.future = future
        self.sql = sql
        self.params = params
        self.fn = fn  # runs alone, outside any batch transaction (it may manage its own)
        self.readonly = sql is not None and sql.lstrip()[:6].upper() == "SELECT"


class _Pending:
    """What `execute` returns: await it for the Result, or use it as `async with … as cur`."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[Result]) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, Result]:
        return self._future.__await__()

    async def __aenter__(self) -> Result:
        return await self._future

    async def __aexit__(self, *exc: object) -> None:
        return None


def _run_one(conn: sqlite3.Connection, op: _Op) -> Any:
    if op.fn is not None:
        return op.fn(conn)
    assert op.sql is not None
    cur = conn.execute(op.sql, op.params)
    try:
        rows = cur.fetchall()
        return Result(rows, cur.rowcount, cur.lastrowid)
    finally:
        cur.close()


class _Lane:
    """One sqlite3 connection, the thread that owns it and the queue it serves, batch by batch."""

    def __init__(
        self, name: str, run_batch: Callable[[sqlite3.Connection, list[_Op]], list[Any]], *, for_now: bool = False
    ) -> None:
        self.name = name
        self.run_batch = run_batch
        self.for_now = for_now  # the writer: idle IDLE_FOR_NOW, its thread readies `conn` for `_run_here`
        self.queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        # Statements queued during one turn of the loop, handed to the thread together at its end (`_hand_over`):
        # one put and one thread wake-up for all of them, not one each (each put woke the thread and fought the
        # loop for the GIL; with 1,000 jobs starting at once that was the largest single cost of a claim).
        self._buffer: list[_Op] = []
        self._buffer_loop: asyncio.AbstractEventLoop | None = None
        self.outstanding = 0  # operations queued and not yet answered (counted on the loop): 0, the thread is idle
        self.conn: sqlite3.Connection | None = None  # the thread's connection, for `_run_here` (None: closing)
        self.busy_timeout_ms = 0
        self.lock = threading.Lock()  # held by whoever uses `conn`: the thread for a batch, or `_run_here`
        self._lone: _Op | None = None  # a write for `_run_here`, if it is still alone when this turn's batch goes
        self._no_wait = False  # `_run_here` set busy_timeout 0 on `conn` (under `lock`): the thread sets it back
        self._idle_since = 0.0  # when the thread last answered (loop time): `_run_here` only for a lane idle a while
        self.errors = 0  # statements that failed, not counting a unique-key refusal (written by the thread only)

    def submit(self, op: _Op, *, here: bool = False) -> None:
        """Queue an operation for the thread, at the end of this turn of the loop with the others queued meanwhile;
        `here`: run it on the loop instead if it is still alone then and the writer idle (`_run_here`)."""
        loop = op.future.get_loop()
        if self._buffer and self._buffer_loop is not loop:  # a caller on another loop: that batch goes now
            self._hand_over()
        if not self._buffer:
            self._buffer_loop = loop
            loop.call_soon(self._hand_over)
            self._lone = op if here and not self.outstanding else None
        self._buffer.append(op)
        self.outstanding += 1

    def _run_here(self, op: _Op) -> bool:
        """Run a lone write on the loop's thread, on the thread's own connection, when it is all this turn of the
        loop queued and the writer has been idle IDLE_FOR_NOW with nothing queued or running: the statement alone,
        without the two thread hand-overs (see Connection.execute_now). It never waits for the write lock
        (busy_timeout 0, set back by the thread before its next batch): held elsewhere, or any error, and False:
        it goes to the thread as any write, and the thread's path decides."""
        conn = self.conn
        loop = op.future.get_loop()
        if conn is None or self.outstanding != 1 or loop.time() - self._idle_since < IDLE_FOR_NOW:
            return False
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if self.conn is None or conn.in_transaction:
                return False
            if not self._no_wait:  # the thread's `_next` did not get to it yet; the thread sets it back
                conn.execute("PRAGMA busy_timeout=0")
                self._no_wait = True
            try:
                result = _run_one(conn, op)
            except Exception:  # the thread runs it again and answers its error (or finds the lock free)
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                return False
        finally:
            self.lock.release()
        self.outstanding -= 1
        self._idle_since = loop.time()
        _settle(op.future, result, None)
        return True

    def _hand_over(self) -> None:
        if self._buffer:
            ops, self._buffer = self._buffer, []
            lone, self._lone = self._lone, None
            if lone is not None and len(ops) == 1 and self._run_here(lone):
                return
            self.queue.put(ops)

    async def open(self, path: str, pragmas: Sequence[str], max_batch: int) -> None:
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.thread = threading.Thread(
            target=self._main, args=(path, pragmas, max_batch, opened), name=self.name, daemon=True
        )
        self.thread.start()
        await opened

    def _main(self, path: str, pragmas: Sequence[str], max_batch: int, opened: asyncio.Future[None]) -> None:
        loop = opened.get_loop()
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            for pragma in pragmas:
                conn.execute(pragma)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, opened, None, exc)
            return
        self.conn = conn
        loop.call_soon_threadsafe(_settle, opened, None, None)
        try:
            self._serve(conn, max_batch)
        finally:
            self.conn = None
            with self.lock:
                conn.close()

    def _serve(self, conn: sqlite3.Connection, max_batch: int) -> None:
        get_nowait = self.queue.get_nowait
        while True:
            first = self._next(conn)
            if first is None:
                return
            waiting = list(first)
            stop = False
            while len(waiting) < max_batch:
                try:
                    ops = get_nowait()
                except queue.Empty:
                    break
                if ops is None:
                    stop = True
                    break
                waiting += ops
            for start in range(0, len(waiting), max_batch):
                self._run(conn, waiting[start : start + max_batch])
            if stop:
                return

    def _next(self, conn: sqlite3.Connection) -> list[_Op] | None:
        """The next operations queued. A writer left idle IDLE_FOR_NOW sets busy_timeout 0 meanwhile, ready for
        `_run_here` (which would otherwise pay that statement on a job's start, ~0.06 ms on an idle worker's cold
        caches); a busy writer's batches come sooner and never pay it."""
        if not self.for_now:
            return self.queue.get()
        try:
            return self.queue.get(timeout=IDLE_FOR_NOW)
        except queue.Empty:
            pass
        with self.lock, contextlib.suppress(sqlite3.Error):
            if not self._no_wait:
                conn.execute("PRAGMA busy_timeout=0")
                self._no_wait = True
        return self.queue.get()

    def _run(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        """Run one batch and answer each of its operations on its own loop, one wake-up per loop."""
        with self.lock:  # released before the answers go: a loop that sees the lane idle finds the lock free
            if self._no_wait:
                conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
                self._no_wait = False
            outcomes = self.run_batch(conn, batch)
        by_loop: dict[asyncio.AbstractEventLoop, tuple[list[_Op], list[Any]]] = {}
        for op, outcome in zip(batch, outcomes, strict=True):  # one loop, unless a caller moved loops
            if outcome[1] is not None:
                outcome = self._failed(outcome[1])
            ops, results = by_loop.setdefault(op.future.get_loop(), ([], []))
            ops.append(op)
            results.append(outcome)
        for target, (ops, results) in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody is waiting any more
                target.call_soon_threadsafe(self._answer, ops, results)

    def _answer(self, ops: list[_Op], outcomes: list[tuple[Any, BaseException | None]]) -> None:
        self.outstanding -= len(ops)
        if not self.outstanding:
            self._idle_since = ops[0].future.get_loop().time()
        _resolve(ops, outcomes)

    def _failed(self, exc: BaseException) -> tuple[None, BaseException]:
        """Count a failed statement; the write lock held elsewhere past busy_timeout becomes StoreUnavailable."""
        if not isinstance(exc, sqlite3.IntegrityError):
            self.errors += 1
        if lock_held_elsewhere(exc):
            outage = StoreUnavailable(
                "The job store is busy: another process holds its write lock. Nothing was written; try again shortly."
            )
            outage.__cause__ = exc
            return None, outage
        return None, exc

    async def close(self) -> None:
        if self.thread is None:
            return
        self.conn = None  # no `_run_here` from here on
        self._hand_over()
        self.queue.put(None)
        thread, self.thread = self.thread, None
        await asyncio.get_running_loop().run_in_executor(None, thread.join)


class Connection:
    """Two sqlite3 connections on threads of their own: `execute` queues a statement and resolves when it committed.

    Writes (and `call`) go to the writer, whose batches group-commit. A SELECT goes to the reader: in WAL mode a
    read needs no lock that a writer holds, so a write waiting for the write lock (another process holds it) never
    holds up or fails the reads queued meanwhile. Both batch: a wake-up of the loop answers all a batch ran."""

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 10_000, max_batch: int = MAX_BATCH) -> None:
        self.path = str(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.max_batch = max_batch
        self._writer = _Lane("aijobs-sqlite", _run_writes, for_now=True)
        self._reader = _Lane("aijobs-sqlite-read", _run_reads)
        self._open = False
        self._closed = False

    @property
    def errors(self) -> int:
        """Statements that failed, not counting a unique-key refusal."""
        return self._writer.errors + self._reader.errors

    async def open(self) -> None:
        busy = f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}"  # a reader may meet a recovery in progress
        self._writer.busy_timeout_ms = int(self.busy_timeout_ms)
        await self._writer.open(self.path, [busy], self.max_batch)
        try:
            # query_only: a statement taken for a read that would write fails here instead of writing unbatched
            await self._reader.open(self.path, [busy, "PRAGMA query_only=ON"], self.max_batch)
        except BaseException:
            await self._writer.close()
            raise
        self._open = True

    def _submit(self, sql: str | None, params: Sequence[Any], fn: Callable[[sqlite3.Connection], Any] | None) -> Any:
        if not self._open or self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        future = asyncio.get_running_loop().create_future()
        op = _Op(future, sql, params, fn)
        (self._reader if op.readonly else self._writer).submit(op)
        return future

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Pending:
        """Queue one statement; await the Result (or `async with` it). Its effects are committed when it resolves."""
        return _Pending(self._submit(sql, params, None))

    def execute_now(self, sql: str, params: Sequence[Any] = ()) -> _Pending:
        """`execute` for a lone write, run on this thread at the end of this turn of the loop when it is still the
        only write queued and the writer has nothing running (the worker's claim on an idle worker: a job's start
        then pays the statement, ~0.1-0.25 ms, not the hand-over to the writer's thread and back, ~0.3 ms of
        scheduler wake-ups). On the writer's own connection, so writes still commit in the order made and no third
        connection is open; joined by another write, the lock held elsewhere, or any error, and it goes to the
        writer's thread as any write."""
        if not self._open or self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        future = asyncio.get_running_loop().create_future()
        self._writer.submit(_Op(future, sql, params), here=True)
        return _Pending(future)

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run fn(connection) on the writer's thread, alone (it may run its own transaction)."""
        return await self._submit(None, (), fn)

    async def close(self) -> None:
        if not self._open or self._closed:
            return
        self._closed = True
        await self._writer.close()
        await self._reader.close()


def _run_reads(conn: sqlite3.Connection, batch: list[_Op]) -> list[tuple[Any, BaseException | None]]:
    """Each read on its own (WAL: it sees every commit made before it started, and takes no lock a writer holds)."""
    return [_attempt(conn, op) for op in batch]


def _run_writes(conn: sqlite3.Connection, batch: list[_Op]) -> list[tuple[Any, BaseException | None]]:
    outcomes: list[tuple[Any, BaseException | None]] = []
    start = 0
    for i, op in enumerate(batch):  # a callable runs alone: split the batch around it
        if op.fn is not None:
            outcomes += _run_group(conn, batch[start:i])
            outcomes.append(_attempt(conn, op))
            start = i + 1
    outcomes += _run_group(conn, batch[start:])
    return outcomes


def _run_group(conn: sqlite3.Connection, ops: list[_Op]) -> list[tuple[Any, BaseException | None]]:
    if len(ops) <= 1 or conn.in_transaction:
        return [_attempt(conn, op) for op in ops]  # a lone statement is its own transaction
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return [(None, exc) for _ in ops]  # the lock held elsewhere past busy_timeout: every write of the batch failed
    outcomes = []
    for op in ops:
        outcome = _attempt(conn, op)
        if outcome[1] is not None and not conn.in_transaction:  # the error rolled back the batch so far
            return [_attempt(conn, op) for op in ops]
        outcomes.append(outcome)
    try:
        conn.execute("COMMIT")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [_attempt(conn, op) for op in ops]
    return outcomes


def lock_held_elsewhere(exc: BaseException) -> bool:
    """SQLITE_BUSY once busy_timeout ran out: another connection holds the write lock (a long write, a checkpoint,
    a crashed writer's recovery), a store outage like an unreachable PostgreSQL; waiting and trying again cures it.
    Not SQLITE_BUSY_SNAPSHOT: that is a read transaction left open on our own connection (see the module
    docstring), failing at once whatever the timeout, a bug that no wait cures; nor SQLITE_LOCKED, a conflict
    within one connection."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised by hand, not by SQLite
        return False
    return code & 0xFF == sqlite3.SQLITE_BUSY and code != sqlite3.SQLITE_BUSY_SNAPSHOT


def _attempt(conn: sqlite3.Connection, op: _Op) -> tuple[Any, BaseException | None]:
    try:
        return _run_one(conn, op), None
    except Exception as exc:
        return None, exc


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


def _resolve(batch: list[_Op], outcomes: list[tuple[Any, BaseException | None]]) -> None:
    for op, (value, exc) in zip(batch, outcomes, strict=True):
        _settle(op.future, value, exc)
