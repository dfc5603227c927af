"""Our queue interface, with arq underneath (kept swappable: arq is in maintenance mode).

Priority rule: arq runs ready jobs in order of their score (a time in ms). We give each job a head start
of `priority × PRIORITY_STEP_SECONDS`, so among waiting jobs a higher priority runs first, yet a job of
priority 1 that has waited longer than (10 − 1) × 10 s = 90 s overtakes any newly arrived priority-10 job:
nothing is starved forever. Each arq job id is `<job id>.<ticket>`, where the ticket is the job's `seq` when it
was (re)queued: enqueueing the same ticket twice (the reconciler, a retried request) is a no-op while the first
copy waits, and a stale copy (one arq re-runs after a worker died) cannot claim the job, since the store's claim
requires the ticket to match.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis

PRIORITY_STEP_SECONDS = 10.0
DEFAULT_PRIORITY = 5
RUN_JOB_FUNCTION = "run_job"


def queue_score_ms(enqueued_at: float, priority: int, defer_seconds: float = 0.0) -> float:
    return (enqueued_at - priority * PRIORITY_STEP_SECONDS + defer_seconds) * 1000


class JobQueue:
    def __init__(self, redis: ArqRedis, *, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name

    async def enqueue(self, job_id: str, *, ticket: int, priority: int, defer_seconds: float = 0.0) -> bool:
        """Put one queued spell of a job on the queue; False if that ticket is already there."""
        start = datetime.now(UTC) + timedelta(seconds=defer_seconds - priority * PRIORITY_STEP_SECONDS)
        job = await self.redis.enqueue_job(
            RUN_JOB_FUNCTION,
            job_id,
            _job_id=arq_job_id(job_id, ticket),
            _queue_name=self.queue_name,
            _defer_until=start,
            _expires=timedelta(days=2),
        )
        return job is not None

    async def depth(self) -> int:
        return int(await self.redis.zcard(self.queue_name))

    async def holds(self, job_id: str, ticket: int) -> bool:
        """Whether this ticket is on the queue (waiting, or taken by a worker that has not finished it)."""
        return await self.redis.zscore(self.queue_name, arq_job_id(job_id, ticket)) is not None


def arq_job_id(job_id: str, ticket: int) -> str:
    return f"{job_id}.{ticket}"


def parse_arq_job_id(arq_id: str) -> tuple[str, int | None]:
    """`<job>.<ticket>` back into its parts; a bare id has no ticket."""
    job_id, _, ticket = arq_id.rpartition(".")
    if job_id and ticket.isdigit():
        return job_id, int(ticket)
    return arq_id, None
