"""Job events in Redis: a per-job Stream (the replayable log) plus a PUBLISH (the live wake-up).

The stream entry id is `0-<seq>`, so the id *is* the job's sequence number: replay after N is
`XRANGE key (0-N +`, and Redis itself refuses an entry older than the newest one, which keeps a
late writer from slipping a stale event into the log. Live fan-out goes on one channel per user, so
a web process needs one subscription per watching user, not one per job.

Publishing is group-committed: the events every coroutine of a process publishes while one batch is on
its way go together in the next pipeline (one round trip, one pooled connection), each keeping its own
answer. A lone event goes at once, so an idle process pays one loop iteration, not a timer.

Events are best-effort once the store holds the state: while Redis's path is silent (a call timed out), publishing
fails at once (service/redis_silence.py) and the job goes on at the store's pace. The jobs whose events were skipped
are remembered, and when Redis answers again each one's state is re-read from the store and announced (`reread`), so
a watcher that missed the end of a job gets it then (a status event with the store's seq; a jump is a gap, which the
push layer resyncs from the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from .models import Event, EventKind, Job, JobStatus, iso, now
from .redis_silence import RedisSilent, is_silence
from .script_batch import ScriptBatch

log = logging.getLogger("aijobs.events")

STREAM_PREFIX = "aijobs:events:"
USER_CHANNEL_PREFIX = "aijobs:user:"
STREAM_TTL_MS = 7 * 24 * 3600 * 1000
MISSED_MEMORY = 10_000  # jobs whose skipped events one process re-announces when Redis answers again

# XADD may be refused (an equal or newer entry exists): then nothing is published either. Any other error (READONLY
# from a primary that Sentinel demoted) is raised, not taken for that refusal, which would stop the job's run. A
# function, so the submit path (service/admit.py) can run it in the same script as the enqueue.
PUBLISH_EVENT_LUA = """
local function publish_event(stream, id, payload, maxlen, channel, ttl)
  local ok = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', payload)
  if type(ok) == 'table' and ok.err then
    if string.find(ok.err, 'equal or smaller', 1, true) then return 0 end
    return redis.error_reply(ok.err)
  end
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PUBLISH', channel, payload)
  return 1
end
"""
# Several events of one job in one call, in order (ARGV: maxlen, channel, ttl, then id and payload of each), stopping
# at the first the log refuses: answers how many went out. All or a prefix, never one past a refused one, so a run
# that was taken over shows nothing after the new run's first event, as one call per event would.
_PUBLISH_MANY_LUA = (
    PUBLISH_EVENT_LUA
    + """
local n = 0
for i = 4, #ARGV, 2 do
  local ok = publish_event(KEYS[1], ARGV[i], ARGV[i + 1], ARGV[1], ARGV[2], ARGV[3])
  if ok ~= 1 then return ok == 0 and n or ok end
  n = n + 1
end
return n
"""
)


def stream_key(job_id: str) -> str:
    return STREAM_PREFIX + job_id


def user_channel(user_id: str) -> str:
    return USER_CHANNEL_PREFIX + user_id


def status_data(job: Job) -> dict[str, Any]:
    """The payload of a status event: small, and complete enough to render the job without a fetch."""
    data: dict[str, Any] = {
        "status": job.status.value,
        "attempt": job.attempts,
        "max_attempts": job.max_attempts,
        "percentage": round(job.percentage, 1),
        "current_step": job.current_step,
    }
    if job.terminal:
        data.update(
            result=job.result,
            error=job.error.to_dict() if job.error else None,
            model=job.model,
            provider=job.provider,
            usage=job.usage,
            partial_output=job.partial_output if job.result is None else None,
        )
    elif job.error:
        data["error"] = job.error.to_dict()
    if job.status is JobStatus.QUEUED and job.started_at and job.ready_at and job.ready_at > now():
        data["next_attempt_at"] = iso(job.ready_at)
    return data


def announcement(job: Job) -> Event:
    """The status event that tells watchers the job's state after a write that bumped its seq."""
    return Event(job_id=job.id, seq=job.seq, kind=EventKind.STATUS, data=status_data(job))


def _newest(entries: list[Any]) -> int:
    """The seq in the id (`0-<seq>`) of an `XREVRANGE … COUNT 1` reply's entry; 0 for an empty Stream."""
    if not entries:
        return 0
    entry_id = entries[0][0]
    return int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[1])


class EventLog:
    """Publish events and read them back; used by the API, the worker and the gateway."""

    def __init__(self, redis: Redis, *, maxlen: int = 2000) -> None:
        self.redis = redis
        self.maxlen = maxlen
        # events published at about the same time share one round trip; none waits on a silent Redis
        self._batch = ScriptBatch(redis, skip_when_silent=True)
        self.batch = self._batch  # the worker's coalescer sends through it too: a job's calls share round trips
        # One script for every event published here, one or several: after a Redis restart (scripts gone), a batch's
        # calls of one script all fail NOSCRIPT and are run again in order; calls of two scripts could be reordered
        # (one run, the other run again after it), and a job's later event would shut its earlier ones out.
        self._script = self._batch.register(_PUBLISH_MANY_LUA)
        # how to re-read a job whose events were skipped (the worker gives its store's `get`); None: not re-announced
        self.reread: Callable[[str], Awaitable[Job | None]] | None = None
        self._missed: dict[str, None] = {}  # job ids, oldest first
        assert self._batch.silence is not None
        self._batch.silence.on_back(self._announce_missed)

    def _missed_one(self, job_id: str, exc: BaseException) -> None:
        if self.reread is not None and is_silence(exc) and len(self._missed) < MISSED_MEMORY:
            self._missed[job_id] = None

    async def _announce_missed(self) -> None:
        """Redis answers again: announce the stored state of every job whose events were skipped meanwhile."""
        reread, missed = self.reread, list(self._missed)
        self._missed.clear()
        if reread is None or not missed:
            return
        log.warning("re-announcing jobs whose events Redis missed", extra={"jobs": len(missed)})
        for job_id in missed:
            try:
                job = await reread(job_id)
            except Exception as exc:
                log.warning("could not re-read a job to announce it", extra={"job_id": job_id, "error": repr(exc)})
                continue
            if job is not None:
                await self.announce(job)

    def publish_call(self, user_id: str, event: Event) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of `publish_event` in PUBLISH_EVENT_LUA for this event."""
        args = [f"0-{event.seq}", event.to_json(), self.maxlen, user_channel(user_id), STREAM_TTL_MS]
        return [stream_key(event.job_id)], args

    async def publish(self, user_id: str, event: Event) -> bool:
        """Append then publish; False when the log already holds this seq or a newer one."""
        return bool(await self.publish_soon(user_id, event))

    async def announce(self, job: Job) -> None:
        """Publish the job's status event, best effort: the store already holds the state, and a watcher that
        misses the event resyncs from it (a gap snapshot), so a Redis fault here must not fail the caller's write."""
        try:
            await self.publish(job.user_id, announcement(job))
        except RedisSilent:
            return  # remembered by publish_soon; said once by service/redis_silence.py
        except Exception as exc:
            log.warning(
                "could not publish an event",
                extra={"job_id": job.id, "user_id": job.user_id, "attempt": job.attempts, "error": repr(exc)},
            )

    async def publish_many(self, user_id: str, events: list[Event]) -> int:
        """Append then publish several events of one job (consecutive seqs, in order) in one script call: how many
        went out, stopping at the first the log refuses (it holds that seq or a newer one). A run's held progress
        and its held text cost one call where they cost two."""
        return int(await self.publish_many_soon(user_id, events))

    def publish_many_soon(self, user_id: str, events: list[Event]) -> asyncio.Future[Any]:
        """`publish_many` queued (as `publish_soon`): the future resolves to how many went out."""
        argv: list[Any] = [self.maxlen, user_channel(user_id), STREAM_TTL_MS]
        for event in events:
            argv += (f"0-{event.seq}", event.to_json())
        job_id = events[0].job_id
        return self._watched(job_id, self._batch.call(self._script, [stream_key(job_id)], argv))

    def publish_soon(self, user_id: str, event: Event) -> asyncio.Future[Any]:
        """Queue the event and return at once; the future resolves to 1 (published) or 0 (the log had that seq).

        Events go out in the order they were queued (script_batch.py), so a caller may queue an event and carry
        on: anything it queues afterwards lands after it.
        """
        return self.publish_many_soon(user_id, [event])

    def _watched(self, job_id: str, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """A publish that fails on a silent Redis remembers its job, to be re-announced when Redis answers."""
        if self.reread is not None:

            def done(f: asyncio.Future[Any]) -> None:
                exc = None if f.cancelled() else f.exception()
                if exc is not None:
                    self._missed_one(job_id, exc)

            future.add_done_callback(done)
        return future

    async def drain(self) -> None:
        """Wait for every event queued so far to reach Redis (errors are their callers')."""
        with contextlib.suppress(Exception):
            await self._batch.drain()

    async def newest_seqs(self, job_ids: list[str]) -> list[int]:
        """`newest_seq` of many jobs in one round trip."""
        if not job_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.xrevrange(stream_key(job_id), count=1)
            replies = await pipe.execute()
        return [_newest(entries) for entries in replies]

    async def newest_seq(self, job_id: str) -> int:
        """The seq of the job's newest logged event (0: none). Ahead of the store's while a run is between two
        checkpoints: a resume point up to this one is real."""
        return _newest(await self.redis.xrevrange(stream_key(job_id), count=1))

    async def resumable(self, job_id: str, after: int, stored_seq: int) -> bool:
        """Whether `after` is a seq this job has reached: the store's, or past it in the log."""
        return after <= stored_seq or after <= await self.newest_seq(job_id)

    async def read_after(self, job_id: str, after_seq: int, *, count: int | None = None) -> list[Event]:
        entries = await self.redis.xrange(stream_key(job_id), min=f"(0-{after_seq}", max="+", count=count)
        return [decode_entry(fields) for _id, fields in entries]


def decode_entry(fields: dict[Any, Any]) -> Event:
    raw = fields.get(b"e") if b"e" in fields else fields.get("e")
    if raw is None:
        raise ValueError(f"stream entry without an event: {sorted(fields)!r}")
    return Event.from_dict(json.loads(raw))  # json.loads takes bytes as they come


def status_event(job_id: str, seq: int, data: dict[str, Any]) -> Event:
    return Event(job_id=job_id, seq=seq, kind=EventKind.STATUS, data=data)
