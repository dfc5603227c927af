"""arq's Worker, woken by enqueue instead of only by its poll timer.

arq polls its queue every `poll_delay` seconds, so an idle worker meets a new job half a poll late on
average (25 ms at our 50 ms default, 250 ms at arq's 0.5 s). JobQueue.enqueue PUBLISHes on the queue's
wake channel in the same Lua call that adds the job; this worker listens on that channel and polls at
once when told. The timer stays as the safety net: a lost wake-up (pub/sub is at-most-once, or the
listener is reconnecting) or a deferred retry coming due costs at most one `poll_delay`, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq import Worker
from arq.connections import create_pool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .queue import wake_channel

log = logging.getLogger("aijobs.worker")


class WakeableWorker(Worker):
    """A Worker whose idle wait ends early when a job is enqueued on its queue."""

    _wake: asyncio.Event | None = None
    _wake_task: asyncio.Task[None] | None = None
    _paused_until: float = 0.0

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
                await self._idle(self.poll_delay_s - (loop.time() - before))
        finally:
            self._wake_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._wake_task
