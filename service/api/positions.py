"""Live queue position and wait for watchers of queued jobs, without a store write per job start.

A job's place in the queue changes whenever a job ahead of it starts, which is no event of its own: logging
one for every queued job at every start would be O(queue) writes per start. Instead each web process runs one
ticker: every POSITION_PUSH_SECONDS it takes the queued jobs its own clients watch (as their last event said),
recomputes each one's place and wait (one store read and one indexed count per job; capacity and running jobs
read once per tick), and when that changed hands a `position` event to those clients only. It is ephemeral:
no seq, not in the job's Stream, never replayed (a client that reconnects gets a fresh snapshot instead).
"""

from __future__ import annotations

import asyncio
import logging

from ..gateway import Gateway
from ..jobs import JobService
from ..models import Event, EventKind, JobStatus
from ..store.base import JobStore

log = logging.getLogger("aijobs.positions")


class PositionTicker:
    def __init__(self, *, gateway: Gateway, store: JobStore, jobs: JobService, interval: float) -> None:
        self.gateway = gateway
        self.store = store
        self.jobs = jobs
        self.interval = interval
        self._sent: dict[str, tuple[int, int | None, float | None]] = {}  # job → (seq, position, wait) last pushed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception as exc:  # the store or Redis hiccuped: the next tick tries again
                log.warning("position update failed", extra={"error": repr(exc)})

    async def tick(self) -> int:
        """Push fresh positions to this process's watchers of queued jobs; returns how many jobs changed."""
        watched = self.gateway.watched_queued()
        if not watched:
            self._sent.clear()
            return 0
        free = await self.jobs.estimates.free_slots(self.jobs.registry)
        changed = 0
        live: set[str] = set()
        for user_id, job_ids in watched.items():
            for job_id in job_ids:
                found = await self.store.get_owned_ranked(job_id, user_id)  # the job and its place: one statement
                if found is None or found[0].status is not JobStatus.QUEUED:
                    continue  # it moved on: its status event tells the watchers
                job, ahead = found
                live.add(job_id)
                estimate = await self.jobs.estimates.estimate(job, self.jobs.registry, free=free, ahead=ahead)
                key = (job.seq, estimate.position, estimate.wait)
                if self._sent.get(job_id) == key:
                    continue
                self._sent[job_id] = key
                data = {"queue": estimate.queue_dict(), "estimated_time_remaining": estimate.remaining}
                self.gateway.offer_local(user_id, Event(job_id=job_id, seq=job.seq, kind=EventKind.POSITION, data=data))
                changed += 1
        for gone in set(self._sent) - live:
            del self._sent[gone]
        return changed
