"""Group commit for the PostgreSQL store: the writes that arrive while one is in flight go together in the next batch.

The same rule as the SQLite store's (connection.py): each write keeps its own result, none is answered before its
batch committed, and a batch that fails is run again one write at a time, so each caller gets exactly the result or
error its statement alone would have had. Here a batch is one transaction sent in pipeline mode: BEGIN, the
statements, COMMIT, in one round trip, with one commit (one WAL flush) for them all.

The job path's hot writes (claim, progress, renew, finish) are `Bulk` statements: one UPDATE over `unnest` of one
array per parameter, so the writes of one kind in a batch are one statement, parsed and planned once, whatever their
number, and alone they are the same statement over one-element arrays. Each row keeps its own conditions (the lease
token, the status, the ticket): fencing is per row, exactly as one statement per write. Two writes to the same job
never share one statement (an UPDATE changes a row once): the second goes in a later statement of the batch.

Why: one statement per write costs a round trip, a pool checkout, a parse and plan, and a durable commit each; and
the writes of one user's jobs take turns on that user's `user_active` row (the trigger a finish fires, the upsert a
submit makes) with its lock held through each commit's WAL flush. Batched, a worker's 50 claims and finishes are a
few statements a round (README, Performance).

One batch is in flight per store (per process), so batches never wait on one another within a process. Batches of
different processes may lock the same counter rows in opposite orders: `lock_timeout` (LOCK_TIMEOUT_MS, set only
for the batch's own transaction, so PgBouncer's transaction mode keeps working) ends such a wait long before the
server's one-second deadlock check would, and the writes then run one by one, each in its own transaction as
without batching. A batch whose connection is lost is never run again: it may have committed, so each caller gets
the error (StoreUnavailable), as a single statement would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("aijobs.store")

MAX_BATCH = 200
LOCK_TIMEOUT_MS = 100


@dataclass(frozen=True, eq=False)
class Bulk:
    """One statement for any number of writes of one kind: `sql` takes one array per name in `fields` (`%s` each,
    in that order), unnests them WITH ORDINALITY, and returns the ordinal first, then the write's own columns.
    `key` names the field that says which row a write changes (two writes to one row go in separate statements)."""

    sql: str
    fields: tuple[str, ...]
    key: str = "id"

    def arrays(self, writes: list[dict[str, Any]]) -> list[list[Any]]:
        return [[w[f] for w in writes] for f in self.fields]


Statement = str | Bulk
_Item = tuple[Statement, Any, "asyncio.Future[list[Any]]"]


class WriteBatcher:
    """`await rows(statement, params)`: the statement's rows, once the batch holding it committed."""

    def __init__(
        self,
        single: Callable[[str, Any], Awaitable[list[Any]]],
        connection: Callable[[], Any],
        unreachable: Callable[[BaseException], bool],
        *,
        statement_timeout: float = 0.0,
    ) -> None:
        # DATABASE_STATEMENT_TIMEOUT, for each batch's own transaction (SET LOCAL: PgBouncer's transaction mode keeps
        # working): a statement that runs longer, or the transaction left idle that long, is ended by the server.
        # The second frees the rows of a worker whose path went silent after its writes reached the server but
        # before its COMMIT did; the server's own keepalive would hold them for hours, and with them the worker that
        # took its jobs over.
        ms = round(statement_timeout * 1000)
        names = ("statement_timeout", "idle_in_transaction_session_timeout")
        self._limits = [f"SET LOCAL {name} = {ms}" for name in names] if ms else []  # one a statement: pipeline mode
        self._single = single  # the store's own one-statement path (autocommit, deadlock retry)
        self._connection = connection  # a pooled connection, as an async context manager
        self._unreachable = unreachable
        self._pending: list[_Item] = []
        self._runner: asyncio.Task[None] | None = None

    async def rows(self, statement: Statement, params: Any) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((statement, params, future))
        if self._runner is None:
            # A task of its own: a caller cancelled while waiting must not stop the batch the others wait on.
            self._runner = asyncio.create_task(self._run())
        return await future

    async def close(self) -> None:
        """Let the batch in flight (and those queued behind it) finish before the pool closes."""
        while self._runner is not None:
            await asyncio.shield(self._runner)

    async def _run(self) -> None:
        batch: list[_Item] = []
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                if len(batch) == 1:
                    await self._one(*batch[0])
                else:
                    await self._many(batch)
        finally:
            self._runner = None
            for _, _, future in batch + self._pending:  # only when the runner itself was cancelled (shutdown)
                if not future.done():
                    future.cancel()
            self._pending.clear()

    async def _alone(self, statement: Statement, params: Any) -> list[Any]:
        if isinstance(statement, Bulk):
            return [row[1:] for row in await self._single(statement.sql, statement.arrays([params]))]
        return await self._single(statement, params)

    async def _one(self, statement: Statement, params: Any, future: asyncio.Future[list[Any]]) -> None:
        try:
            rows = await self._alone(statement, params)
        except Exception as exc:
            _settle(future, exc=exc)
        except BaseException:
            future.cancel()
            raise
        else:
            _settle(future, rows)

    async def _many(self, batch: list[_Item]) -> None:
        import psycopg

        units = _units(batch)
        failed: BaseException | None = None
        results: list[list[Any]] = []
        try:
            async with self._connection() as conn:
                cursors = []
                try:
                    async with conn.pipeline():
                        await conn.execute("BEGIN")
                        await conn.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                        for limit in self._limits:
                            await conn.execute(limit)
                        for statement, items in units:
                            if isinstance(statement, Bulk):
                                arrays = statement.arrays([params for _, params, _ in items])
                                cursors.append(await conn.execute(statement.sql, arrays))
                            else:
                                cursors.append(await conn.execute(statement, items[0][1]))
                        await conn.execute("COMMIT")
                except psycopg.Error as exc:
                    if self._unreachable(exc):
                        raise
                    await conn.rollback()  # the server refused a statement (or the commit): nothing was written
                    failed = exc
                else:
                    # pgresult.nfields, not cur.description: that builds a Column object per column per statement
                    results = [await cur.fetchall() if cur.pgresult and cur.pgresult.nfields else [] for cur in cursors]
        except Exception as exc:  # no connection, or lost mid-batch: it may have committed, so it is not re-run
            for _, _, future in batch:
                _settle(future, exc=exc)
            return
        if failed is not None:
            log.info("write batch refused, its writes run one by one", extra={"error": str(failed)})
            await asyncio.gather(*(self._one(*item) for item in batch))
            return
        for (statement, items), rows in zip(units, results, strict=True):
            if isinstance(statement, Bulk):
                by_ordinal = {row[0]: row[1:] for row in rows}
                for n, (_, _, future) in enumerate(items, start=1):
                    row = by_ordinal.get(n)
                    _settle(future, [row] if row is not None else [])
            else:
                _settle(items[0][2], rows)


def _units(batch: list[_Item]) -> list[tuple[Statement, list[_Item]]]:
    """The batch as statements, in the order each first appears: a plain write alone; the writes of one Bulk kind
    together, except that a second write to the same row goes in the next statement of that kind (and so on), after
    the first."""
    units: list[tuple[Statement, list[_Item]]] = []
    groups: dict[tuple[int, int], list[_Item]] = {}
    seen: dict[tuple[int, Any], int] = {}
    for item in batch:
        statement, params, _ = item
        if not isinstance(statement, Bulk):
            units.append((statement, [item]))
            continue
        row = (id(statement), params[statement.key])
        round_ = seen.get(row, 0)
        seen[row] = round_ + 1
        group = groups.get((id(statement), round_))
        if group is None:
            group = groups[(id(statement), round_)] = []
            units.append((statement, group))
        group.append(item)
    return units


def _settle(future: asyncio.Future[list[Any]], rows: list[Any] | None = None, *, exc: Exception | None = None) -> None:
    if future.done():  # its caller was cancelled: the statement ran all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(rows if rows is not None else [])
