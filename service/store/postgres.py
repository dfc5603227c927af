"""PostgreSQL job store: psycopg 3 on a psycopg_pool pool, the same fencing, seq and queue rules as the SQLite store.

Why psycopg and not asyncpg: measured on the store's own statements with server-side prepared statements off
(as PgBouncer's transaction mode needs), the two were within noise of each other (bench/pg_driver.py, README),
and psycopg is typed, pipelines, and needs no JSON codec per connection.

PgBouncer (transaction pooling): every connection has `prepare_threshold=None`, so psycopg never makes a named
server-side prepared statement; locks are transaction-scoped (`pg_advisory_xact_lock`), nothing relies on
session state, and no LISTEN is used.

The active-jobs cap: the submit is one statement that adds to its user's `user_active` row only while under the
cap (an upsert, so concurrent submits of one user take turns on that row's lock and each sees the count the
previous one left) and inserts the job only if it did. Users never wait on each other: no one counter row takes
every submit (the queue length is spread over 64 rows; see pg_migrations).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Any

from ..errors import StoreUnavailable
from ..models import Job, JobError, JobStatus, dumps, now
from .base import FINAL_STEPS, UNSTORED_EVENTS_MAX, SchemaMismatch, StoreOpenError, UniqueViolation
from .pg_batch import Bulk, Statement, WriteBatcher
from .pg_migrations import MIGRATIONS, queue_key
from .pg_outage import PROBE_TIMEOUT, Outage
from .rows import _COLUMNS, _NAMES, _row_to_job
from .shared import (
    CANCEL_QUEUED,
    DELETE_FINISHED,
    DELETE_KEYS_OF_JOB,
    EXPIRE_OVERDUE,
    EXPIRED_ERROR,
    IDEMPOTENCY_DROP_STALE,
    PURGE_JOBS,
    PURGE_KEYS,
    REQUEST_CANCEL,
    TOUCH_QUEUED,
    SharedMethods,
    owned_ranked,
    queue_score,
)

log = logging.getLogger("aijobs.store")

# pg_advisory_xact_lock(LOCK_SPACE, key): the first key names what is locked, so our locks never meet others'.
LOCK_MIGRATE = 0x61696A32  # "aij2": migrations
DEADLOCK_RETRIES = 3

# How many queued jobs run before the row `jobs` (NULL unless it is queued).
_AHEAD = (
    "CASE WHEN jobs.status = 'queued' THEN (SELECT COUNT(*) FROM jobs AS q WHERE q.status = 'queued' AND "
    f"{queue_key('q')} < {queue_key('jobs')}) END"
)
# The same number for a row being inserted, from the other end: every queued job (queue_count, summed over its 64
# rows) minus those queued at or after it. Both read the statement's snapshot, which holds neither the new row nor
# its own count (the trigger runs after), so this is exactly the jobs ahead; the tail is short for a new job (lower
# priorities of the last few seconds, deferred retries) where the jobs ahead are nearly the whole queue.
_AHEAD_NEW = (
    "(SELECT SUM(n) FROM queue_count) - (SELECT COUNT(*) FROM jobs AS q WHERE q.status = 'queued' AND "
    f"{queue_key('q')} >= {queue_key('jobs')})"
)
_HISTORY_APPEND = (
    "history = CASE WHEN %(rec)s::text IS NULL THEN history "
    "ELSE (COALESCE(history, '[]')::jsonb || jsonb_build_array(%(rec)s::jsonb))::text END"
)
# The submit, one statement: take a slot in the user's user_active row (the upsert's WHERE is checked against the
# row's latest version under its row lock, so concurrent submits of one user queue on that row and the cap is
# exact), and insert the job only if a slot was taken. A refused submit writes nothing.
_INSERT = (
    "WITH slot AS (INSERT INTO user_active AS u (user_id, n) SELECT %(user_id)s, 1 "
    "WHERE %(cap)s::int IS NULL OR %(cap)s::int > 0 ON CONFLICT (user_id) "
    "DO UPDATE SET n = u.n + 1 WHERE %(cap)s::int IS NULL OR u.n < %(cap)s::int RETURNING 1) "
    f"INSERT INTO jobs ({_COLUMNS}) SELECT "
    + ", ".join(f"%({n})s" for n in _NAMES)
    + f" WHERE EXISTS (SELECT 1 FROM slot) RETURNING {_AHEAD_NEW}"
)

# The job path's hot writes, one statement for any number of them (pg_batch.Bulk): one array per parameter, one row
# of `v` per write, each row updated under its own conditions, the ordinal `n` returned first to tell rows apart.
# `status IS NOT DISTINCT FROM 'queued'` (the column is NOT NULL: the same test as `=`) is one the planner cannot match
# to the partial indexes on status (jobs_queue_order, jobs_lease) or use as an index condition: with statistics
# older than a burst of submits it took "status = 'queued'" as a handful of rows and hash-joined the batch against
# every queued job (10,000 rows read per batch); this way each write is one primary-key lookup, whatever the stats.
# The arrays go in binary (%b): psycopg's text format escapes every element with a regex substitution.
_CLAIM = Bulk(
    "UPDATE jobs SET status = 'processing', attempts = attempts + 1, lease_token = v.p_token, worker_id = v.p_worker, "
    "lease_expires_at = v.p_until, started_at = COALESCE(started_at, v.p_t), updated_at = v.p_t, seq = seq + 1, "
    "error = NULL, current_step = 'Starting…', percentage = 0, partial_output = NULL, running_on = "
    "(((v.p_steps::jsonb -> type) -> LEAST(model_index, jsonb_array_length(v.p_steps::jsonb -> type) - 1)) "
    "|| jsonb_build_object('since', v.p_t))::text "
    "FROM unnest(%b::text[], %b::text[], %b::float8[], %b::float8[], %b::text[], %b::text[], %b::bigint[]) "
    "WITH ORDINALITY AS v(p_token, p_worker, p_until, p_t, p_steps, p_id, p_ticket, p_n) "
    "WHERE id = v.p_id AND status IS NOT DISTINCT FROM 'queued' AND NOT cancel_requested "
    "AND (v.p_ticket IS NULL OR seq = v.p_ticket) "
    f"RETURNING v.p_n, {_COLUMNS}, EXISTS (SELECT 1 FROM job_secrets WHERE job_id = jobs.id)",
    ("token", "worker", "until", "t", "steps", "id", "ticket"),
)
_PROGRESS = Bulk(
    "UPDATE jobs SET percentage = v.p_pct, current_step = COALESCE(v.p_step, current_step), "
    "partial_output = CASE WHEN v.p_append IS NOT NULL THEN COALESCE(partial_output, '') || v.p_append "
    "ELSE COALESCE(v.p_partial, partial_output) END, updated_at = v.p_t, "
    "seq = GREATEST(seq + 1, COALESCE(v.p_seq, 0)) "
    "FROM unnest(%b::float8[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::float8[], %b::text[], "
    "%b::text[]) WITH ORDINALITY AS v(p_pct, p_step, p_append, p_partial, p_seq, p_t, p_id, p_token, p_n) "
    "WHERE id = v.p_id AND lease_token = v.p_token AND status IS NOT DISTINCT FROM 'processing' "
    "RETURNING v.p_n, seq",
    ("pct", "step", "append", "partial", "seq", "t", "id", "token"),
)
_RENEW = Bulk(
    "UPDATE jobs SET lease_expires_at = v.p_until "
    "FROM unnest(%b::float8[], %b::text[], %b::text[]) WITH ORDINALITY AS v(p_until, p_id, p_token, p_n) "
    "WHERE id = v.p_id AND lease_token = v.p_token AND status IS NOT DISTINCT FROM 'processing' "
    f"RETURNING v.p_n, {_COLUMNS}",
    ("until", "id", "token"),
)
_FINISH = Bulk(
    "UPDATE jobs SET status = v.p_status, result = v.p_result, error = v.p_error, model = COALESCE(v.p_model, model), "
    "usage = COALESCE(v.p_usage, usage), current_step = COALESCE(v.p_step, current_step), "
    "percentage = CASE WHEN v.p_status = 'completed' THEN 100 ELSE percentage END, lease_token = NULL, "
    "lease_expires_at = NULL, completed_at = v.p_t, updated_at = v.p_t, "
    "seq = GREATEST(seq, COALESCE(v.p_seq, 0)) + 1, "
    "partial_output = CASE WHEN v.p_append IS NOT NULL THEN COALESCE(partial_output, '') || v.p_append "
    "ELSE partial_output END, "
    "history = CASE WHEN v.p_rec IS NULL THEN history "
    "ELSE (COALESCE(history, '[]')::jsonb || jsonb_build_array(v.p_rec::jsonb))::text END "
    "FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::text[], "
    "%b::text[], %b::text[], %b::text[], %b::bigint[]) WITH ORDINALITY "
    "AS v(p_status, p_result, p_error, p_model, p_usage, p_step, p_t, p_rec, p_id, p_token, p_append, p_seq, p_n) "
    "WHERE id = v.p_id AND lease_token = v.p_token AND status IS NOT DISTINCT FROM 'processing' "
    f"RETURNING v.p_n, {_COLUMNS}",
    ("status", "result", "error", "model", "usage", "step", "t", "rec", "id", "token", "append", "seq"),
)


def placeholders(sql: str) -> str:
    """A statement written with SQLite's `?` placeholders (those both stores share), in psycopg's `%s`."""
    return sql.replace("%", "%%").replace("?", "%s")


# The statements shared.py holds for both stores, in psycopg's placeholders.
_CANCEL_QUEUED = placeholders(CANCEL_QUEUED)
_REQUEST_CANCEL = placeholders(REQUEST_CANCEL)
_TOUCH_QUEUED = placeholders(TOUCH_QUEUED)
_EXPIRE_OVERDUE = placeholders(EXPIRE_OVERDUE)
_PURGE_JOBS = placeholders(PURGE_JOBS)
_PURGE_KEYS = placeholders(PURGE_KEYS)
_DELETE_FINISHED = placeholders(DELETE_FINISHED)
_DELETE_KEYS_OF_JOB = placeholders(DELETE_KEYS_OF_JOB)
_IDEMPOTENCY_DROP_STALE = placeholders(IDEMPOTENCY_DROP_STALE)


def _shown(url: str) -> str:
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)


# TCP keepalive on every connection, and a bound on unacknowledged data (tcp_user_timeout): a connection whose path
# went silent (packets dropped, no reset) fails in about 15 s, idle or mid-statement, instead of the kernel's minutes
# to hours; its writes fail as store_unavailable, the worker's leases lapse and another worker's sweeper takes over.
# Client-side libpq parameters, not startup options: PgBouncer takes them. (DATABASE_STATEMENT_TIMEOUT: pg_batch.py.)
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 3, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 15_000


def _configure_kwargs(connect_timeout: float) -> dict[str, Any]:
    # autocommit: one statement is one transaction, as in the SQLite store; prepare_threshold=None: never a named
    # server-side prepared statement, so PgBouncer's transaction mode is safe. connect_timeout: libpq waits forever
    # by default for a host that drops packets; bounded, the pool's reconnect loop keeps going instead.
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "prepare_threshold": None,
        "connect_timeout": max(1, round(connect_timeout)),
        **KEEPALIVES,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }
    return kwargs


def _unreachable(exc: BaseException) -> bool:
    """The server cannot be reached or went away (restart, shutdown, network), as opposed to a statement's own
    error: no connection within the pool's timeout, a client-side connection failure (no SQLSTATE), class 08
    (connection exception) or 57P01-57P03 (admin/crash shutdown, cannot connect now). A deadlock (40P01) is an
    OperationalError too, but the statement is run again (_rows), not reported as an outage."""
    import psycopg
    from psycopg_pool import PoolTimeout

    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


class Failures:
    """Operations on a store's pool that failed, not counting a unique-key refusal (for the metrics), and whether
    the server is known down (`outage`: then a request fails at once, pg_outage.py)."""

    __slots__ = ("count", "outage")

    def __init__(self, outage: Outage | None = None) -> None:
        self.count = 0
        self.outage = outage


@contextlib.asynccontextmanager
async def _connection(pool: Any, failures: Failures) -> AsyncIterator[Any]:
    """A pooled connection; an unreachable server becomes StoreUnavailable (503 on the web, a paused claim on a
    worker), never a 500. The pool checks each connection before handing it out and drops broken ones (see open).
    While the server is known down, StoreUnavailable comes at once, before the pool is asked."""
    outage = failures.outage
    if outage is not None:
        outage.check()
    try:
        async with pool.connection() as conn:
            yield conn
    except Exception as exc:
        import psycopg
        from psycopg_pool import PoolTimeout

        if not isinstance(exc, psycopg.errors.UniqueViolation):
            failures.count += 1
        if _unreachable(exc):
            if outage is not None and isinstance(exc, PoolTimeout):
                outage.suspect()  # down, or only busy: a probe's connect tells
            raise StoreUnavailable() from exc
        raise


def _watched_connection_class(outage: Outage) -> type:
    """psycopg's AsyncConnection, telling `outage` of each connect that fails (the pool's own reconnects too)."""
    import psycopg

    class WatchedConnection(psycopg.AsyncConnection):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().connect(*args, **kwargs)
            except psycopg.OperationalError as exc:
                outage.connect_failed(exc)
                raise

    return WatchedConnection


async def _probe(url: str, connect_timeout: float) -> None:
    """A fresh connection (not the pool's) and `SELECT 1`: raises unless the server answers."""
    import psycopg

    kwargs = _configure_kwargs(connect_timeout)
    async with await psycopg.AsyncConnection.connect(url, **kwargs) as conn:
        await conn.execute("SELECT 1")


class Result:
    """What a shared (dialect-neutral) statement returned, shaped like .connection.Result."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> list[Any]:
        return self.rows


class _Pending:
    def __init__(self, db: PgDb, sql: str, params: Sequence[Any]) -> None:
        self._db, self._sql, self._params = db, sql, params

    def __await__(self) -> Generator[Any, None, Result]:
        return self._db._run(self._sql, self._params).__await__()

    async def __aenter__(self) -> Result:
        return await self._db._run(self._sql, self._params)

    async def __aexit__(self, *exc: object) -> None:
        return None


class PgDb:
    """`execute(sql, params)` with SQLite's `?` placeholders, for the modules both stores share (users, keys,
    history queries): the same interface as .connection.Connection, a unique-key error as UniqueViolation."""

    def __init__(self, pool: Any, failures: Failures) -> None:
        self.pool = pool
        self.failures = failures
        self._sql: dict[str, str] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Pending:
        return _Pending(self, sql, params)

    async def _run(self, sql: str, params: Sequence[Any]) -> Result:
        import psycopg

        pg = self._sql.get(sql)
        if pg is None:
            pg = self._sql[sql] = placeholders(sql)
        try:
            async with _connection(self.pool, self.failures) as conn:
                cur = await conn.execute(pg, tuple(params))
                rows = await cur.fetchall() if cur.description is not None else []
                return Result(rows, cur.rowcount)
        except psycopg.errors.UniqueViolation as exc:
            raise UniqueViolation(str(exc)) from None


class PostgresJobStore(SharedMethods):
    dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        acquire_timeout: float = 5.0,
        statement_timeout: float = 0.0,
    ) -> None:
        self.url = url
        self.statement_timeout = statement_timeout
        self.acquire_timeout = acquire_timeout
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self._pool: Any = None
        self._db: PgDb | None = None
        self.outage = Outage(lambda: _probe(url, min(connect_timeout, PROBE_TIMEOUT)))
        self.failures = Failures(self.outage)
        self._writes: WriteBatcher | None = None

    @property
    def errors(self) -> int:
        """Operations that failed since this store was made (for the metrics)."""
        return self.failures.count

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the job store is not open: call open() first")
        return self._pool

    @property
    def db(self) -> PgDb:
        if self._db is None:
            raise RuntimeError("the job store is not open: call open() first")
        return self._db

    async def open(self, *, check_schema: bool = True) -> None:
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(
            self.url,
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs=_configure_kwargs(self.connect_timeout),
            open=False,
            # How long a caller waits for a connection: a down server answers StoreUnavailable after this, never
            # a hang. check: each connection is tried (an empty query) before it is handed out, so those a
            # restart broke are dropped and replaced instead of failing the first statement on them.
            timeout=self.acquire_timeout,
            check=AsyncConnectionPool.check_connection,
            # While the server is down the pool retries its connections with a doubling pause, uncapped, for
            # reconnect_timeout (default 300 s): after a 30 s outage the next try could be 30 s away. Giving up
            # after a few seconds instead bounds that: the next request then starts a fresh try at once.
            reconnect_timeout=self.acquire_timeout,
            name="aijobs",
            connection_class=_watched_connection_class(self.outage),  # a failed connect: requests fail at once
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except Exception as exc:  # PoolTimeout: the pool has been retrying a connection that keeps failing
            await pool.close()
            await self.outage.close()  # its probe: the store is not open, nothing is to be reconnected
            raise StoreOpenError(
                f"cannot connect to PostgreSQL at {_shown(self.url)} within {self.connect_timeout:.0f} s ({exc}): "
                "check DATABASE_URL and that the server is up and accepts this user"
            ) from None
        self._pool, self._db = pool, PgDb(pool, self.failures)
        self._writes = WriteBatcher(
            self._rows,
            lambda: _connection(pool, self.failures),
            _unreachable,
            statement_timeout=self.statement_timeout,
        )
        if check_schema:
            try:
                await self.check_schema()
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        await self.outage.close()
        if self._writes is not None:
            await self._writes.close()
            self._writes = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = self._db = None

    # --- schema -----------------------------------------------------------------------------------------

    async def schema_version(self) -> int:
        async with _connection(self.pool, self.failures) as conn:
            cur = await conn.execute("SELECT to_regclass('aijobs_schema') IS NOT NULL")
            row = await cur.fetchone()
            if not row[0]:
                return 0
            cur = await conn.execute("SELECT version FROM aijobs_schema")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def check_schema(self) -> None:
        version = await self.schema_version()
        if version != len(MIGRATIONS):
            raise SchemaMismatch(version, len(MIGRATIONS))

    async def migrate(self) -> tuple[int, int]:
        """Apply pending migrations in one transaction under an advisory lock, so hosts starting together take
        turns (the second finds nothing to do). Transaction-scoped lock: safe behind PgBouncer. Returns
        (version before, version after)."""
        async with _connection(self.pool, self.failures) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_MIGRATE,))
            await conn.execute("CREATE TABLE IF NOT EXISTS aijobs_schema (version INTEGER NOT NULL)")
            cur = await conn.execute("SELECT version FROM aijobs_schema FOR UPDATE")
            row = await cur.fetchone()
            before = int(row[0]) if row else 0
            if row is None:
                await conn.execute("INSERT INTO aijobs_schema (version) VALUES (0)")
            if before > len(MIGRATIONS):
                raise SchemaMismatch(before, len(MIGRATIONS))
            for number, sql in enumerate(MIGRATIONS[before:], start=before + 1):
                await conn.execute(sql)
                await conn.execute("UPDATE aijobs_schema SET version = %s", (number,))
        return before, len(MIGRATIONS)

    # --- helpers ----------------------------------------------------------------------------------------

    async def ping(self) -> None:
        async with _connection(self.pool, self.failures) as conn:
            await conn.execute("SELECT 1")

    async def _rows(self, sql: str, params: Any) -> list[Any]:
        """One statement, its own transaction. A deadlock (two statements taking the counter rows their triggers
        update, user_active and queue_count, in different orders: a bulk expiry beside a submit) rolled the whole
        statement back, so it is simply run again."""
        import psycopg

        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                async with _connection(self.pool, self.failures) as conn:
                    cur = await conn.execute(sql, params)
                    return await cur.fetchall()
            except psycopg.errors.DeadlockDetected:
                if attempt == DEADLOCK_RETRIES:
                    raise
                log.info("deadlock, statement run again", extra={"attempt": attempt + 1})
        raise AssertionError("unreachable")

    async def _write(self, sql: Statement, params: Any) -> list[Any]:
        """A one-row write on the job path: group-committed with the writes that arrive while one is in flight
        (pg_batch.py), each keeping its own result."""
        if self._writes is None:
            raise RuntimeError("the job store is not open: call open() first")
        return await self._writes.rows(sql, params)

    async def _one(self, sql: str, params: Any) -> Job | None:
        rows = await self._rows(sql, params)
        return _row_to_job(rows[0]) if rows else None

    async def _write_one(self, sql: Statement, params: Any) -> Job | None:
        rows = await self._write(sql, params)
        return _row_to_job(rows[0]) if rows else None

    async def _many(self, sql: str, params: Any) -> list[Job]:
        return [_row_to_job(r) for r in await self._rows(sql, params)]

    # --- the job store --------------------------------------------------------------------------------

    async def create(self, job: Job) -> Job:
        await self.create_ranked(job)
        return job

    async def create_ranked(self, job: Job, *, max_active: int | None = None) -> int | None:
        job.seq = 1
        values: dict[str, Any] = {
            "id": job.id,
            "user_id": job.user_id,
            "type": job.type,
            "status": job.status.value,
            "priority": job.priority,
            "input": dumps(job.input),
            "result": None,
            "error": None,
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "percentage": job.percentage,
            "current_step": job.current_step,
            "partial_output": None,
            "model": job.model,
            "usage": None,
            "lease_token": None,
            "worker_id": None,
            "seq": job.seq,
            "created_at": job.created_at,
            "started_at": None,
            "completed_at": None,
            "updated_at": job.updated_at,
            "lease_expires_at": None,
            "cancel_requested": False,
            "ready_at": job.ready_at if job.ready_at is not None else job.created_at,
            "expires_at": job.expires_at,
            "history": None,
            "model_index": 0,
            "retry_of": job.retry_of,
            "running_on": None,
            "own_provider_key": job.own_provider_key,
            "webhook": dumps(job.webhook) if job.webhook else None,
            "request_id": job.request_id,
            "traceparent": job.traceparent,
            "cap": max_active,
        }
        rows = await self._write(_INSERT, values)
        return int(rows[0][0]) if rows else None

    async def get(self, job_id: str) -> Job | None:
        return await self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s", (job_id,))

    async def get_owned(self, job_id: str, user_id: str) -> Job | None:
        return await self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s AND user_id = %s", (job_id, user_id))

    async def get_owned_ranked(self, job_id: str, user_id: str) -> tuple[Job, int | None] | None:
        rows = await self._rows(
            f"SELECT {_COLUMNS}, {_AHEAD} FROM jobs WHERE id = %s AND user_id = %s", (job_id, user_id)
        )
        if not rows:
            return None
        ahead = rows[0][len(_NAMES)]
        return _row_to_job(rows[0]), (int(ahead) if ahead is not None else None)

    async def queued_ranked(self, owned: dict[str, str]) -> dict[str, tuple[Job, int]]:
        if not owned:
            return {}
        rows = await self._rows(
            f"SELECT {_COLUMNS}, r.ahead FROM jobs JOIN (SELECT id AS rid, RANK() OVER (ORDER BY {queue_key()}) - 1 "
            "AS ahead FROM jobs WHERE status = 'queued') AS r ON r.rid = jobs.id WHERE jobs.id = ANY(%s)",
            (list(owned),),
        )
        return owned_ranked(rows, owned)

    async def claim(
        self,
        job_id: str,
        *,
        worker_id: str,
        token: str,
        ticket: int | None = None,
        lease_seconds: float = 30.0,
        steps: str | None = None,
    ) -> Job | None:
        """As SQLiteJobStore.claim: only a queued, uncancelled job with this ticket; `running_on` from `steps`."""
        t = now()
        rows = await self._write(
            _CLAIM,
            {
                "token": token,
                "worker": worker_id,
                "until": t + lease_seconds,
                "t": t,
                "steps": steps,
                "id": job_id,
                "ticket": ticket,
            },
        )
        if not rows:
            return None
        job = _row_to_job(rows[0])
        job.sealed_key = bool(rows[0][len(_NAMES)])
        return job

    async def progress(
        self,
        job_id: str,
        token: str,
        *,
        percentage: float,
        step: str | None,
        partial_output: str | None = None,
        append_output: str | None = None,
        seq: int | None = None,
    ) -> int | None:
        rows = await self._write(
            _PROGRESS,
            {
                "pct": percentage,
                "step": step,
                "append": append_output,
                "partial": partial_output,
                "seq": seq,
                "t": now(),
                "id": job_id,
                "token": token,
            },
        )
        return int(rows[0][0]) if rows else None

    async def finish(
        self,
        job_id: str,
        token: str,
        *,
        status: JobStatus,
        result: Any = None,
        error: JobError | None = None,
        model: str | None = None,
        usage: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
        append_output: str | None = None,
        seq: int | None = None,
    ) -> Job | None:
        return await self._write_one(
            _FINISH,
            {
                "status": status.value,
                "result": dumps(result) if result is not None else None,
                "error": dumps(error.to_dict()) if error else None,
                "model": model,
                "usage": dumps(usage) if usage else None,
                "step": FINAL_STEPS.get(status),  # a finished job no longer says "Polishing titles…"
                "t": now(),
                "rec": dumps(record) if record else None,
                "id": job_id,
                "token": token,
                "append": append_output,
                "seq": seq,
            },
        )

    async def requeue(
        self,
        job_id: str,
        token: str,
        *,
        error: JobError | None,
        step: str | None,
        delay: float = 0.0,
        refund: bool = False,
        next_model: int = 0,
        record: dict[str, Any] | None = None,
    ) -> Job | None:
        """As SQLiteJobStore.requeue (a job flagged for cancel ends `cancelled`)."""
        t = now()
        attempts_sql = "attempts - 1" if refund else ("0" if next_model else "attempts")
        return await self._write_one(
            "UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, "
            "completed_at = CASE WHEN cancel_requested THEN %(t)s ELSE NULL END, "
            "lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, error = %(error)s, "
            f"current_step = %(step)s, updated_at = %(t)s, ready_at = %(ready)s, seq = seq + 1, "
            f"attempts = {attempts_sql}, model_index = model_index + %(next)s, {_HISTORY_APPEND} "
            f"WHERE id = %(id)s AND lease_token = %(token)s AND status = 'processing' RETURNING {_COLUMNS}",
            {
                "t": t,
                "error": dumps(error.to_dict()) if error else None,
                "step": step,
                "ready": t + delay,
                "next": int(next_model),
                "rec": dumps(record) if record else None,
                "id": job_id,
                "token": token,
            },
        )

    async def active_for_user(self, user_id: str) -> list[Job]:
        """One user's queued and processing jobs, oldest first (the jobs_user_status index)."""
        return await self._many(
            f"SELECT {_COLUMNS} FROM jobs WHERE user_id = %s AND status IN ('queued', 'processing') "
            "ORDER BY created_at",
            (user_id,),
        )

    # --- the job lifecycle: leases, cancel, recovery, expiry, queue estimates, idempotency -------------

    async def renew(self, job_id: str, token: str, *, lease_seconds: float) -> Job | None:
        return await self._write_one(_RENEW, {"until": now() + lease_seconds, "id": job_id, "token": token})

    async def cancel_queued(self, job_id: str, user_id: str) -> Job | None:
        t = now()
        return await self._write_one(_CANCEL_QUEUED, (t, t, job_id, user_id))

    async def request_cancel(self, job_id: str, user_id: str) -> Job | None:
        return await self._write_one(_REQUEST_CANCEL, (job_id, user_id))

    async def take_over(
        self,
        job_id: str,
        token: str | None,
        *,
        status: JobStatus,
        error: JobError | None,
        step: str,
        record: dict[str, Any] | None,
    ) -> Job | None:
        t = now()
        return await self._write_one(
            "UPDATE jobs SET status = %(status)s, lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, "
            "error = %(error)s, current_step = %(step)s, updated_at = %(t)s, ready_at = %(t)s, "
            f"completed_at = CASE WHEN %(ends)s THEN %(t)s ELSE NULL END, seq = seq + {UNSTORED_EVENTS_MAX + 1}, "
            f"{_HISTORY_APPEND} "
            "WHERE id = %(id)s AND status = 'processing' AND lease_token IS NOT DISTINCT FROM %(token)s::text "
            f"AND lease_expires_at < %(t)s RETURNING {_COLUMNS}",
            {
                "status": status.value,
                "error": dumps(error.to_dict()) if error else None,
                "step": step,
                "t": t,
                "ends": status is not JobStatus.QUEUED,
                "rec": dumps(record) if record else None,
                "id": job_id,
                "token": token,
            },
        )

    async def touch_queued(self, job_id: str, seq: int, *, step: str) -> Job | None:
        return await self._write_one(_TOUCH_QUEUED, (step, now(), job_id, seq))

    async def expire_overdue(self) -> list[Job]:
        t = now()
        return await self._many(_EXPIRE_OVERDUE, (EXPIRED_ERROR, t, t, t))

    async def purge(self, *, completed_before: float, others_before: float, idempotency_before: float) -> list[str]:
        rows = await self._rows(_PURGE_JOBS, (completed_before, others_before))
        async with _connection(self.pool, self.failures) as conn:
            await conn.execute(_PURGE_KEYS, (idempotency_before,))
        return [r[0] for r in rows]

    async def delete_finished(self, job_id: str, user_id: str) -> bool:
        rows = await self._rows(_DELETE_FINISHED, (job_id, user_id))
        if rows:
            async with _connection(self.pool, self.failures) as conn:
                await conn.execute(_DELETE_KEYS_OF_JOB, (user_id, job_id))
        return bool(rows)

    async def queue_ahead(self, job: Job) -> int:
        from ..queue import PRIORITY_STEP_SECONDS

        assert PRIORITY_STEP_SECONDS == 10.0, "a new migration must redefine pg_migrations.QUEUE_AT with the new step"
        rows = await self._rows(
            f"SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND {queue_key()} < %s::float8", (queue_score(job),)
        )
        return int(rows[0][0]) if rows else 0

    async def idempotency_put(self, user_id: str, key: str, request_hash: str, job_id: str, *, since: float) -> bool:
        """Reserve the key for this job; False if another request holds it (a stale one is replaced)."""
        async with _connection(self.pool, self.failures) as conn:
            await conn.execute(_IDEMPOTENCY_DROP_STALE, (user_id, key, since))
            cur = await conn.execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, job_id, created_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (user_id, key, request_hash, job_id, now()),
            )
            return cur.rowcount == 1
