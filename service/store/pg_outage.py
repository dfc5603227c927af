"""PostgreSQL known to be down: requests fail at once with 503 instead of each waiting out the pool's timeout.

Without this, during an outage every request that needs the store waits the pool's acquire timeout (5 s) for a
connection that cannot come, then answers `503 store_unavailable`: slow for the user, and every waiting request holds
a task and a socket. Here a connection attempt that fails (the pool's own, or a probe's) marks the server down; while
it is down, `check()` raises `StoreUnavailable` at once, without touching the pool, and one probe task per store tries
a fresh connection (0.1 s, doubling to 1 s) until the server answers, which ends the outage: the next request goes to
the pool again. Only a failed *connect* marks the server down, never a statement's error nor a pool that is merely
busy: a pool timeout only starts a probe, and it is the probe's own connect that decides.

A request already waiting on the pool when the server went down still waits its timeout; so does the first request
after a silent path (packets dropped), whose connect takes its `connect_timeout` to fail. `DOWN_WINDOW` bounds the
state if no probe ends (never expected: each try is bounded): a failure older than that lets requests through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ..errors import StoreUnavailable

log = logging.getLogger("aijobs.store")

DOWN_WINDOW = 15.0  # seconds a failed connect keeps the server "down" unless a probe fails again or succeeds first
PROBE_TIMEOUT = 3.0  # one probe's connect and `SELECT 1`, at most
FIRST_PROBE_PAUSE = 0.1
LONGEST_PROBE_PAUSE = 1.0
MESSAGE = (
    "The job store (PostgreSQL) is unreachable; nothing was done. The service is reconnecting on its own: "
    "try again in a few seconds."
)


class Outage:
    """Whether this process knows its PostgreSQL to be down, and the one probe that finds out when it is back."""

    def __init__(self, probe: Callable[[], Awaitable[None]], *, window: float = DOWN_WINDOW) -> None:
        self._probe = probe  # connects afresh and runs `SELECT 1`; raises if the server does not answer
        self._window = window
        self._failed_at: float | None = None  # monotonic time of the last failed connect; None: not known down
        self._since: float | None = None  # when this outage began (for the log)
        self._task: asyncio.Task[None] | None = None
        self.fast_refusals = 0  # requests answered 503 at once (for the tests and the logs)

    @property
    def down(self) -> bool:
        return self._failed_at is not None and time.monotonic() - self._failed_at < self._window

    def check(self) -> None:
        """Raise StoreUnavailable at once while the server is known down."""
        if self.down:
            self.fast_refusals += 1
            raise StoreUnavailable(MESSAGE)

    def connect_failed(self, exc: BaseException) -> None:
        """A connection attempt failed: the server is down until a probe connects."""
        now = time.monotonic()
        if self._failed_at is None:
            self._since = now
            log.warning(
                "store unreachable: requests answered 503 at once until it answers again", extra={"error": repr(exc)}
            )
        self._failed_at = now
        self._start_probe()

    def suspect(self) -> None:
        """No connection came in time (the server may be down, or the pool only busy): a probe finds out."""
        self._start_probe()

    def _start_probe(self) -> None:
        if self._task is not None and not self._task.done():
            return
        with contextlib.suppress(RuntimeError):  # no running loop (a sync caller): the next failure starts it
            self._task = asyncio.get_running_loop().create_task(self._probing(), name="aijobs-store-probe")

    async def _probing(self) -> None:
        pause = FIRST_PROBE_PAUSE
        while True:
            try:
                await asyncio.wait_for(self._probe(), PROBE_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connect_failed(exc)  # the task is this one: no second probe is started
                await asyncio.sleep(pause)
                pause = min(pause * 2, LONGEST_PROBE_PAUSE)
                continue
            if self._failed_at is not None:
                down_for = time.monotonic() - (self._since or time.monotonic())
                log.info("store reachable again", extra={"down_for": round(down_for, 2)})
            self._failed_at = self._since = None
            return

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
