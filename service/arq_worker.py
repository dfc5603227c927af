"""arq's Worker, woken by enqueue instead of only by its poll timer.

arq polls its queue every `poll_delay` seconds, so an idle worker meets a new job half a poll late on
average (25 ms at our 50 ms default, 250 ms at arq's 0.5 s). JobQueue.enqueue pushes a token on the queue's
wake list in the same Lua call that adds the job. An idle worker with a free slot waits for it with
`BLPOP wake <rest of the poll delay>` and sends its take script in the same write, behind the BLPOP on the same
connection: Redis runs a client's commands in order, so the take runs the moment the pop returns (a token came)
or times out (the poll timer), with no round trip and no turn of the loop between the wake-up and the take
(`_wait_and_take`). The wait is the poll: one Redis call per idle cycle, as before. A lost token (Redis
restarted) or a deferred retry coming due costs at most one `poll_delay`, as before; a worker whose slots are all
taken waits on its own event instead (a slot freeing up), and a take that leaves due jobs behind (no slot free)
puts a token back, so another idle worker looks at once.

Starting jobs: arq takes each job with WATCH, EXISTS, ZSCORE and MULTI/PSETEX/EXEC (four round trips per job).
`start_jobs` here takes every job that fits in the free slots with one Lua call that does the same checks
(not already in progress, still on the queue, due) and sets the same in-progress keys, atomically.
A busy worker whose every slot is taken polls again as soon as one frees up, not a `poll_delay` later.

Mirrors arq 0.28 (written against 0.28.0, and pinned to 0.28.x in pyproject.toml): it replaces four of arq's
internals (`main`, `_poll_iteration`, `start_jobs`, `_release_sem_dec_counter_on_complete`), repeats the first
part of `run_job` and calls `run_job`, `finish_job` and `finish_failed_job`, whose signatures
tests/test_arq_worker.py checks against the installed arq. Should one of these fast paths fail anyway (anything
but a lost Redis connection, which arq's own path would meet too), the worker logs it once and falls back for
good to arq's own poll, start, run and finish (`_fall_back`). A take script that failed halfway may leave a job
marked in progress: arq's path takes it again once that mark expires (`in_progress_timeout_s`), late, not lost.
So may a worker stopped during its wait, should a token come in the very instant it drops the waiting connection:
the take behind the wait may have run with nobody left to read its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry, Worker
from arq.connections import ArqRedis, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import SerializationError, deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Function, RetryJob
from hiredis import pack_command
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .metrics import redis_errors_of
from .queue import wake_channel
from .script_batch import BatchedScript, ScriptBatch

log = logging.getLogger("aijobs.worker")

ARQ_VERSION = "0.28"  # the arq whose internals this module mirrors (pinned in pyproject.toml)
# Errors arq's own path would meet just the same: they propagate, as in arq, and do not switch paths.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)

# A poll that met a lost Redis connection is tried again after this, doubling up to the max, until Redis answers.
REDIS_RETRY_FIRST = 0.05
REDIS_RETRY_MAX = 1.0

WAIT_MIN_SECONDS = 0.001  # BLPOP's timeout resolution (0 would mean forever): a shorter wait polls at once

FINISH_BATCH = 1000  # finished jobs removed per Redis call (Lua's unpack has a limit)

# What taking a job does, for both scripts below: the same checks as arq's start_jobs (not already in progress,
# still on the queue, due), the in-progress key set, then the first step of arq's run_job (read the job, count
# the try) in the same call. Keys are built from their prefixes here, as arq's are: arq runs on one Redis,
# never a cluster. ARGV prefix: now (ms), in-progress ttl (ms), then the in-progress, job and retry key prefixes.
# Each job taken adds [job id, score, job data ('' when gone), try] to `taken`.
_TAKE_ONE_LUA = """
local function take(id, score, taken)
  local key = ARGV[3] .. id
  if redis.call('EXISTS', key) == 1 then return false end
  redis.call('PSETEX', key, ARGV[2], '1')
  local data = redis.call('GET', ARGV[4] .. id) or ''
  local try = redis.call('INCR', ARGV[5] .. id)
  redis.call('EXPIRE', ARGV[5] .. id, 88400)
  taken[#taken + 1] = id
  taken[#taken + 1] = score
  taken[#taken + 1] = data
  taken[#taken + 1] = try
  return true
end
"""
# Take these jobs (ARGV after the prefixes: the job ids) where still due. KEYS: the queue.
_START_LUA = (
    _TAKE_ONE_LUA
    + """
local taken = {}
for i = 6, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then take(ARGV[i], score, taken) end
end
return taken
"""
)
# Read the due jobs and take those that fit the free slots, in one call (an idle worker's poll).
# KEYS: the queue, its wake list; ARGV after the prefixes: free slots, read limit, how long (ms) the call may have
# waited in Redis behind a BLPOP since `now` was read (0: it did not). "Due" is at `now` moved on by the time
# since, read from Redis's clock and never past now + wait (a deferred job is not taken more than that early).
# Due jobs left without a slot put a token back on the wake list, for another idle worker.
# Returns {taken, rest: [job id, ...]} (rest: due, but no slot was free).
_TAKE_LUA = (
    _TAKE_ONE_LUA
    + """
local now = tonumber(ARGV[1])
local waited = tonumber(ARGV[8])
if waited > 0 then
  local t = redis.call('TIME')
  local server = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  now = math.min(now + waited, math.max(now, server))
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[7])
local taken, rest = {}, {}
local free = tonumber(ARGV[6])
for i = 1, #due, 2 do
  if free > 0 then
    if take(due[i], due[i + 1], taken) then free = free - 1 end
  else
    rest[#rest + 1] = due[i]
  end
end
if #rest > 0 then
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], -1, -1)
end
return {taken, rest}
"""
)
# What a finished job leaves behind, for a whole batch of jobs: every key of each (in-progress, retry, job),
# and its queue entry. KEYS: the queue, then the keys to delete; ARGV: the job ids.
_FINISHED_LUA = """
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('DEL', unpack(KEYS, 2))
return 0
"""


class WakeableWorker(Worker):
    """A Worker whose idle wait ends early when a job is enqueued on its queue."""

    _wake: asyncio.Event | None = None  # set when a slot frees up on a worker whose slots were all taken
    _waiter: Any = None  # the pooled connection `_wait_and_take` blocks on, held from the first wait to the end
    _taken_early: list[Any] | None = None  # what the take behind the last wait took, for the next poll to run
    _wait_failed_at = float("-inf")  # loop time the waiting connection last failed: the timer alone, for a while
    _paused_until: float = 0.0
    _start_script: Callable[..., Awaitable[Any]] | None = None
    _take_script: Callable[..., Awaitable[Any]] | None = None
    _finished_script: Callable[..., Awaitable[Any]] | None = None
    _scripts: ScriptBatch | None = None
    _finisher: asyncio.Task[None] | None = None
    _redis_errors = 0  # polls in a row that met a lost Redis connection
    inline_functions: frozenset[str] = frozenset()  # run in the job's own task, finished in batches
    arq_path = False  # a fast path failed: arq's own poll, start, run and finish from then on

    def __init__(
        self,
        *args: Any,
        inline_functions: frozenset[str] = frozenset(),
        pool_factory: Callable[[], Awaitable[ArqRedis]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.inline_functions = inline_functions
        self.pool_factory = pool_factory  # makes the pool in `main` (redis_url.arq_pool) instead of arq's create_pool
        self._finished: list[tuple[str, asyncio.Future[None]]] = []

    _full = False  # every slot was taken at the end of the last poll

    def _fall_back(self, where: str, exc: BaseException) -> None:
        """A fast path failed: use arq's own code from now on (logged once, with the error)."""
        if self.arq_path:
            return
        self.arq_path = True
        log.error(
            "worker fast path failed in %s; this worker now uses arq's own poll, start and finish "
            "(arq's internals may have changed: check the arq pin and tests/test_arq_worker.py)",
            where,
            exc_info=exc,
        )

    def _release_sem_dec_counter_on_complete(self) -> None:
        """A slot freed up: if the last poll found none, poll now rather than at the next timer tick."""
        super()._release_sem_dec_counter_on_complete()
        if self._full and self._wake is not None:
            self._full = False
            self._wake.set()

    def _batched(self, source: str) -> BatchedScript:
        """redis-py's own per-call path cost more CPU than the script: see BatchedScript."""
        if self._scripts is None:
            self._scripts = ScriptBatch(self.pool)
        return BatchedScript(self._scripts, source)

    def _prefixes(self, now_ms: int | None = None) -> list[str | int]:
        return [
            timestamp_ms() if now_ms is None else now_ms,
            int(self.in_progress_timeout_s * 1000),
            in_progress_key_prefix,
            job_key_prefix,
            retry_key_prefix,
        ]

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Start these jobs as slots free up, taking all that fit the free slots in one Redis call each time."""
        if self.arq_path:
            return await super().start_jobs(job_ids)
        if self._start_script is None:
            self._start_script = self._batched(_START_LUA)
        pending = [j.decode() for j in job_ids]
        while pending:
            await self.sem.acquire()  # wait for a free slot, as arq does, then count them all
            self.sem.release()
            free = self.max_jobs - self.job_counter
            if free <= 0:
                return None
            batch, pending = pending[:free], pending[free:]
            try:
                taken = await self._start_script(keys=[self.queue_name], args=[*self._prefixes(), *batch])
            except _TRANSIENT:
                raise
            except Exception as exc:
                self._fall_back("start_jobs", exc)
                return await super().start_jobs([j.encode() for j in (*batch, *pending)])
            await self._run_taken(taken)
        return None

    async def _run_taken(self, taken: list[bytes]) -> None:
        """Run the jobs a script took ([job id, score, job data, try, ...]), each in a slot known to be free."""
        for i in range(0, len(taken), 4):
            job_id = taken[i].decode() if isinstance(taken[i], bytes) else str(taken[i])
            await self.sem.acquire()  # free at once: nothing else starts jobs meanwhile
            self.job_counter += 1
            task = self.loop.create_task(
                self._run_read(job_id, int(float(taken[i + 1])), taken[i + 2], int(taken[i + 3]))
            )
            task.add_done_callback(functools.partial(self._job_task_done, job_id))
            self.tasks[job_id] = task

    def _job_task_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        """Free the slot and forget the task at once: arq's poll scans every task for done ones (with 1,000
        running, that scan was a tenth of the I/O figure's CPU); a task that failed or was cancelled is kept for
        the poll to raise, as arq does."""
        self._release_sem_dec_counter_on_complete()
        if self.tasks.get(job_id) is task and not task.cancelled() and task.exception() is None:
            del self.tasks[job_id]

    async def _run_read(self, job_id: str, score: int, data: bytes, job_try: int) -> None:
        """arq's run_job for a job whose data and try the take script already read.

        A function in `inline_functions` runs in this task (no task of its own, no wait_for) and its finish goes
        to Redis with the other jobs finishing meanwhile, in one call. Anything else (a cron job, a job whose
        data is gone or unreadable) goes to arq's own run_job, which reads the job and counts the try itself.
        """
        plan = None
        if data and not self.arq_path:
            try:
                plan = self._inline_plan(job_id, score, data, job_try)
            except Exception as exc:
                self._fall_back("reading a job", exc)
        if plan is None:
            await self.pool.decr(retry_key_prefix + job_id)  # arq's run_job counts this try again
            return await self.run_job(job_id, score)
        function, args, kwargs, ctx, max_tries, timeout_s = plan
        if job_try > max_tries:
            log.warning("job %s: max retries %d exceeded", job_id, max_tries)
            self.jobs_failed += 1
            return await asyncio.shield(self.finish_failed_job(job_id, None))
        if self.on_job_start:
            await self.on_job_start(ctx)
        done, incr_score = True, None
        try:
            async with asyncio.timeout(timeout_s):
                await function.coroutine(ctx, *args, **kwargs)
        except Retry as exc:
            done = False
            if exc.defer_score:
                incr_score = exc.defer_score + (timestamp_ms() - score)
            self.jobs_retried += 1
        except (asyncio.CancelledError, RetryJob):
            done = False  # stopped (shutdown): it stays on the queue, to run again
            self.jobs_retried += 1
        except Exception:
            log.exception("job %s failed", job_id)
            self.jobs_failed += 1
        else:
            self.jobs_complete += 1
        if self.on_job_end:
            await self.on_job_end(ctx)
        try:
            if done:
                await asyncio.shield(self._finished_soon(job_id))
            else:
                await asyncio.shield(self._finish_again(job_id, incr_score))
        except _TRANSIENT as exc:  # the run itself is over and recorded in the store: only arq's bookkeeping is left
            log.warning(
                "job %s: its end could not be told to Redis (%r); its queue entry runs again once its in-progress "
                "mark expires, and the store's state decides what that run does",
                job_id,
                exc,
            )
        if self.after_job_end:
            await self.after_job_end(ctx)
        return None

    def _inline_plan(
        self, job_id: str, score: int, data: bytes, job_try: int
    ) -> tuple[Function, tuple[Any, ...], dict[str, Any], dict[str, Any], int, float] | None:
        """What arq's run_job would work out before calling an inline function: (function, args, kwargs, ctx,
        max tries, timeout), or None for a job arq's run_job must run itself."""
        if not self.retry_jobs or self.allow_abort_jobs:
            return None
        try:
            name, args, kwargs, enqueue_try, enqueue_time_ms = deserialize_job_raw(
                data, deserializer=self.job_deserializer
            )
        except SerializationError:
            return None
        if name not in self.inline_functions or enqueue_try:
            return None
        function = self.functions.get(name)
        if not isinstance(function, Function) or function.keep_result_s or self.keep_result_s:
            return None  # a result to keep: arq's run_job writes it
        if self.keep_result_forever or function.keep_result_forever:
            return None
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        ctx = {**self.ctx, "job_id": job_id, "job_try": job_try, "enqueue_time": ms_to_datetime(enqueue_time_ms)}
        ctx["score"] = score
        return function, tuple(args), dict(kwargs), ctx, max_tries, timeout_s

    async def _finish_again(self, job_id: str, incr_score: int | None) -> None:
        """arq's finish for a job that runs again: keep it queued (later, if deferred), free its in-progress key."""
        try:
            await self.finish_job(
                job_id,
                finish=False,
                result_data=None,
                result_timeout_s=None,
                keep_result_forever=False,
                incr_score=incr_score,
                keep_in_progress=None,
            )
        except _TRANSIENT:
            raise
        except Exception as exc:  # its signature changed: the same two writes, by hand
            self._fall_back("finish_job", exc)
            async with self.pool.pipeline(transaction=True) as tr:
                tr.delete(in_progress_key_prefix + job_id)
                if incr_score:
                    tr.zincrby(self.queue_name, incr_score, job_id)
                await tr.execute()

    def _finished_soon(self, job_id: str) -> asyncio.Future[None]:
        """Remove a finished job's keys and queue entry along with every other job finished meanwhile."""
        future: asyncio.Future[None] = self.loop.create_future()
        self._finished.append((job_id, future))
        if self._finisher is None or self._finisher.done():
            self._finisher = self.loop.create_task(self._send_finished())
        return future

    async def _send_finished(self) -> None:
        if self._finished_script is None:
            self._finished_script = self._batched(_FINISHED_LUA)
        while self._finished:
            batch, self._finished = self._finished[:FINISH_BATCH], self._finished[FINISH_BATCH:]
            ids = [job_id for job_id, _ in batch]
            keys = [self.queue_name]
            for job_id in ids:
                keys += (in_progress_key_prefix + job_id, retry_key_prefix + job_id, job_key_prefix + job_id)
            try:
                if self.arq_path:
                    await self._finish_each(ids)
                else:
                    try:
                        await self._finished_script(keys=keys, args=ids)
                    except _TRANSIENT:
                        raise
                    except Exception as exc:
                        self._fall_back("finishing jobs", exc)
                        await self._finish_each(ids)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def _finish_each(self, ids: list[str]) -> None:
        """arq's own finish of each job (the batch script's fallback)."""
        for job_id in ids:
            await self.finish_job(
                job_id,
                finish=True,
                result_data=None,
                result_timeout_s=None,
                keep_result_forever=False,
                incr_score=None,
                keep_in_progress=None,
            )

    async def _poll_iteration(self) -> None:
        """arq's poll, with the read of due jobs and the taking of those that fit in one Redis call."""
        early, self._taken_early = self._taken_early, None
        if early is not None:  # the take behind the last wait ran: its jobs are ours to run (whatever path), no take
            await self._start_taken(*early)
        elif self.arq_path or (self.burst and self.max_burst_jobs >= 0):
            return await super()._poll_iteration()
        elif self.allow_pick_jobs and self.job_counter < self.max_jobs:
            if self._take_script is None:
                self._take_script = self._batched(_TAKE_LUA)
            args = [*self._prefixes(), self.max_jobs - self.job_counter, self.queue_read_limit, 0]
            try:
                taken, rest = await self._take_script(keys=self._take_keys(), args=args)
            except _TRANSIENT:
                raise
            except Exception as exc:
                self._fall_back("the poll", exc)
                return await super()._poll_iteration()
            await self._start_taken(taken, rest)
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        if len(self.tasks) > self.job_counter:  # a done task is left only when it failed (or is arq's own)
            for job_id, t in list(self.tasks.items()):
                if t.done():
                    del self.tasks[job_id]
                    t.result()  # as arq: errors in run_job propagate
        await self.heart_beat()
        return None

    async def _start_taken(self, taken: list[Any], rest: list[Any]) -> None:
        await self._run_taken(taken)
        if taken:
            # Three turns of the loop before this poll's bookkeeping and the next wait (packing and sending it): the
            # jobs just started reach their store claim, their claims reach the store (a lone claim on an idle
            # writer runs on the loop as that turn ends: store/connection.py), and such a job its function, first.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        if rest:  # more are due than slots were free: start them as slots free up, as arq does
            await self.start_jobs(rest)

    def _take_keys(self) -> list[str]:
        return [self.queue_name, wake_channel(self.queue_name)]

    async def _redis_lost(self, exc: BaseException) -> None:
        """A poll met a lost Redis connection (Redis down, or a Sentinel failover under way): wait a little and poll
        again, with the running jobs going on meanwhile (the store holds their state). arq would end the worker."""
        if not self._redis_errors:
            log.warning("Redis unreachable; running jobs go on, polling again", extra={"error": repr(exc)})
        self._redis_errors += 1
        await asyncio.sleep(min(REDIS_RETRY_FIRST * 2 ** (self._redis_errors - 1), REDIS_RETRY_MAX))

    def pause(self, seconds: float) -> None:
        """Take no new job for `seconds` (the store could not claim one); running jobs go on."""
        self._paused_until = max(self._paused_until, asyncio.get_running_loop().time() + seconds)

    def _waits_in_redis(self, seconds: float) -> bool:
        """Whether this idle wait can be the BLPOP with the take behind it: a slot is free, jobs may be taken, and
        the waiting connection did not just fail (then the timer alone serves, for a poll delay or a second)."""
        return (
            seconds >= WAIT_MIN_SECONDS
            and not self.arq_path
            and not self.burst
            and self.allow_pick_jobs
            and self.job_counter < self.max_jobs
            and self.loop.time() - self._wait_failed_at > max(self.poll_delay_s, 1.0)
        )

    async def _wait_and_take(self, seconds: float) -> None:
        """Wait up to `seconds` for a wake token, and take the due jobs as it comes (or as the wait times out) in
        the same Redis call: BLPOP, then the take script, written together on a connection of our own. What it
        took waits in `_taken_early` for the next poll. A failure here is the wait's alone: the connection is
        dropped, the rest of the wait is the timer's, and the next poll meets Redis's state as arq's would."""
        free = self.max_jobs - self.job_counter
        now_ms = timestamp_ms()
        wait_ms = int(seconds * 1000) + 1
        take: tuple[Any, ...] = (
            "EVAL",
            _TAKE_LUA,
            2,
            *self._take_keys(),
            *self._prefixes(now_ms),
            free,
            self.queue_read_limit,
            wait_ms,
        )
        conn = self._waiter
        try:
            if conn is None:
                # the pool's, held for good: a Sentinel failover closes it with the pool's other connections
                # (redis_url.follow_primary), and the next wait reconnects to the new primary
                conn = self._waiter = await self.pool.connection_pool.get_connection()
            await conn.connect()  # at once if still connected
            pop: tuple[Any, ...] = ("BLPOP", wake_channel(self.queue_name), f"{seconds:.3f}")
            packed = pack_command(pop) + pack_command(take)
            await conn.send_packed_command(packed, check_health=False)
            # the pop's own wait, then as long as any reply may take (the socket timeout would cut a long wait short)
            bound = seconds + (conn.socket_timeout or 5.0)
            async with asyncio.timeout(bound):
                await conn.read_response(timeout=bound + 1, disconnect_on_error=False)  # the token, or nil
                answer = await conn.read_response(timeout=bound + 1, disconnect_on_error=False)
            if not isinstance(answer, list):  # a script error comes back as the exception, not raised
                raise answer if isinstance(answer, Exception) else RedisTimeoutError(f"take answered {answer!r}")
            self._taken_early = answer
        except BaseException as exc:
            # replies may be left unread: this connection is never used again as is. A cancel (shutdown) during the
            # wait leaves Redis to drop the BLPOP and the take behind it with the connection.
            if conn is not None:
                await conn.disconnect(nowait=True)
            if not isinstance(exc, Exception):
                raise
            self._wait_failed_at = self.loop.time()
            errors = redis_errors_of(self.pool)
            if errors is not None:
                errors.note(exc)  # counted as a pooled connection's failure would be
            if isinstance(exc, _TRANSIENT):
                log.warning("wake-up wait failed; polling on the timer meanwhile", extra={"error": repr(exc)})
            else:
                self._fall_back("the wait for a wake-up", exc)
            remaining = seconds - (self.loop.time() - self._wait_failed_at)
            if remaining > 0:
                await self._wait_locally(remaining)

    async def _wait_locally(self, seconds: float) -> None:
        """Sleep until the next poll is due or a slot frees up on a worker whose slots were all taken."""
        assert self._wake is not None
        if seconds > 0 and not self._wake.is_set():
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns normally when the task is cancelled
            # just as the wake-up comes, and the lost cancel left the worker polling on (a test's teardown hung)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()

    async def _idle(self, seconds: float) -> None:
        """Sleep until the next poll is due or a job is enqueued, whichever comes first (and then take, when the
        wait is in Redis)."""
        assert self._wake is not None
        if not self._wake.is_set():
            if self._waits_in_redis(seconds):
                await self._wait_and_take(seconds)
            else:
                await self._wait_locally(seconds)
        self._wake.clear()

    async def main(self) -> None:
        """arq's Worker.main with the fixed sleep between polls replaced by `_idle`."""
        if self._pool is None and self.pool_factory is not None:
            self._pool = await self.pool_factory()
        elif self._pool is None:
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
        loop = asyncio.get_running_loop()
        try:  # from here on: a cancel (even during a wait) also closes the waiting connection
            while True:
                self._wake.clear()  # anything enqueued from here on is seen by this iteration or wakes the next
                before = loop.time()
                if before < self._paused_until:
                    await asyncio.sleep(self._paused_until - before)
                    continue
                try:
                    await self._poll_iteration()
                    if self.burst:
                        if 0 <= self.max_burst_jobs <= self._jobs_started():
                            await asyncio.gather(*self.tasks.values())
                            return None
                        if await self.pool.zcard(self.queue_name) == 0:
                            await asyncio.gather(*self.tasks.values())
                            return None
                except _TRANSIENT as exc:
                    await self._redis_lost(exc)
                    continue
                if self._redis_errors:
                    log.warning("Redis back: taking jobs again", extra={"failed_polls": self._redis_errors})
                    self._redis_errors = 0
                self._full = self.job_counter >= self.max_jobs
                await self._idle(self.poll_delay_s - (loop.time() - before))
        finally:
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                await waiter.disconnect(nowait=True)
                await self.pool.connection_pool.release(waiter)
