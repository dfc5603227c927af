"""SQLite job store: WAL, one statement per change (group-committed by .connection), migrations at start."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..files import private_dir, private_file, tighten_file
from ..models import Job, JobError, JobStatus, dumps, now
from .base import FINAL_STEPS, UNSTORED_EVENTS_MAX, SchemaMismatch
from .connection import Connection
from .migrations import MIGRATIONS, statements
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

# How many queued jobs run before the row `jobs` under the priority rule (NULL unless it is queued). The order
# expression must match the jobs_queue_order index word for word for SQLite to use it (10.0 is
# queue.PRIORITY_STEP_SECONDS). Read with the row itself, so a poll or a submit needs no second statement.
# No `q.id != jobs.id`: the strict < already leaves the job itself out, and testing id (not in the index)
# would read every counted job's table row, which made the count ~2.5x slower.
# A queued job's place in the queue order (the jobs_queue_order index's expression, word for word).
_QUEUE_KEY = "(COALESCE(ready_at, created_at) - CASE WHEN ready_at > updated_at THEN 0 ELSE priority * 10.0 END)"
_AHEAD = (
    "CASE WHEN jobs.status = 'queued' THEN (SELECT COUNT(*) FROM jobs AS q WHERE q.status = 'queued' AND "
    "(COALESCE(q.ready_at, q.created_at) - CASE WHEN q.ready_at > q.updated_at THEN 0 ELSE q.priority * 10.0 END) < "
    "(COALESCE(jobs.ready_at, jobs.created_at) - CASE WHEN jobs.ready_at > jobs.updated_at THEN 0 "
    "ELSE jobs.priority * 10.0 END)) END"
)
# The same number for a row just inserted, from the other end: every queued job (queue_size, kept by the
# migration-6 triggers, which have counted the new one already) minus those queued at or after it (itself
# included). That tail is short for a new job (only lower-priority jobs of the last few seconds, or deferred
# ones), where counting the jobs ahead reads a slice of the index as long as the queue.
_AHEAD_OF_NEW = (
    "(SELECT queued FROM queue_size) - (SELECT COUNT(*) FROM jobs AS q WHERE q.status = 'queued' AND "
    "(COALESCE(q.ready_at, q.created_at) - CASE WHEN q.ready_at > q.updated_at THEN 0 ELSE q.priority * 10.0 END) >= "
    "(COALESCE(jobs.ready_at, jobs.created_at) - CASE WHEN jobs.ready_at > jobs.updated_at THEN 0 "
    "ELSE jobs.priority * 10.0 END))"
)
# The submit's insert (create_ranked), made once rather than formatted on every submission.
_CREATE_RANKED = (
    f"INSERT INTO jobs ({_COLUMNS}) SELECT {', '.join('?' * len(_NAMES))} "
    "WHERE ? IS NULL OR COALESCE((SELECT n FROM user_active WHERE user_id = ?), 0) < ? "
    f"RETURNING {_AHEAD_OF_NEW}"
)
# One user's active jobs: a search of the jobs_user_status index (migration 2). No ORDER BY: with one, SQLite walks
# jobs_user_created instead, every job the user ever had, to skip a sort of the few active ones (done in Python).
ACTIVE_FOR_USER = f"SELECT {_COLUMNS} FROM jobs WHERE user_id = ? AND status IN ('queued', 'processing')"
_HISTORY_APPEND = (
    "history = CASE WHEN ? IS NULL THEN history ELSE json_insert(COALESCE(history, '[]'), '$[#]', json(?)) END"
)


def _enable_wal(db: sqlite3.Connection, attempts: int = 200) -> None:
    """Switching to WAL takes an exclusive lock and ignores busy_timeout, so retry while a peer starts up."""
    for _ in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)  # on the store's own thread, not the event loop
    raise RuntimeError("could not switch the SQLite job store to WAL: another process holds it locked")


def _migrate(db: sqlite3.Connection) -> tuple[int, int]:
    """Apply pending migrations in one immediate transaction so concurrent starters don't race; refuse a schema
    newer than this code (a newer release migrated it)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("PRAGMA user_version").fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise SchemaMismatch(version, len(MIGRATIONS))
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements(sql):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={number}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return version, len(MIGRATIONS)


def _prepare(db: sqlite3.Connection) -> tuple[int, int]:
    _enable_wal(db)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return _migrate(db)


class SQLiteJobStore(SharedMethods):
    """Migrates itself on open: the embedded store of one machine (`scripts/dev`, tests) needs no separate step,
    and BEGIN IMMEDIATE already makes concurrent starters take turns. `aijobs migrate` runs the same code."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: Connection | None = None
        self._migrated = (0, 0)  # the schema versions the last open() found and left

    @property
    def db(self) -> Connection:
        if self._db is None:
            raise RuntimeError("the job store is not open: call open() first")
        return self._db

    async def open(self) -> None:
        if not self.path.parent.exists():
            private_dir(self.path.parent)
        # 0600 before SQLite opens it: SQLite gives the -wal and -shm files it creates the database file's mode.
        private_file(self.path)
        for old in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):  # left readable by an older version
            tighten_file(old)
        db = Connection(self.path, busy_timeout_ms=int(self.busy_timeout * 1000))  # first: a peer may be migrating
        await db.open()
        try:
            self._migrated = await db.call(_prepare)
        except BaseException:
            await db.close()
            raise
        self._db = db

    @property
    def errors(self) -> int:
        """Statements that failed since open (for the metrics)."""
        return self._db.errors if self._db is not None else 0

    async def migrate(self) -> tuple[int, int]:
        """open() already migrated: the versions it found and left (a no-op pass confirms under the lock)."""
        _, after = await self.db.call(_migrate)
        found, self._migrated = self._migrated[0], (after, after)
        return found, after

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def ping(self) -> None:
        async with self.db.execute("SELECT 1") as cur:
            await cur.fetchone()

    async def _one(self, sql: str, params: tuple[Any, ...]) -> Job | None:
        async with self.db.execute(sql, params) as cur:
            row = await cur.fetchone()
        return _row_to_job(row) if row else None

    async def create(self, job: Job) -> Job:
        await self.create_ranked(job)
        return job

    async def create_ranked(self, job: Job, *, max_active: int | None = None) -> int | None:
        """create(), answering in the same statement how many queued jobs run before the new one.

        With `max_active`, the job is only inserted while its user has fewer queued + processing jobs than that
        (None: refused, nothing written). One statement, so concurrent submissions can't all slip under the cap.
        """
        job.seq = 1
        async with self.db.execute(
            _CREATE_RANKED,
            (
                job.id,
                job.user_id,
                job.type,
                job.status.value,
                job.priority,
                dumps(job.input),
                None,
                None,
                job.attempts,
                job.max_attempts,
                job.percentage,
                job.current_step,
                None,
                job.model,
                None,
                None,
                None,
                job.seq,
                job.created_at,
                None,
                None,
                job.updated_at,
                None,
                0,
                job.ready_at if job.ready_at is not None else job.created_at,
                job.expires_at,
                None,
                0,
                job.retry_of,
                None,
                int(job.own_provider_key),
                dumps(job.webhook) if job.webhook else None,
                job.request_id,
                job.traceparent,
                max_active,
                job.user_id,
                max_active,
            ),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row is not None else None

    async def get(self, job_id: str) -> Job | None:
        return await self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))

    async def get_owned(self, job_id: str, user_id: str) -> Job | None:
        return await self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND user_id = ?", (job_id, user_id))

    async def get_owned_ranked(self, job_id: str, user_id: str) -> tuple[Job, int | None] | None:
        """get_owned() with the job's queue position (None unless queued), in one statement."""
        async with self.db.execute(
            f"SELECT {_COLUMNS}, {_AHEAD} AS ahead FROM jobs WHERE id = ? AND user_id = ?", (job_id, user_id)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return _row_to_job(row), (int(row["ahead"]) if row["ahead"] is not None else None)

    async def queued_ranked(self, owned: dict[str, str]) -> dict[str, tuple[Job, int]]:
        if not owned:
            return {}
        # RANK() - 1 counts the rows with a strictly smaller key: the same number as _AHEAD. The ids go in as one
        # JSON array, so any number of them is one statement and one ranking of the queue.
        async with self.db.execute(
            f"SELECT {_COLUMNS}, r.ahead AS ahead FROM jobs JOIN (SELECT id AS rid, RANK() OVER (ORDER BY "
            f"{_QUEUE_KEY}) - 1 AS ahead FROM jobs WHERE status = 'queued') AS r ON r.rid = jobs.id "
            "WHERE jobs.id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(owned)),),
        ) as cur:
            return owned_ranked(await cur.fetchall(), owned)

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
        """Only a queued, uncancelled job whose queue ticket (its seq when queued) matches is taken.

        `steps` (JSON: type -> one {"provider", "model"} per chain step) sets `running_on` to the job's step, picked
        by its type and model_index (past the end: the last step, as the runner picks), in this same write."""
        t = now()
        # at once on this thread when the writer is idle (Connection.execute_now): a job's start waits for no thread
        async with self.db.execute_now(
            "UPDATE jobs SET status = 'processing', attempts = attempts + 1, lease_token = ?, worker_id = ?, "
            "lease_expires_at = ?, started_at = COALESCE(started_at, ?), updated_at = ?, seq = seq + 1, "
            "error = NULL, current_step = 'Starting…', percentage = 0, partial_output = NULL, "
            # json_extract, not `->`: the operator needs SQLite 3.38, and Pythons linked to an older one exist.
            # `since`: this attempt's start (started_at is the first attempt's), for the sweeper's duration.
            "running_on = json_set(json_extract(?, '$.\"' || type || '\"[' || "
            "MIN(model_index, json_array_length(?, '$.\"' || type || '\"') - 1) || ']'), '$.since', ?) "
            "WHERE id = ? AND status = 'queued' AND cancel_requested = 0 AND (? IS NULL OR seq = ?) "
            f"RETURNING {_COLUMNS}, EXISTS (SELECT 1 FROM job_secrets WHERE job_id = jobs.id) AS sealed_key",
            (token, worker_id, t + lease_seconds, t, t, steps, steps, t, job_id, ticket, ticket),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        job = _row_to_job(row)
        job.sealed_key = bool(row[len(_NAMES)])  # spares the worker a read for the (usual) job without one
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
        async with self.db.execute(
            "UPDATE jobs SET percentage = ?, current_step = COALESCE(?, current_step), "
            "partial_output = CASE WHEN ? IS NOT NULL THEN COALESCE(partial_output, '') || ? "
            "ELSE COALESCE(?, partial_output) END, updated_at = ?, seq = MAX(seq + 1, COALESCE(?, 0)) "
            "WHERE id = ? AND lease_token = ? AND status = 'processing' RETURNING seq",
            (percentage, step, append_output, append_output, partial_output, now(), seq, job_id, token),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else None

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
        t = now()
        percentage_sql = "100" if status is JobStatus.COMPLETED else "percentage"
        step = FINAL_STEPS.get(status)  # a finished job no longer says "Polishing titles…"
        rec = dumps(record) if record else None
        return await self._one(
            f"UPDATE jobs SET status = ?, result = ?, error = ?, model = COALESCE(?, model), "
            f"usage = COALESCE(?, usage), percentage = {percentage_sql}, current_step = COALESCE(?, current_step), "
            "lease_token = NULL, partial_output = CASE WHEN ? IS NOT NULL THEN COALESCE(partial_output, '') || ? "
            "ELSE partial_output END, "
            "lease_expires_at = NULL, completed_at = ?, updated_at = ?, seq = MAX(seq, COALESCE(?, 0)) + 1, "
            f"{_HISTORY_APPEND} "
            f"WHERE id = ? AND lease_token = ? AND status = 'processing' RETURNING {_COLUMNS}",
            (
                status.value,
                dumps(result) if result is not None else None,
                dumps(error.to_dict()) if error else None,
                model,
                dumps(usage) if usage else None,
                step,
                append_output,
                append_output,
                t,
                t,
                seq,
                rec,
                rec,
                job_id,
                token,
            ),
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
        """Back to the queue: `refund` gives the attempt back (shutdown), `next_model` moves that many steps down the
        fallback chain (with fresh attempts).

        A job flagged for cancel ends `cancelled` instead, since no claim would ever take it again.
        """
        t = now()
        rec = dumps(record) if record else None
        attempts_sql = "attempts - 1" if refund else ("0" if next_model else "attempts")
        return await self._one(
            "UPDATE jobs SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END, "
            "completed_at = CASE WHEN cancel_requested = 1 THEN ? ELSE NULL END, "
            "lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, "
            f"error = ?, current_step = ?, updated_at = ?, ready_at = ?, seq = seq + 1, attempts = {attempts_sql}, "
            f"model_index = model_index + ?, {_HISTORY_APPEND} "
            f"WHERE id = ? AND lease_token = ? AND status = 'processing' RETURNING {_COLUMNS}",
            (
                t,
                dumps(error.to_dict()) if error else None,
                step,
                t,
                t + delay,
                int(next_model),
                rec,
                rec,
                job_id,
                token,
            ),
        )

    async def active_for_user(self, user_id: str) -> list[Job]:
        return sorted(await self._many(ACTIVE_FOR_USER, (user_id,)), key=lambda job: job.created_at)

    # --- the job lifecycle: leases, cancel, recovery, expiry, queue estimates, idempotency -------------

    async def renew(self, job_id: str, token: str, *, lease_seconds: float) -> Job | None:
        """Extend this run's lease; None once the run lost it. Not an event: seq stays."""
        return await self._one(
            f"UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? AND status = 'processing' "
            f"RETURNING {_COLUMNS}",
            (now() + lease_seconds, job_id, token),
        )

    async def cancel_queued(self, job_id: str, user_id: str) -> Job | None:
        """A queued job is cancelled on the spot, so no worker can claim it afterwards."""
        t = now()
        return await self._one(CANCEL_QUEUED, (t, t, job_id, user_id))

    async def request_cancel(self, job_id: str, user_id: str) -> Job | None:
        """Flag a running job; its owner sees the flag (control message or heartbeat) and stops."""
        return await self._one(REQUEST_CANCEL, (job_id, user_id))

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
        """Revoke a lapsed lease (only if still lapsed and unchanged): back to queued, or a terminal state. The seq
        jumps past any event the revoked run announced since its last checkpoint (see JobStore)."""
        t = now()
        rec = dumps(record) if record else None
        return await self._one(
            "UPDATE jobs SET status = ?, lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, error = ?, "
            "current_step = ?, updated_at = ?, ready_at = ?, completed_at = CASE WHEN ? THEN ? ELSE NULL END, "
            f"seq = seq + {UNSTORED_EVENTS_MAX + 1}, {_HISTORY_APPEND} "
            "WHERE id = ? AND status = 'processing' AND lease_token IS ? AND lease_expires_at < ? "
            f"RETURNING {_COLUMNS}",
            (
                status.value,
                dumps(error.to_dict()) if error else None,
                step,
                t,
                t,
                status is not JobStatus.QUEUED,
                t,
                rec,
                rec,
                job_id,
                token,
                t,
            ),
        )

    async def touch_queued(self, job_id: str, seq: int, *, step: str) -> Job | None:
        """Give a queued job a new queue ticket (its seq), so a lost or stale queue entry can be replaced."""
        return await self._one(TOUCH_QUEUED, (step, now(), job_id, seq))

    async def expire_overdue(self) -> list[Job]:
        """Queued jobs never started within their maximum wait become `expired`."""
        t = now()
        return await self._many(EXPIRE_OVERDUE, (EXPIRED_ERROR, t, t, t))

    async def purge(self, *, completed_before: float, others_before: float, idempotency_before: float) -> list[str]:
        """Delete finished jobs past their retention (failed ones are kept longer); returns their ids."""
        async with self.db.execute(PURGE_JOBS, (completed_before, others_before)) as cur:
            ids = [row[0] for row in await cur.fetchall()]
        await self.db.execute(PURGE_KEYS, (idempotency_before,))
        return ids

    async def delete_finished(self, job_id: str, user_id: str) -> bool:
        async with self.db.execute(DELETE_FINISHED, (job_id, user_id)) as cur:
            gone = bool(await cur.fetchall())
        if gone:
            await self.db.execute(DELETE_KEYS_OF_JOB, (user_id, job_id))
        return gone

    async def queue_ahead(self, job: Job) -> int:
        """Queued jobs that run before this one (shared.queue_score)."""
        from ..queue import PRIORITY_STEP_SECONDS

        # The expression must match the jobs_queue_order index (and _AHEAD) word for word for SQLite to use it.
        assert PRIORITY_STEP_SECONDS == 10.0, "update the jobs_queue_order index and _AHEAD with the new step"
        async with self.db.execute(
            f"SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND {_QUEUE_KEY} < ?",
            (queue_score(job),),  # the strict < leaves the job itself out (see _AHEAD)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def idempotency_put(self, user_id: str, key: str, request_hash: str, job_id: str, *, since: float) -> bool:
        """Reserve the key for this job; False if another request holds it (a stale one is replaced)."""
        await self.db.execute(IDEMPOTENCY_DROP_STALE, (user_id, key, since))
        async with self.db.execute(
            "INSERT OR IGNORE INTO idempotency_keys (user_id, key, request_hash, job_id, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (user_id, key, request_hash, job_id, now()),
        ) as cur:
            return cur.rowcount == 1

    async def _many(self, sql: str, params: tuple[Any, ...]) -> list[Job]:
        async with self.db.execute(sql, params) as cur:
            rows = await cur.fetchall()
        return [_row_to_job(r) for r in rows]
