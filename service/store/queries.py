"""Read-only questions about many jobs: a user's history page, active counts, and the numbers behind stats.

Every per-user query has `user_id = ?` in its WHERE clause: there is no way to list someone else's jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models import Job
from .base import JobStore
from .rows import _COLUMNS, _row_to_job


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    user_id: str
    statuses: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    since: float | None = None


@dataclass(frozen=True, slots=True)
class TypeTiming:
    type: str
    started: int
    finished: int
    avg_wait: float | None
    avg_run: float | None


def _where(f: HistoryFilter) -> tuple[str, list[Any]]:
    clauses = ["user_id = ?"]
    params: list[Any] = [f.user_id]
    if f.statuses:
        clauses.append(f"status IN ({', '.join('?' * len(f.statuses))})")
        params += f.statuses
    if f.types:
        clauses.append(f"type IN ({', '.join('?' * len(f.types))})")
        params += f.types
    if f.since is not None:
        clauses.append("created_at >= ?")
        params.append(f.since)
    return " AND ".join(clauses), params


class JobQueries:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def _all(self, sql: str, params: list[Any] | tuple[Any, ...]) -> list[Any]:
        async with self.store.db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def history(
        self, f: HistoryFilter, *, limit: int, after: tuple[float, str] | None = None
    ) -> tuple[list[Job], bool]:
        """Newest first; `after` is the (created_at, id) of the last job of the previous page. Returns (jobs, more)."""
        where, params = _where(f)
        if after is not None:
            where += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [after[0], after[0], after[1]]
        rows = await self._all(
            f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?", [*params, limit + 1]
        )
        return [_row_to_job(r) for r in rows[:limit]], len(rows) > limit

    async def usage_by_model(self, f: HistoryFilter) -> list[tuple[str | None, int, int, int]]:
        """(model, jobs, prompt_tokens, completion_tokens) over the filtered jobs."""
        where, params = _where(f)
        if self.store.dialect == "postgres":
            tokens = "COALESCE(SUM((usage::jsonb ->> '{0}')::bigint), 0)"
        else:
            tokens = "COALESCE(SUM(json_extract(usage, '$.{0}')), 0)"
        rows = await self._all(
            f"SELECT model, COUNT(*), {tokens.format('prompt_tokens')}, {tokens.format('completion_tokens')} "
            f"FROM jobs WHERE {where} GROUP BY model",
            params,
        )
        return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def count_active(self, user_id: str) -> int:
        """The user's queued + processing jobs, as each store keeps count in its user_active row (no rows are
        counted here)."""
        rows = await self._all("SELECT n FROM user_active WHERE user_id = ?", (user_id,))
        return int(rows[0][0]) if rows else 0

    async def counts_by_status(self, user_id: str | None = None) -> dict[str, int]:
        if user_id is None:
            rows = await self._all("SELECT status, COUNT(*) FROM jobs GROUP BY status", ())
        else:
            rows = await self._all("SELECT status, COUNT(*) FROM jobs WHERE user_id = ? GROUP BY status", (user_id,))
        return {r[0]: int(r[1]) for r in rows}

    async def timings(self, since: float) -> list[TypeTiming]:
        """Per type, over jobs that started since `since`: mean wait (created → started) and run (started → done)."""
        rows = await self._all(
            "SELECT type, COUNT(*), "
            "SUM(CASE WHEN completed_at IS NOT NULL AND status = 'completed' THEN 1 ELSE 0 END), "
            "AVG(started_at - created_at), "
            "AVG(CASE WHEN status = 'completed' THEN completed_at - started_at END) "
            "FROM jobs WHERE started_at IS NOT NULL AND started_at >= ? GROUP BY type ORDER BY type",
            (since,),
        )
        return [
            TypeTiming(
                type=r[0],
                started=int(r[1]),
                finished=int(r[2]),
                avg_wait=None if r[3] is None else float(r[3]),
                avg_run=None if r[4] is None else float(r[4]),
            )
            for r in rows
        ]

    async def queue_summary(self, at: float) -> QueueSummary:
        """The whole queue as the store holds it, for the metrics: two aggregate statements over the queued and
        processing jobs (the status indexes), however long the queue."""
        rows = await self._all(
            "SELECT COUNT(*), "
            "SUM(CASE WHEN COALESCE(ready_at, created_at) <= ? THEN 1 ELSE 0 END), "
            "MIN(CASE WHEN COALESCE(ready_at, created_at) <= ? THEN COALESCE(ready_at, created_at) END) "
            "FROM jobs WHERE status = 'queued'",
            (at, at),
        )
        running = await self._all("SELECT COUNT(*) FROM jobs WHERE status = 'processing'", ())
        queued, ready, oldest = rows[0]
        return QueueSummary(
            ready=int(ready or 0),
            deferred=int(queued or 0) - int(ready or 0),
            oldest_ready_at=None if oldest is None else float(oldest),
            running=int(running[0][0]),
        )


@dataclass(frozen=True, slots=True)
class QueueSummary:
    ready: int  # queued jobs a worker may start now
    deferred: int  # queued jobs backing off until a later time (a retry's delay, a rate-limit wait)
    oldest_ready_at: float | None  # when the longest-waiting ready job became ready
    running: int
