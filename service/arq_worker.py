"""arq's Worker, woken by enqueue instead of only by its poll timer.

arq polls its queue every `poll_delay` seconds, so an idle worker meets a new job half a poll late on
average (25 ms at our 50 ms default, 250 ms at arq's 0.5 s). JobQueue.enqueue PUBLISHes on the queue's
wake channel in the same Lua call that adds the job; this worker listens on that channel and polls at
once when told. The timer stays as the safety net: a lost wake-up (pub/sub is at-most-once, or the
listener is reconnecting) or a deferred retry coming due costs at most one `poll_delay`, as before.

Starting jobs: arq takes each job with WATCH, EXISTS, ZSCORE and MULTI/PSETEX/EXEC (four round trips per job).
`start_jobs` here takes every job that fits in the free slots with one Lua call that does the same checks
(not already in progress, still on the queue, due) and sets the same in-progress keys, atomically.
A busy worker whose every slot is taken polls again as soon as one frees up, not a `poll_delay` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq import Worker
from arq.connections import create_pool
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .queue import wake_channel

log = logging.getLogger("aijobs.worker")

# KEYS: the queue, then one in-progress key per job id; ARGV: now (ms), in-progress ttl (ms), the job ids.
# Returns [job id, score, ...] for the jobs it took: the same rule as arq's start_jobs, in one call.
_START_LUA = """
local taken = {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('PSETEX', KEYS[i], ARGV[2], '1')
    taken[#taken + 1] = id
    taken[#taken + 1] = score
  end
end
return taken
"""
# Read the due jobs and take those that fit the free slots, in one call (an idle worker's poll).
# KEYS: the queue; ARGV: now (ms), in-progress ttl (ms), free slots, read limit, in-progress key prefix.
# The in-progress keys are built here, as arq's are: arq runs on one Redis, never a cluster.
# Returns {taken: [job id, score, ...], rest: [job id, ...]} (rest: due, but no slot was free).
_TAKE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[4])
local taken, rest = {}, {}
local free = tonumber(ARGV[3])
for i = 1, #due, 2 do
  local id = due[i]
  if free > 0 then
    local key = ARGV[5] .. id
    if redis.call('EXISTS', key) == 0 then
      redis.call('PSETEX', key, ARGV[2], '1')
      taken[#taken + 1] = id
      taken[#taken + 1] = due[i + 1]
      free = free - 1
    end
  else
    rest[#rest + 1] = id
  end
end
return {taken, rest}
"""


class WakeableWorker(Worker):
    """A Worker whose idle wait ends early when a job is enqueued on its queue."""

    _wake: asyncio.Event | None = None
    _wake_task: asyncio.Task[None] | None = None
    _paused_until: float = 0.0
    _start_script: object | None = None
    _take_script: object | None = None
    _full = False  # every slot was taken at the end of the last poll

    def _release_sem_dec_counter_on_complete(self) -> None:
        """A slot freed up: if the last poll found none, poll now rather than at the next timer tick."""
        super()._release_sem_dec_counter_on_complete()
        if self._full and self._wake is not None:
            self._full = False
            self._wake.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Start these jobs as slots free up, taking all that fit the free slots in one Redis call each time."""
        if self._start_script is None:
            self._start_script = self.pool.register_script(_START_LUA)
        pending = [j.decode() for j in job_ids]
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        while pending:
            await self.sem.acquire()  # wait for a free slot, as arq does, then count them all
            self.sem.release()
            free = self.max_jobs - self.job_counter
            if free <= 0:
                return None
            batch, pending = pending[:free], pending[free:]
            keys = [self.queue_name, *(in_progress_key_prefix + job_id for job_id in batch)]
            taken = await self._start_script(keys=keys, args=[timestamp_ms(), ttl_ms, *batch])  # type: ignore[operator]
            await self._run_taken(taken)
        return None

    async def _run_taken(self, taken: list[bytes]) -> None:
        """Run the jobs a script took ([job id, score, ...]), each in a slot that is known to be free."""
        for i in range(0, len(taken), 2):
            job_id = taken[i].decode() if isinstance(taken[i], bytes) else str(taken[i])
            await self.sem.acquire()  # free at once: nothing else starts jobs meanwhile
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(taken[i + 1]))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _poll_iteration(self) -> None:
        """arq's poll, with the read of due jobs and the taking of those that fit in one Redis call."""
        if self.burst and self.max_burst_jobs >= 0:
            return await super()._poll_iteration()
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            if self._take_script is None:
                self._take_script = self.pool.register_script(_TAKE_LUA)
            free = self.max_jobs - self.job_counter
            args = [timestamp_ms(), int(self.in_progress_timeout_s * 1000), free, self.queue_read_limit]
            taken, rest = await self._take_script(keys=[self.queue_name], args=[*args, in_progress_key_prefix])  # type: ignore[operator]
            await self._run_taken(taken)
            if rest:  # more are due than slots were free: start them as slots free up, as arq does
                await self.start_jobs(rest)
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                t.result()  # as arq: errors in run_job propagate
        await self.heart_beat()
        return None

    def pause(self, seconds: float) -> None:
        """Take no new job for `seconds` (the store could not claim one); running jobs go on."""
        self._paused_until = max(self._paused_until, asyncio.get_running_loop().time() + seconds)

    async def _listen_for_wakes(self, subscribed: asyncio.Event) -> None:
        assert self._wake is not None
        backoff = 0.1
        while True:
            pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(wake_channel(self.queue_name))
                subscribed.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._wake.set()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("wake-up subscription lost; polling meanwhile", extra={"error": str(exc)})
                subscribed.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _idle(self, seconds: float) -> None:
        """Sleep until the next poll is due or a job is enqueued, whichever comes first."""
        assert self._wake is not None
        if seconds > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def main(self) -> None:
        """arq's Worker.main with the fixed sleep between polls replaced by `_idle`."""
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        log.info("Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions))
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        self._wake = asyncio.Event()
        subscribed = asyncio.Event()
        self._wake_task = asyncio.create_task(self._listen_for_wakes(subscribed), name="aijobs-worker-wake")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), 5)
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()  # anything enqueued from here on is seen by this iteration or wakes the next
                before = loop.time()
                if before < self._paused_until:
                    await asyncio.sleep(self._paused_until - before)
                    continue
                await self._poll_iteration()
                if self.burst:
                    if 0 <= self.max_burst_jobs <= self._jobs_started():
                        await asyncio.gather(*self.tasks.values())
                        return None
                    if await self.pool.zcard(self.queue_name) == 0:
                        await asyncio.gather(*self.tasks.values())
                        return None
                self._full = self.job_counter >= self.max_jobs
                await self._idle(self.poll_delay_s - (loop.time() - before))
        finally:
            self._wake_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._wake_task
