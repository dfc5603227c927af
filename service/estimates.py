"""Queue position and ETA, from the store (who is ahead, who is running), the recent run times of each
type, and the slots of the workers alive right now.

Queued: the free times of the live slots (now for an idle slot, the expected end for a running job) are
filled greedily with the jobs ahead, each taking its type's recent average; the job starts when the first
slot frees after that. Running: progress so far extrapolated (elapsed × (100 − p) / p) once past 5 %, else
the type's average minus the time elapsed. No live worker: the wait is unknown (null), never a made-up number.

Each type's average, the live capacity and the running jobs (type and start) are read at most once per
`cache_seconds` (1 s) per web process, not on every request, and by one read when many requests find them stale
together (`_once`): a poll or a submit then costs no extra store or Redis call for them (reading every running
job's row per submit was most of a submit's CPU with 50 jobs running). Queue position is never cached; the caller
may pass it in when it read it with the job (one statement instead of two).
The greedy fill costs O(slots log slots) whatever the position, not a heap step per job ahead (`_fill`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .coordination import live_capacity
from .models import Job, JobStatus, now
from .queue import JobQueue
from .store.base import JobStore
from .tasks.registry import TaskRegistry

MAX_SIMULATED = 10_000
T = TypeVar("T")


async def _call(read: Callable[[], Awaitable[T]]) -> T:
    return await read()


@dataclass(frozen=True, slots=True)
class Estimate:
    position: int | None = None  # jobs that start before this one
    wait: float | None = None  # seconds until it starts
    remaining: float | None = None  # seconds until it is done
    capacity: int = 0  # job slots of the live workers

    def queue_dict(self) -> dict[str, Any]:
        return {"position": self.position, "estimated_wait": self.wait, "workers_capacity": self.capacity}


class QueueEstimator:
    def __init__(self, store: JobStore, queue: JobQueue, *, cache_seconds: float = 1.0) -> None:
        self.store = store
        self.queue = queue
        self.cache_seconds = cache_seconds
        self._durations: dict[str, tuple[float, float]] = {}
        self._unmeasured: set[str] = set()  # types whose cached duration is the `typical_seconds` fallback
        self._capacity: tuple[float, int] | None = None
        self._running: tuple[float, list[tuple[str, float | None]]] | None = None  # (read at, [(type, started_at)])
        self._reading: dict[str, asyncio.Future[Any]] = {}  # the store reads under way, by what they refresh

    def _once(self, key: str, read: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """The refresh `key` under way, else `read()` started: when a cache expires under load, the requests that
        find it stale together share one store read. (Each made its own: 50 reads of every running job's row at
        once, then 50 conversions, at each expiry, the most of the web's CPU in the e2e profile after the POST.)"""
        pending = self._reading.get(key)
        loop = asyncio.get_running_loop()
        if pending is None or pending.get_loop() is not loop:
            # not in this request's context (its log fields, its span): it serves every request waiting on it
            pending = loop.create_task(_call(read), context=contextvars.Context())
            self._reading[key] = pending
            pending.add_done_callback(functools.partial(self._read_done, key))
        return asyncio.shield(pending)  # a waiter that goes away does not cancel the others' read

    def _read_done(self, key: str, done: asyncio.Future[Any]) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
        if not done.cancelled():
            done.exception()  # its waiters got it; if none is left, it is not "never retrieved"

    async def duration(self, job_type: str, registry: TaskRegistry) -> float:
        """The type's average run time over its last 20 completed runs (its `typical_seconds` before any)."""
        cached = self._durations.get(job_type)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        recent = await self._once(f"durations:{job_type}", functools.partial(self.store.recent_durations, job_type))
        if recent:
            value = sum(recent) / len(recent)
            self._unmeasured.discard(job_type)
        else:  # cached too (asking per request buys nothing), until a run of the type is seen to complete
            value = registry.get(job_type).typical_seconds if job_type in registry else 5.0
            self._unmeasured.add(job_type)
        self._durations[job_type] = (time.monotonic(), value)
        return value

    def _seen_completed(self, job_type: str) -> None:
        """A completed run exists now: a cached fallback must not outlive it (the first measurement counts at once)."""
        if job_type in self._unmeasured:
            self._unmeasured.discard(job_type)
            self._durations.pop(job_type, None)

    def note_capacity(self, capacity: int) -> None:
        """A fresh reading of the live slots, taken on the way (the submit script reads them)."""
        self._capacity = (time.monotonic(), capacity)

    async def capacity(self) -> int:
        """Job slots of the live workers, as of at most `cache_seconds` ago; 0 when Redis cannot say."""
        cached = self._capacity
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        try:
            value = await live_capacity(self.queue.redis, self.queue.queue_name)
        except Exception:
            return 0  # not cached: Redis trouble should not hide workers once it is back
        self.note_capacity(value)
        return value

    async def free_slots(self, registry: TaskRegistry) -> tuple[int, list[float]]:
        """Live capacity and, for each slot, the seconds until it is free (0 for idle ones): shared by every
        queued job's estimate, so a caller estimating many jobs at once can read it once."""
        capacity = await self.capacity()
        if capacity <= 0:
            return 0, []
        cached = self._running
        if cached is None or time.monotonic() - cached[0] >= self.cache_seconds:
            cached = await self._once("running", self._read_running)
        typical = {job_type: 0.0 for job_type, _ in cached[1]}  # each type's average, awaited once per type, not
        for job_type in typical:  # once per running job (a submit's estimate read it for each of 50 running jobs)
            typical[job_type] = await self.duration(job_type, registry)
        t = now()
        slots = sorted([max(0.0, typical[job_type] - (t - (started_at or t))) for job_type, started_at in cached[1]])
        return capacity, slots[:capacity] + [0.0] * max(0, capacity - len(slots))

    async def _read_running(self) -> tuple[float, list[tuple[str, float | None]]]:
        jobs = await self.store.running()
        self._running = (time.monotonic(), [(j.type, j.started_at) for j in jobs])
        return self._running

    async def estimate(
        self,
        job: Job,
        registry: TaskRegistry,
        *,
        free: tuple[int, list[float]] | None = None,
        ahead: int | None = None,
    ) -> Estimate:
        """`free`: free_slots() if the caller read it already; `ahead`: the job's queue position if the caller read
        it with the job (else each is read here)."""
        if job.terminal:
            if job.status is JobStatus.COMPLETED:
                self._seen_completed(job.type)
            return Estimate()
        typical = await self.duration(job.type, registry)
        t = now()
        if job.status is JobStatus.PROCESSING:
            elapsed = max(0.0, t - (job.started_at or t))
            if job.percentage >= 5:
                left = elapsed * (100 - job.percentage) / job.percentage
            else:
                left = max(0.0, typical - elapsed)
            return Estimate(remaining=round(left, 1))
        if ahead is None:
            ahead = await self.store.queue_ahead(job)
        capacity, free_in = free if free is not None else await self.free_slots(registry)
        if capacity <= 0:
            return Estimate(position=ahead, capacity=0)
        wait = max(_fill(free_in, min(ahead, MAX_SIMULATED), typical), (job.ready_at or t) - t, 0.0)
        return Estimate(position=ahead, wait=round(wait, 1), remaining=round(wait + typical, 1), capacity=capacity)


def _fill(free_in: list[float], ahead: int, typical: float) -> float:
    """When the first slot frees after `ahead` jobs of `typical` seconds each took the earliest free slot in turn:
    the same answer as a heap step per job, in O(slots log slots). Once the slots' free times lie within `typical`
    of each other, each round of len(slots) jobs takes every slot once and moves each by `typical`, so the rounds
    are skipped by arithmetic; until then (a slot far behind the others) the heap steps one job at a time."""
    slots = list(free_in)
    if not slots:
        return 0.0
    heapq.heapify(slots)
    top = max(slots)
    while ahead > 0 and top - slots[0] > typical:
        moved = heapq.heappop(slots) + typical
        heapq.heappush(slots, moved)
        top = max(top, moved)
        ahead -= 1
    rounds, rest = divmod(ahead, len(slots))
    return sorted(slots)[rest] + rounds * typical
