"""Our queue interface, with arq underneath (kept swappable: arq is in maintenance mode).

Priority rule: arq runs ready jobs in order of their score (a time in ms). We give each job a head start
of `priority × PRIORITY_STEP_SECONDS`, so among waiting jobs a higher priority runs first, yet a job of
priority 1 that has waited longer than (10 − 1) × 10 s = 90 s overtakes any newly arrived priority-10 job:
nothing is starved forever. A deferred job (a retry backing off) is scored at the time it is due, with no
head start, since a head start would let it run before its back-off is over.

Each arq job id is `<job id>.<ticket>`, where the ticket is the job's `seq` when it was (re)queued: enqueueing
the same ticket twice (the reconciler, a retried request) is a no-op while the first copy waits, and a stale
copy (one arq re-runs after a worker died) cannot claim the job, since the store's claim requires the ticket
to match.

Enqueue is one Lua call (arq's own enqueue_job takes three round trips: WATCH, EXISTS, MULTI/EXEC) that
writes the job in arq's format and then PUBLISHes on the queue's wake channel, so an idle worker
(service/arq_worker.py) starts it at once instead of at its next poll.
"""

from __future__ import annotations

import json
import time
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from .models import dumps
from .script_batch import BatchedScript, ScriptBatch


def json_serializer(value: Any) -> bytes:
    """arq's job payloads as JSON, never pickle (arq's default): what the web enqueues and the worker reads."""
    return dumps(value).encode()


def json_deserializer(raw: bytes) -> Any:
    return json.loads(raw)


PRIORITY_STEP_SECONDS = 10.0
DEFAULT_PRIORITY = 5
RUN_JOB_FUNCTION = "run_job"
JOB_EXPIRES_MS = 2 * 24 * 3600 * 1000

# Same effect as arq's enqueue_job (refuse a job id that exists or has a result), atomically, plus the wake-up.
# A function, so the submit path (service/admit.py) can run it in the same script as the job's first event.
# The wake-up is a token in the list `wake` (at most one: a token says "look at the queue", and one look takes
# every job due): an idle worker waits on it with BLPOP, and Redis runs the worker's take right after the pop
# (service/arq_worker.py). The PUBLISH on the channel of the same name wakes workers of the previous release,
# which listened on pub/sub, during a rolling deploy.
ENQUEUE_JOB_LUA = """
local function enqueue_job(job_key, result_key, queue, expires_ms, payload, score, arq_id, wake)
  if redis.call('EXISTS', job_key, result_key) > 0 then return 0 end
  redis.call('PSETEX', job_key, expires_ms, payload)
  redis.call('ZADD', queue, score, arq_id)
  redis.call('RPUSH', wake, '1')
  redis.call('LTRIM', wake, -1, -1)
  redis.call('PUBLISH', wake, '1')
  return 1
end
"""
_ENQUEUE_LUA = (
    ENQUEUE_JOB_LUA + "return enqueue_job(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])"
)


def wake_channel(queue_name: str) -> str:
    """Where enqueue announces new work to idle workers of this queue: the list idle workers BLPOP on (and the
    pub/sub channel of the previous release's workers)."""
    return f"{queue_name}:wake"


def queue_score_ms(enqueued_at: float, priority: int, defer_seconds: float = 0.0) -> float:
    return (enqueued_at - priority * PRIORITY_STEP_SECONDS + defer_seconds) * 1000


class JobQueue:
    def __init__(self, redis: ArqRedis, *, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        # hiredis-packed, no per-call pool check (see BatchedScript): the enqueue → start latency's first leg
        self._enqueue = BatchedScript(ScriptBatch(redis), _ENQUEUE_LUA)

    async def enqueue(
        self,
        job_id: str,
        *,
        ticket: int,
        priority: int,
        defer_seconds: float = 0.0,
        origin: dict[str, str] | None = None,
    ) -> bool:
        """Put one queued spell of a job on the queue; False if that ticket is already there."""
        keys, args = self.enqueue_call(
            job_id, ticket=ticket, priority=priority, defer_seconds=defer_seconds, origin=origin
        )
        return bool(await self._enqueue(keys=keys, args=args))

    def enqueue_call(
        self,
        job_id: str,
        *,
        ticket: int,
        priority: int,
        defer_seconds: float = 0.0,
        origin: dict[str, str] | None = None,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of `enqueue_job` in ENQUEUE_JOB_LUA for this spell of the job. `origin`: the submitting
        request's `request_id` and `traceparent`, which the worker's run_job gets as keyword arguments."""
        arq_id = arq_job_id(job_id, ticket)
        enqueued_ms = int(time.time() * 1000)
        if defer_seconds > 0:  # a back-off must be honoured: a deferred job gets no head start before it is due
            score = enqueued_ms + int(defer_seconds * 1000)
        else:
            score = int(queue_score_ms(enqueued_ms / 1000, priority))
        serializer = self.redis.job_serializer
        payload = serialize_job(RUN_JOB_FUNCTION, (job_id,), origin or {}, None, enqueued_ms, serializer=serializer)
        return (
            [job_key_prefix + arq_id, result_key_prefix + arq_id, self.queue_name],
            [JOB_EXPIRES_MS, payload, score, arq_id, wake_channel(self.queue_name)],
        )

    async def depth(self) -> int:
        return int(await self.redis.zcard(self.queue_name))

    async def holds(self, job_id: str, ticket: int) -> bool:
        """Whether this ticket is on the queue (waiting, or taken by a worker that has not finished it)."""
        return await self.redis.zscore(self.queue_name, arq_job_id(job_id, ticket)) is not None

    async def holds_many(self, tickets: list[tuple[str, int]]) -> list[bool]:
        """`holds` for many (job id, ticket) pairs in one round trip (the reconciler checks a whole backlog)."""
        if not tickets:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, ticket in tickets:
                pipe.zscore(self.queue_name, arq_job_id(job_id, ticket))
            scores = await pipe.execute()
        return [score is not None for score in scores]


def arq_job_id(job_id: str, ticket: int) -> str:
    return f"{job_id}.{ticket}"


def parse_arq_job_id(arq_id: str) -> tuple[str, int | None]:
    """`<job>.<ticket>` back into its parts; a bare id has no ticket."""
    job_id, _, ticket = arq_id.rpartition(".")
    if job_id and ticket.isdigit():
        return job_id, int(ticket)
    return arq_id, None
