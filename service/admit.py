"""One Redis round trip for a job the store has just taken: its first event, its place on the queue, and the
live workers' slots (for the estimate in the 202), in one script instead of three calls.

The pieces are the same Lua functions EventLog.publish and JobQueue.enqueue run on their own, so the effects
are the same: the event is appended to the job's Stream and published, then the job is enqueued and idle
workers are woken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .coordination import capacity_of, workers_key
from .events import PUBLISH_EVENT_LUA, EventLog
from .models import Event
from .queue import ENQUEUE_JOB_LUA, JobQueue
from .script_batch import ScriptBatch

_ADMIT_LUA = (
    PUBLISH_EVENT_LUA
    + ENQUEUE_JOB_LUA
    + """
local published = publish_event(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if type(published) == 'table' then return published end
local enqueued = enqueue_job(KEYS[2], KEYS[3], KEYS[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
return {published, enqueued, redis.call('ZRANGEBYSCORE', KEYS[5], ARGV[11], '+inf')}
"""
)


@dataclass(frozen=True, slots=True)
class Admitted:
    published: bool
    enqueued: bool
    capacity: int  # job slots of the live workers right now


class Admission:
    def __init__(self, events: EventLog, queue: JobQueue) -> None:
        self.events = events
        self.queue = queue
        self._batch = ScriptBatch(queue.redis)  # concurrent submissions share one round trip
        self._script = self._batch.register(_ADMIT_LUA)

    async def admit(
        self, user_id: str, event: Event, *, ticket: int, priority: int, origin: dict[str, str] | None = None
    ) -> Admitted:
        """Publish the job's first event and enqueue it; raises on any Redis trouble (the reconciler enqueues).
        `origin`: the submitting request's ids, carried in the queue entry (tracing.Origin.enqueue_kwargs)."""
        ev_keys, ev_args = self.events.publish_call(user_id, event)
        q_keys, q_args = self.queue.enqueue_call(event.job_id, ticket=ticket, priority=priority, origin=origin)
        published, enqueued, members = await self._batch.call(
            self._script,
            [*ev_keys, *q_keys, workers_key(self.queue.queue_name)],
            [*ev_args, *q_args, int(time.time() * 1000)],
        )
        return Admitted(bool(published), bool(enqueued), capacity_of(members))
