"""What both stores do alike, written once: statements with `?` placeholders, Python-side decisions, and the
JobStore methods that run the same way on either store's `db`.

The methods (SharedMethods) are reads and a small delete off the job path, where the `db` interface costs nothing
a store's own path would save. A statement that needs its store's own path stays in that store's method but takes
its SQL from here: the PostgreSQL store sends its single-row writes through its group-commit batcher and retries
the writes that move the triggers' counters on a deadlock, and converts the placeholders once, at import
(postgres.placeholders).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..models import Job, dumps, now
from .rows import _COLUMNS, _NAMES, _row_to_job

# A job that has ended (admin.FINISHED lists the same statuses for the operator's filters).
IS_FINISHED = "status IN ('completed','failed','cancelled','expired')"

CANCEL_QUEUED = (
    "UPDATE jobs SET status = 'cancelled', cancel_requested = TRUE, completed_at = ?, updated_at = ?, "
    "seq = seq + 1, current_step = 'Cancelled', error = NULL "
    f"WHERE id = ? AND user_id = ? AND status = 'queued' RETURNING {_COLUMNS}"
)
REQUEST_CANCEL = (
    "UPDATE jobs SET cancel_requested = TRUE "
    f"WHERE id = ? AND user_id = ? AND status = 'processing' RETURNING {_COLUMNS}"
)
TOUCH_QUEUED = (
    "UPDATE jobs SET seq = seq + 1, current_step = ?, updated_at = ? "
    f"WHERE id = ? AND status = 'queued' AND seq = ? RETURNING {_COLUMNS}"
)
# The error an expired job ends with, and the statement that ends them: params (EXPIRED_ERROR, t, t, t).
EXPIRED_ERROR = dumps(
    {
        "message": "No worker started this job within its maximum wait: check that a worker is running "
        "(`aijobs worker`), then retry the job.",
        "code": "expired",
        "retryable": False,
    }
)
EXPIRE_OVERDUE = (
    "UPDATE jobs SET status = 'expired', error = ?, current_step = 'Expired', completed_at = ?, "
    "updated_at = ?, seq = seq + 1 "
    f"WHERE status = 'queued' AND started_at IS NULL AND expires_at < ? RETURNING {_COLUMNS}"
)
PURGE_JOBS = (
    "DELETE FROM jobs WHERE (status = 'completed' AND completed_at < ?) "
    "OR (status IN ('failed', 'cancelled', 'expired') AND completed_at < ?) RETURNING id"
)
PURGE_KEYS = "DELETE FROM idempotency_keys WHERE created_at < ?"
DELETE_FINISHED = f"DELETE FROM jobs WHERE id = ? AND user_id = ? AND {IS_FINISHED} RETURNING id"
DELETE_KEYS_OF_JOB = "DELETE FROM idempotency_keys WHERE user_id = ? AND job_id = ?"
IDEMPOTENCY_DROP_STALE = "DELETE FROM idempotency_keys WHERE user_id = ? AND key = ? AND created_at < ?"

_AHEAD_AT = len(_NAMES)  # where queued_ranked's rows hold the count of jobs ahead, after _COLUMNS


def queue_score(job: Job) -> float:
    """A queued job's place in the queue, as queue.py scores it: ready time minus the priority head start, except a
    deferred retry (ready_at set past its requeue time), which counts from its due time. Both stores' queue order
    expressions compute the same number in SQL, with 10.0 for the step (they assert it)."""
    from ..queue import PRIORITY_STEP_SECONDS

    deferred = job.ready_at is not None and job.ready_at > job.updated_at
    return (job.ready_at or job.created_at) - (0.0 if deferred else job.priority * PRIORITY_STEP_SECONDS)


def owned_ranked(rows: list[Any], owned: dict[str, str]) -> dict[str, tuple[Job, int]]:
    """queued_ranked's answer from its rows (_COLUMNS, then the jobs ahead): only the jobs `owned` gives to their
    owner, so another user's job id in the list reads as not queued."""
    out: dict[str, tuple[Job, int]] = {}
    for row in rows:
        job = _row_to_job(row)
        if owned.get(job.id) == job.user_id:
            out[job.id] = (job, int(row[_AHEAD_AT]))
    return out


class _HasDb(Protocol):
    @property
    def db(self) -> Any: ...


async def _jobs(db: Any, sql: str, params: tuple[Any, ...]) -> list[Job]:
    async with db.execute(sql, params) as cur:
        return [_row_to_job(r) for r in await cur.fetchall()]


class SharedMethods:
    """JobStore methods both stores run on their `db` (JobStore.db: `?` placeholders, rows read by position)."""

    async def list_active(self: _HasDb) -> list[Job]:
        return await _jobs(
            self.db, f"SELECT {_COLUMNS} FROM jobs WHERE status IN ('queued', 'processing') ORDER BY created_at", ()
        )

    async def expired_leases(self: _HasDb) -> list[Job]:
        return await _jobs(
            self.db, f"SELECT {_COLUMNS} FROM jobs WHERE status = 'processing' AND lease_expires_at < ?", (now(),)
        )

    async def list_queued(self: _HasDb, *, older_than: float) -> list[Job]:
        return await _jobs(
            self.db,
            f"SELECT {_COLUMNS} FROM jobs WHERE status = 'queued' AND updated_at < ? ORDER BY created_at",
            (older_than,),
        )

    async def running(self: _HasDb) -> list[Job]:
        return await _jobs(self.db, f"SELECT {_COLUMNS} FROM jobs WHERE status = 'processing'", ())

    async def finished_before(self: _HasDb, before: float, *, limit: int = 1000) -> list[str]:
        async with self.db.execute(
            f"SELECT id FROM jobs WHERE completed_at < ? AND {IS_FINISHED} ORDER BY completed_at DESC LIMIT ?",
            (before, limit),
        ) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def finished_seqs(
        self: _HasDb, since: float, until: float, *, limit: int = 5000
    ) -> list[tuple[str, str, int]]:
        async with self.db.execute(
            "SELECT id, user_id, seq FROM jobs WHERE completed_at >= ? AND completed_at < ? "
            f"AND {IS_FINISHED} ORDER BY completed_at LIMIT ?",
            (since, until, limit),
        ) as cur:
            return [(row[0], row[1], int(row[2])) for row in await cur.fetchall()]

    async def recent_durations(self: _HasDb, job_type: str, *, limit: int = 20) -> list[float]:
        """How long the last completed first-attempt runs of a type took, newest first."""
        async with self.db.execute(
            "SELECT completed_at - started_at FROM jobs WHERE type = ? AND status = 'completed' AND attempts = 1 "
            "ORDER BY completed_at DESC LIMIT ?",
            (job_type, limit),
        ) as cur:
            return [float(row[0]) for row in await cur.fetchall()]

    async def idempotency_get(self: _HasDb, user_id: str, key: str, *, since: float) -> tuple[str, str] | None:
        """(request hash, job id) for a key this user used since `since`."""
        async with self.db.execute(
            "SELECT request_hash, job_id FROM idempotency_keys WHERE user_id = ? AND key = ? AND created_at >= ?",
            (user_id, key, since),
        ) as cur:
            row = await cur.fetchone()
        return (row[0], row[1]) if row else None

    async def idempotency_release(self: _HasDb, user_id: str, key: str, job_id: str) -> None:
        """Free a key reserved for a job the store then refused, so the same request may be sent again."""
        await self.db.execute(
            "DELETE FROM idempotency_keys WHERE user_id = ? AND key = ? AND job_id = ?", (user_id, key, job_id)
        )
