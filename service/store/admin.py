"""What an operator sees and does across every user's jobs (the /admin page): never reached from the user API.

queries.py answers users about their own jobs (every statement there has `user_id = ?`); this module is the one place
that reads and deletes across users, and keeps the record of what operators did. Shared by both stores, like
users.py: statements on `store.db` with `?` placeholders; the one expression that differs (the minute a time falls
in) is picked by `store.dialect`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..models import Job, dumps, now
from .base import JobStore
from .rows import _COLUMNS, _NAMES, _row_to_job

FINISHED = ("completed", "failed", "cancelled", "expired")
ACTIONS = ("retry", "cancel", "purge")
PURGE_BATCH = 500  # jobs deleted per statement: a big purge never holds SQLite's write lock for long
# Each job row with its owner's name (a subquery, not a join: _COLUMNS names its columns unqualified).
_WITH_OWNER = f"{_COLUMNS}, (SELECT name FROM users WHERE users.id = jobs.user_id) AS owner_name"


@dataclass(frozen=True, slots=True)
class OwnedJob:
    job: Job
    owner: str | None  # the owner's user name (None: no such user any more)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    priority: int
    queued: int
    deferred: int  # retries backing off: queued, but not to be started before their ready time
    oldest_created_at: float


@dataclass(frozen=True, slots=True)
class MinuteTiming:
    """Durations of the jobs of one minute (`minute`: unix seconds // 60): how many, their mean and their 95th
    percentile (nearest rank: the smallest duration at least 95% of them do not exceed)."""

    minute: int
    count: int
    average: float
    p95: float


@dataclass(frozen=True, slots=True)
class PurgeFilter:
    """Finished jobs to delete: those that ended before `finished_before`, narrowed by status, type and owner."""

    finished_before: float
    statuses: tuple[str, ...] = FINISHED
    types: tuple[str, ...] = ()
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class ActionRecord:
    id: str
    acted_at: float
    operator_id: str
    operator_name: str
    action: str
    job_id: str | None
    job_user_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)


def _owned(row: Any) -> OwnedJob:
    return OwnedJob(_row_to_job(row), row[len(_NAMES)])


def _marks(values: tuple[Any, ...] | list[Any]) -> str:
    return ", ".join("?" * len(values))


class AdminQueries:
    """Every user's jobs, as the operator page shows them, and the purge."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def _all(self, sql: str, params: tuple[Any, ...] | list[Any]) -> list[Any]:
        async with self.store.db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    def _minute(self, column: str) -> str:
        """The minute (unix seconds // 60) a time falls in. SQLite's CAST truncates, which is the floor for the
        positive times here; PostgreSQL's rounds, so it floors first."""
        if self.store.dialect == "postgres":
            return f"CAST(FLOOR({column} / 60) AS BIGINT)"
        return f"CAST({column} / 60 AS INTEGER)"

    def _by_time(self, column: str) -> str:
        """`column` in a term SQLite must not pick an index by: a unary + (SQLite's own idiom), so the time range
        beside it (the last hour, the newest few) reads jobs_completed_at instead of every finished job of that
        status. PostgreSQL's planner has statistics to choose with (and no + for text)."""
        return column if self.store.dialect == "postgres" else f"+{column}"

    async def queue_depth(self, at: float | None = None) -> list[QueueDepth]:
        """Queued jobs by priority, highest (first to run) first."""
        rows = await self._all(
            "SELECT priority, COUNT(*), SUM(CASE WHEN ready_at > ? THEN 1 ELSE 0 END), MIN(created_at) "
            "FROM jobs WHERE status = 'queued' GROUP BY priority ORDER BY priority DESC",
            (now() if at is None else at,),
        )
        return [QueueDepth(int(r[0]), int(r[1]), int(r[2] or 0), float(r[3])) for r in rows]

    async def running(self, *, limit: int = 100) -> tuple[list[OwnedJob], int]:
        """The longest-running processing jobs first (at most `limit`), and how many there are in all."""
        rows = await self._all(
            f"SELECT {_WITH_OWNER} FROM jobs WHERE status = 'processing' ORDER BY started_at, id LIMIT ?", (limit,)
        )
        total = await self._all("SELECT COUNT(*) FROM jobs WHERE status = 'processing'", ())
        return [_owned(r) for r in rows], int(total[0][0])

    async def busy_slots(self) -> dict[str, int]:
        """Processing jobs per worker id: the slots each worker has in use, as the store sees them."""
        rows = await self._all(
            "SELECT worker_id, COUNT(*) FROM jobs WHERE status = 'processing' AND worker_id IS NOT NULL "
            "GROUP BY worker_id",
            (),
        )
        return {r[0]: int(r[1]) for r in rows}

    async def finished(self, statuses: tuple[str, ...], *, limit: int = 50) -> list[OwnedJob]:
        """The latest jobs that ended in one of `statuses`, newest first."""
        rows = await self._all(
            f"SELECT {_WITH_OWNER} FROM jobs WHERE {self._by_time('status')} IN ({_marks(statuses)}) "
            "AND completed_at IS NOT NULL "
            "ORDER BY completed_at DESC, id LIMIT ?",
            (*statuses, limit),
        )
        return [_owned(r) for r in rows]

    async def stuck(self, *, queued_for: float, at: float | None = None, limit: int = 50) -> list[OwnedJob]:
        """Jobs not moving: processing with a lapsed lease (its worker stopped; the sweeper has not taken it back
        yet), or queued and ready to run for more than `queued_for` seconds (no worker takes them). Oldest first."""
        t = now() if at is None else at
        rows = await self._all(
            f"SELECT {_WITH_OWNER} FROM jobs WHERE (status = 'processing' AND lease_expires_at < ?) "
            "OR (status = 'queued' AND ready_at < ?) ORDER BY updated_at, id LIMIT ?",
            (t, t - queued_for, limit),
        )
        return [_owned(r) for r in rows]

    async def job(self, job_id: str) -> OwnedJob | None:
        rows = await self._all(f"SELECT {_WITH_OWNER} FROM jobs WHERE id = ?", (job_id,))
        return _owned(rows[0]) if rows else None

    async def finished_per_minute(self, since: float) -> dict[tuple[int, str], int]:
        """(minute, status) → how many jobs ended that minute in that status, for jobs that ended since `since`."""
        minute = self._minute("completed_at")
        rows = await self._all(
            f"SELECT {minute} AS m, status, COUNT(*) FROM jobs WHERE completed_at >= ? "
            f"AND {self._by_time('status')} IN ({_marks(FINISHED)}) GROUP BY m, status",
            (since, *FINISHED),
        )
        return {(int(r[0]), r[1]): int(r[2]) for r in rows}

    async def wait_per_minute(self, since: float) -> list[MinuteTiming]:
        """Queue waits (created → first start) by the minute the job started, for jobs started since `since`.
        Such a job has either ended since (completed_at ≥ started_at) or is still active: both terms of the OR
        read an index, never every job ever kept."""
        return await self._timings(
            "started_at",
            "started_at - created_at",
            "started_at >= ? AND (completed_at >= ? OR status IN ('queued', 'processing'))",
            (since, since),
        )

    async def run_per_minute(self, since: float) -> list[MinuteTiming]:
        """Run times (first start → end) of the jobs that completed since `since`, by the minute they completed."""
        return await self._timings(
            "completed_at", "completed_at - started_at", "status = 'completed' AND completed_at >= ?", (since,)
        )

    async def _timings(self, at: str, value: str, where: str, params: tuple[Any, ...]) -> list[MinuteTiming]:
        # The nearest-rank p95 is the row ranked ceil(0.95 n) in its minute: (95 n + 99) / 100 in integers.
        rows = await self._all(
            "SELECT m, COUNT(*), AVG(v), MAX(CASE WHEN rn = (95 * n + 99) / 100 THEN v END) FROM ("
            "SELECT m, v, ROW_NUMBER() OVER (PARTITION BY m ORDER BY v) AS rn, COUNT(*) OVER (PARTITION BY m) AS n "
            f"FROM (SELECT {self._minute(at)} AS m, {value} AS v FROM jobs WHERE {where}) AS d"
            ") AS r GROUP BY m ORDER BY m",
            params,
        )
        return [MinuteTiming(int(r[0]), int(r[1]), max(0.0, float(r[2])), max(0.0, float(r[3]))) for r in rows]

    async def purge(self, f: PurgeFilter) -> list[str]:
        """Delete the finished jobs the filter picks (with their idempotency keys and any sealed key left), in
        batches; their ids. Active jobs are never touched: a status outside FINISHED is ignored."""
        statuses = tuple(s for s in f.statuses if s in FINISHED)
        if not statuses:
            return []
        where = f"status IN ({_marks(statuses)}) AND completed_at < ?"
        params: list[Any] = [*statuses, f.finished_before]
        if f.types:
            where += f" AND type IN ({_marks(f.types)})"
            params += f.types
        if f.user_id is not None:
            where += " AND user_id = ?"
            params.append(f.user_id)
        gone: list[str] = []
        while True:
            rows = await self._all(
                f"DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {where} LIMIT ?) RETURNING id",
                (*params, PURGE_BATCH),
            )
            ids = [r[0] for r in rows]
            await self._forget(ids)
            gone += ids
            if len(ids) < PURGE_BATCH:
                return gone

    async def purge_job(self, job_id: str) -> bool:
        """Delete one job if it has ended (False: missing or still active, and nothing changed)."""
        rows = await self._all(
            f"DELETE FROM jobs WHERE id = ? AND status IN ({_marks(FINISHED)}) RETURNING id", (job_id, *FINISHED)
        )
        await self._forget([r[0] for r in rows])
        return bool(rows)

    async def _forget(self, ids: list[str]) -> None:
        """What a deleted job leaves beside its row: idempotency keys pointing at it, a sealed key not yet dropped."""
        if ids:
            await self.store.db.execute(f"DELETE FROM idempotency_keys WHERE job_id IN ({_marks(ids)})", ids)
            await self.store.db.execute(f"DELETE FROM job_secrets WHERE job_id IN ({_marks(ids)})", ids)


class OperatorLog:
    """The record of what operators did: one row per retry, cancel or purge, with who did it. Never purged."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def record(
        self,
        *,
        operator_id: str,
        operator_name: str,
        action: str,
        job_id: str | None = None,
        job_user_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> ActionRecord:
        if action not in ACTIONS:
            raise ValueError(f"unknown operator action {action!r}")
        entry = ActionRecord(
            id=uuid.uuid4().hex,
            acted_at=now(),
            operator_id=operator_id,
            operator_name=operator_name,
            action=action,
            job_id=job_id,
            job_user_id=job_user_id,
            detail=detail or {},
        )
        await self.store.db.execute(
            "INSERT INTO operator_actions (id, acted_at, operator_id, operator_name, action, job_id, job_user_id, "
            "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.id,
                entry.acted_at,
                operator_id,
                operator_name,
                action,
                job_id,
                job_user_id,
                dumps(entry.detail),
            ),
        )
        return entry

    async def recent(self, *, limit: int = 50, job_id: str | None = None) -> list[ActionRecord]:
        """The latest records, newest first; with `job_id`, only those about that job."""
        where, params = ("WHERE job_id = ? ", (job_id,)) if job_id is not None else ("", ())
        async with self.store.db.execute(
            "SELECT id, acted_at, operator_id, operator_name, action, job_id, job_user_id, detail "
            f"FROM operator_actions {where}ORDER BY acted_at DESC, id DESC LIMIT ?",
            (*params, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [
            ActionRecord(
                id=r[0],
                acted_at=float(r[1]),
                operator_id=r[2],
                operator_name=r[3],
                action=r[4],
                job_id=r[5],
                job_user_id=r[6],
                detail=json.loads(r[7]),
            )
            for r in rows
        ]
