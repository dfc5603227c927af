"""SQLite job store through aiosqlite: WAL, one autocommit statement per change, migrations at start."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite

from ..models import Job, JobError, JobStatus, dumps, now
from .migrations import MIGRATIONS

_COLUMNS = (
    "id, user_id, type, status, priority, input, result, error, attempts, max_attempts, percentage, current_step, "
    "partial_output, model, usage, lease_token, worker_id, seq, created_at, started_at, completed_at, updated_at"
)


def _row_to_job(row: aiosqlite.Row) -> Job:
    error = json.loads(row["error"]) if row["error"] else None
    return Job(
        id=row["id"],
        user_id=row["user_id"],
        type=row["type"],
        status=JobStatus(row["status"]),
        priority=row["priority"],
        input=json.loads(row["input"]),
        result=json.loads(row["result"]) if row["result"] is not None else None,
        error=JobError(**error) if error else None,
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        percentage=row["percentage"],
        current_step=row["current_step"],
        partial_output=row["partial_output"],
        model=row["model"],
        usage=json.loads(row["usage"]) if row["usage"] else None,
        lease_token=row["lease_token"],
        worker_id=row["worker_id"],
        seq=row["seq"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        updated_at=row["updated_at"],
    )


async def _enable_wal(db: aiosqlite.Connection, attempts: int = 200) -> None:
    """Switching to WAL takes an exclusive lock and ignores busy_timeout, so retry while a peer starts up."""
    for _ in range(attempts):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            await asyncio.sleep(0.05)
    raise RuntimeError("could not switch the SQLite job store to WAL: another process holds it locked")


class SQLiteJobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the job store is not open: call open() first")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout=10000")  # first: another process may be migrating right now
        await _enable_wal(db)
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await self._migrate(db)
        self._db = db

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        """Apply pending migrations in one immediate transaction so concurrent starters don't race."""
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = row[0] if row else 0
            for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in (s.strip() for s in sql.split(";")):
                    if statement:
                        await db.execute(statement)
                await db.execute(f"PRAGMA user_version={number}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

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
        job.seq = 1
        await self.db.execute(
            f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * 22)})",
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
            ),
        )
        return job

    async def get(self, job_id: str) -> Job | None:
        return await self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))

    async def get_owned(self, job_id: str, user_id: str) -> Job | None:
        return await self._one(f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND user_id = ?", (job_id, user_id))

    async def claim(self, job_id: str, *, worker_id: str, token: str) -> Job | None:
        t = now()
        return await self._one(
            "UPDATE jobs SET status = 'processing', attempts = attempts + 1, lease_token = ?, worker_id = ?, "
            "started_at = COALESCE(started_at, ?), updated_at = ?, seq = seq + 1, error = NULL, "
            "current_step = 'Starting…' "
            f"WHERE id = ? AND status = 'queued' RETURNING {_COLUMNS}",
            (token, worker_id, t, t, job_id),
        )

    async def progress(
        self, job_id: str, token: str, *, percentage: float, step: str | None, partial_output: str | None = None
    ) -> Job | None:
        return await self._one(
            "UPDATE jobs SET percentage = ?, current_step = COALESCE(?, current_step), "
            "partial_output = COALESCE(?, partial_output), updated_at = ?, seq = seq + 1 "
            f"WHERE id = ? AND lease_token = ? AND status = 'processing' RETURNING {_COLUMNS}",
            (percentage, step, partial_output, now(), job_id, token),
        )

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
    ) -> Job | None:
        t = now()
        percentage_sql = "100" if status is JobStatus.COMPLETED else "percentage"
        return await self._one(
            f"UPDATE jobs SET status = ?, result = ?, error = ?, model = COALESCE(?, model), "
            f"usage = COALESCE(?, usage), percentage = {percentage_sql}, lease_token = NULL, "
            "completed_at = ?, updated_at = ?, seq = seq + 1 "
            f"WHERE id = ? AND lease_token = ? AND status = 'processing' RETURNING {_COLUMNS}",
            (
                status.value,
                dumps(result) if result is not None else None,
                dumps(error.to_dict()) if error else None,
                model,
                dumps(usage) if usage else None,
                t,
                t,
                job_id,
                token,
            ),
        )

    async def requeue(self, job_id: str, token: str, *, error: JobError | None, step: str | None) -> Job | None:
        return await self._one(
            "UPDATE jobs SET status = 'queued', lease_token = NULL, worker_id = NULL, error = ?, "
            "current_step = ?, updated_at = ?, seq = seq + 1 "
            f"WHERE id = ? AND lease_token = ? AND status = 'processing' RETURNING {_COLUMNS}",
            (dumps(error.to_dict()) if error else None, step, now(), job_id, token),
        )

    async def list_active(self) -> list[Job]:
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE status IN ('queued', 'processing') ORDER BY created_at"
        ) as cur:
            rows = await cur.fetchall()
        return [_row_to_job(r) for r in rows]
