"""Queue position and ETA, from the store (who is ahead, who is running), the recent run times of each
type, and the slots of the workers alive right now.

Queued: the free times of the live slots (now for an idle slot, the expected end for a running job) are
filled greedily with the jobs ahead, each taking its type's recent average; the job starts when the first
slot frees after that. Running: progress so far extrapolated (elapsed × (100 − p) / p) once past 5 %, else
the type's average minus the time elapsed. No live worker: the wait is unknown (null), never a made-up number.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

from .coordination import live_capacity
from .models import Job, JobStatus, now
from .queue import JobQueue
from .store.base import JobStore
from .tasks.registry import TaskRegistry

MAX_SIMULATED = 10_000


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

    async def duration(self, job_type: str, registry: TaskRegistry) -> float:
        """The type's average run time over its last 20 completed runs (its `typical_seconds` before any)."""
        cached = self._durations.get(job_type)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        recent = await self.store.recent_durations(job_type)
        if not recent:  # not cached: the first measurement should count at once
            return registry.get(job_type).typical_seconds if job_type in registry else 5.0
        value = sum(recent) / len(recent)
        self._durations[job_type] = (time.monotonic(), value)
        return value

    async def free_slots(self, registry: TaskRegistry) -> tuple[int, list[float]]:
        """Live capacity and, for each slot, the seconds until it is free (0 for idle ones): shared by every
        queued job's estimate, so a caller estimating many jobs at once can read it once."""
        try:
            capacity = await live_capacity(self.queue.redis, self.queue.queue_name)
        except Exception:
            capacity = 0
        if capacity <= 0:
            return 0, []
        t = now()
        slots = []
        for running in await self.store.running():
            d = await self.duration(running.type, registry)
            slots.append(max(0.0, d - (t - (running.started_at or t))))
        slots.sort()
        return capacity, slots[:capacity] + [0.0] * max(0, capacity - len(slots))

    async def estimate(
        self, job: Job, registry: TaskRegistry, *, free: tuple[int, list[float]] | None = None
    ) -> Estimate:
        if job.terminal:
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
        ahead = await self.store.queue_ahead(job)
        capacity, free_in = free if free is not None else await self.free_slots(registry)
        if capacity <= 0:
            return Estimate(position=ahead, capacity=0)
        slots = list(free_in)
        heapq.heapify(slots)
        for _ in range(min(ahead, MAX_SIMULATED)):
            heapq.heappush(slots, heapq.heappop(slots) + typical)
        wait = max(slots[0], (job.ready_at or t) - t, 0.0)
        return Estimate(position=ahead, wait=round(wait, 1), remaining=round(wait + typical, 1), capacity=capacity)
