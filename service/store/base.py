"""What every job store backend offers.

Every write a worker makes is fenced by its lease token: when the token no longer matches (the job was
taken over, cancelled or already finished) the write does nothing and returns None, so a worker that woke
up late can never overwrite what the new owner did. Each successful write bumps the job's `seq`, which is
the sequence number of the event that announces it, by one; except that a running job's progress reaches the
store only at checkpoints (runner.RunContext), so a checkpoint sets `seq` to the last event its run announced
(`progress(seq=…)`), and a take-over, which no run announced, jumps past any event a run may have announced
since its last checkpoint (at most UNSTORED_EVENTS_MAX).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..models import Job, JobError, JobStatus

# The step `finish` leaves on a job it ends: its last running step ("Polishing titles…") would no longer be true.
FINAL_STEPS = {JobStatus.COMPLETED: "Done", JobStatus.FAILED: "Failed", JobStatus.CANCELLED: "Cancelled"}

# The most events a run announces between two store writes: a take-over moves `seq` this far ahead (plus one),
# so any event of the run it revokes sorts before the take-over's and the Redis log refuses the late ones.
UNSTORED_EVENTS_MAX = 50


class UniqueViolation(ValueError):
    """A write broke a unique key (both stores raise this one from the statements they share)."""


class StoreOpenError(RuntimeError):
    """The store could not be opened (PostgreSQL unreachable, refused the login, ...): the message says which."""


class SchemaMismatch(StoreOpenError):
    """The database's schema is not the one this code was written for: the message says what to run."""

    def __init__(self, found: int, expected: int) -> None:
        self.found, self.expected = found, expected
        if found < expected:
            msg = (
                f"the job store's schema is at version {found}, this code needs {expected}: "
                "run `aijobs migrate` (same DATABASE_URL) once, then start again"
            )
        else:
            msg = (
                f"the job store's schema is at version {found}, newer than this code's {expected}: a newer aijobs "
                "migrated it; run that release here too (migrations only go forward)"
            )
        super().__init__(msg)


class JobStore(Protocol):
    dialect: str  # "sqlite" or "postgres": the few shared statements that differ pick by it

    @property
    def errors(self) -> int:
        """Operations that failed so far, not counting a unique-key refusal: aijobs_store_errors_total."""

    @property
    def db(self) -> Any:
        """What the modules both stores share (users, sealed keys, history queries) run statements on:
        `execute(sql, params)` with `?` placeholders, awaited or `async with`, rows read by position."""

    async def open(self) -> None:
        """Connect; raise SchemaMismatch unless the schema is this code's (SQLite migrates itself first)."""

    async def close(self) -> None: ...

    async def migrate(self) -> tuple[int, int]:
        """Apply pending migrations, safe while other hosts do the same; (version before, version after)."""

    async def ping(self) -> None:
        """Raise if the store cannot answer."""

    async def create(self, job: Job) -> Job:
        """Insert a new queued job with seq 1 (its `queued` event)."""

    async def get(self, job_id: str) -> Job | None: ...

    async def create_ranked(self, job: Job, *, max_active: int | None = None) -> int | None:
        """create(), also answering how many queued jobs run before the new one (its queue position).

        With `max_active`: only while the user has fewer queued + processing jobs, else None and nothing written.
        """

    async def get_owned(self, job_id: str, user_id: str) -> Job | None:
        """The job, only if it belongs to this user: others' jobs look exactly like missing ones."""

    async def get_owned_ranked(self, job_id: str, user_id: str) -> tuple[Job, int | None] | None:
        """get_owned() with the job's queue position (None unless it is queued)."""

    async def queued_ranked(self, owned: dict[str, str]) -> dict[str, tuple[Job, int]]:
        """The jobs of `owned` (job id → its owner) that are queued, each with its queue position: one pass over the
        queue for all of them, where get_owned_ranked counts the jobs ahead once per job."""

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
        """Move a queued job to processing under a new lease; None if it is not queued (with this ticket) any more.

        `steps` (every type's chain as JSON) lets the same write record `running_on`, the provider and model this
        attempt runs on, which the sweeper names if the attempt is lost. May set `sealed_key` on the job it returns
        (whether a sealed provider key waits), sparing a read."""

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
        """Progress, and the output so far: `partial_output` replaces it, `append_output` adds to its end.

        `seq`: the seq of the last event the run announced (a checkpoint); the job's seq becomes the larger of
        that and seq + 1. Answers that new seq (None: the run lost its lease), not the row: a streamed job's output
        grows with every checkpoint, and re-reading and decoding it each time was a store thread's largest cost
        under many streams (README, Streaming)."""

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
        """Write a terminal state (completed/failed/cancelled), drop the lease; the step: FINAL_STEPS[status].

        `append_output` and `seq` fold the run's final checkpoint into this write (as `progress` takes them): the
        output announced since the last checkpoint is appended, and the job's seq becomes one past the larger of
        its own and `seq` (the last event the run announced), so the terminal event follows every one of them."""

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
        """Give the job back to the queue for another attempt."""

    async def list_active(self) -> list[Job]:
        """Queued and processing jobs: what the queue must hold, used to rebuild it."""

    async def active_for_user(self, user_id: str) -> list[Job]:
        """One user's queued and processing jobs, oldest first: what a "mine" watcher (GET /api/events, a WebSocket's
        subscribe "mine") starts from, on every connect. Reads that user's rows only, through an index on
        (user_id, status): never every user's active jobs with their inputs."""

    # The lifecycle (leases, cancel, recovery, expiry, estimates, idempotency): see SQLiteJobStore for the rules.
    async def renew(self, job_id: str, token: str, *, lease_seconds: float) -> Job | None: ...

    async def cancel_queued(self, job_id: str, user_id: str) -> Job | None: ...

    async def request_cancel(self, job_id: str, user_id: str) -> Job | None: ...

    async def delete_finished(self, job_id: str, user_id: str) -> bool:
        """Delete one of the user's jobs that has ended (and its idempotency keys): gone from history and stats, as
        a purge would. False, and nothing changes, for a job that is active, missing or not the user's."""

    async def expired_leases(self) -> list[Job]: ...

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
        """Revoke a lapsed lease (only if still lapsed and unchanged); seq grows by UNSTORED_EVENTS_MAX + 1."""

    async def touch_queued(self, job_id: str, seq: int, *, step: str) -> Job | None: ...

    async def list_queued(self, *, older_than: float) -> list[Job]: ...

    async def expire_overdue(self) -> list[Job]: ...

    async def purge(self, *, completed_before: float, others_before: float, idempotency_before: float) -> list[str]: ...

    async def finished_before(self, before: float, *, limit: int = 1000) -> list[str]: ...

    async def finished_seqs(self, since: float, until: float, *, limit: int = 5000) -> list[tuple[str, str, int]]:
        """(id, user id, seq) of the jobs that ended in [since, until), oldest first: the maintenance pass checks
        that each one's Stream holds its end (lifecycle.Maintenance.reannounce)."""

    async def queue_ahead(self, job: Job) -> int: ...

    async def running(self) -> list[Job]: ...

    async def recent_durations(self, job_type: str, *, limit: int = 20) -> list[float]: ...

    async def idempotency_get(self, user_id: str, key: str, *, since: float) -> tuple[str, str] | None: ...

    async def idempotency_release(self, user_id: str, key: str, job_id: str) -> None: ...

    async def idempotency_put(
        self, user_id: str, key: str, request_hash: str, job_id: str, *, since: float
    ) -> bool: ...
