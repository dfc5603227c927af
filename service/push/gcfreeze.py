"""Keep full garbage collections short with thousands of open streams: freeze what they hold once they settle.

CPython's full (generation 2) collection walks every tracked object, and each open stream holds a hundred or so
(its protocol, tasks, coroutine frames, watch, subscriber). At 10,000 WebSockets one full collection measured
seconds on a loaded 2-core machine, and every event of every client waits behind it. Thresholds cannot help: a
full collection that runs still walks everything, and the 25 % rule of CPython 3.11/3.12 already spaces them out.
`gc.freeze()` moves every object tracked now into a permanent generation that collections skip, so the next full
collection walks only what was made since.

When: once the number of open streams has stayed put (within 1 %) for `settle_seconds` after growing by at least
`MIN_GROWTH` since the last freeze (not mid-storm, when most objects are still young). The cost: objects frozen
are never collected as cycles, so a stream that closes after a freeze leaves what of it only the collector could
free (cycles) until `gc.unfreeze()`. Once half the streams open at the freeze have closed, everything is unfrozen
(the next full collection reclaims them, over a smaller heap) and frozen again at the next settle.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("aijobs.gc")

POLL_SECONDS = 0.5
MIN_GROWTH = 100  # streams opened since the last freeze before another is worth it
STEADY = 0.01  # "stayed put": within this share of the count (or one stream)


class GcFreezer:
    __slots__ = ("count", "settle_seconds", "frozen_at", "freezes", "unfreezes", "_task", "_last", "_steady_for")

    def __init__(self, count: Callable[[], int], settle_seconds: float) -> None:
        self.count = count  # open streams now (the gateway's connections)
        self.settle_seconds = settle_seconds
        self.frozen_at = 0  # streams open at the last freeze (0: nothing frozen by us)
        self.freezes = 0
        self.unfreezes = 0
        self._task: asyncio.Task[None] | None = None
        self._last = 0
        self._steady_for = 0.0

    def start(self) -> None:
        if self.settle_seconds > 0:
            self._task = asyncio.create_task(self._run(), name="aijobs-gc-freeze")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.frozen_at:
            gc.unfreeze()
            self.frozen_at = 0

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            self.step(self.count(), POLL_SECONDS)

    def step(self, now: int, elapsed: float) -> None:
        """One look at the stream count, `elapsed` seconds after the last."""
        if abs(now - self._last) <= max(1, int(self._last * STEADY)):
            self._steady_for += elapsed
        else:
            self._steady_for = 0.0
        self._last = now
        if self.frozen_at and now <= self.frozen_at // 2:
            gc.unfreeze()  # half of what was frozen has closed: let the collector reclaim their cycles
            self.unfreezes += 1
            log.info("gc unfrozen", extra={"streams": now, "frozen_at": self.frozen_at})
            self.frozen_at = 0
        if self._steady_for >= self.settle_seconds and now - self.frozen_at >= MIN_GROWTH:
            gc.freeze()
            self.freezes += 1
            self.frozen_at = now
            log.info("gc frozen", extra={"streams": now, "objects": gc.get_freeze_count()})
