"""Redis-silent skipping: best-effort calls fail at once while Redis's path is silent, instead of each waiting out
the socket timeout.

A path to Redis that drops packets (a partial partition: no reset, no refusal) makes every command wait its whole
REDIS_SOCKET_TIMEOUT before failing. A running job publishes ten to twenty events, and asks the governor before and
after each provider call; paying five seconds for each would stretch a six-second job to over a minute, although the
store, which holds its state, answers. So after a call fails with a timeout, the calls that opted in (events, the
governor: see `ScriptBatch(skip_when_silent=True)`) fail at once with `RedisSilent` (a `ConnectionError`, so their
Redis-down paths apply) and one background probe PINGs Redis every QUIET_SECONDS until it answers. Then the
`on_back` callbacks run (the event log re-announces the jobs whose events it skipped: see events.py).

Only a timeout starts it: a refused connection (Redis down, restarting) already fails at once, and the callers'
own retries there are left as they were. One gate per Redis client (its connection pool), shared by every user.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("aijobs.redis")

QUIET_SECONDS = 2.0  # between probes while Redis is silent
PROBE_SECONDS = 5.0  # one probe waits at most this long (also bounded by the pool's own socket timeout)


class RedisSilent(RedisConnectionError):
    """Not sent: Redis's path was silent (a call timed out) and no probe has got an answer since."""


def is_silence(exc: BaseException) -> bool:
    """A timeout (Redis's path dropped what was sent), or a call skipped for one."""
    return isinstance(exc, RedisTimeoutError | TimeoutError | RedisSilent)


class Silence:
    """Whether a Redis client's path is silent; see the module docstring."""

    def __init__(self, redis: Redis, *, quiet: float = QUIET_SECONDS, probe_timeout: float = PROBE_SECONDS) -> None:
        self._redis = weakref.ref(redis)
        self.quiet = quiet
        self.probe_timeout = probe_timeout
        self.silent = False
        self.skipped = 0  # calls failed at once, since the process started
        self._probe: asyncio.Task[None] | None = None
        self._on_back: list[Callable[[], Awaitable[None]]] = []

    def on_back(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` each time Redis answers again after a silence."""
        self._on_back.append(callback)

    def check(self) -> None:
        """Raise RedisSilent while Redis is silent."""
        if self.silent:
            self.skipped += 1
            raise RedisSilent("Redis's path is silent; skipped (a probe is waiting for it to answer)")

    def saw(self, exc: BaseException) -> None:
        """A call failed with `exc`: a timeout makes Redis silent until a probe gets an answer."""
        if self.silent or not isinstance(exc, RedisTimeoutError | TimeoutError):
            return
        self.silent = True
        log.warning("Redis timed out; best-effort calls are skipped until it answers again", extra={"error": repr(exc)})
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._wait_for_answer(), context=contextvars.Context())

    async def _wait_for_answer(self) -> None:
        tries = 0
        while True:
            await asyncio.sleep(self.quiet)
            redis = self._redis()
            if redis is None:
                return
            tries += 1
            try:
                async with asyncio.timeout(self.probe_timeout):
                    await redis.ping()
            except Exception:  # still silent (or down): the next probe is QUIET_SECONDS away
                continue
            self.silent = False
            log.warning("Redis answers again; best-effort calls go to it", extra={"probes": tries})
            for callback in list(self._on_back):
                try:
                    await callback()
                except Exception as exc:
                    log.warning("a Redis-back callback failed", extra={"error": repr(exc)})
            return


_gates: weakref.WeakKeyDictionary[Redis, Silence] = weakref.WeakKeyDictionary()


def silence_of(redis: Redis) -> Silence:
    """The one gate of this client (made on first use)."""
    gate = _gates.get(redis)
    if gate is None:
        gate = _gates[redis] = Silence(redis)
    return gate
