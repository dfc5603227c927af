"""Live queue position and wait for watchers of queued jobs, without a store write per job start.

A job's place in the queue changes whenever a job ahead of it starts, which is no event of its own: logging
one for every queued job at every start would be O(queue) writes per start. Instead each web process runs one
ticker: every POSITION_PUSH_SECONDS it takes the queued jobs its own clients watch (as their last event said),
recomputes each one's place and wait (one store statement ranks the queue once for all of them; capacity and
running jobs read once per tick), and when that changed hands a `position` event to those clients only. It is
ephemeral: no seq, not in the job's Stream, never replayed (a client that reconnects gets a fresh snapshot
instead).
"""

from __future__ import annotations

import asyncio
import logging

from ..jobs import JobService
from ..models import Event, EventKind
from ..store.base import JobStore
from .gateway import Gateway

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
        owners = {job_id: user_id for user_id, job_ids in watched.items() for job_id in job_ids}
        # One pass over the queue for every watched job; those that moved on are not in it (their status events
        # tell the watchers).
        for job_id, (job, ahead) in (await self.store.queued_ranked(owners)).items():
            live.add(job_id)
            estimate = await self.jobs.estimates.estimate(job, self.jobs.registry, free=free, ahead=ahead)
            key = (job.seq, estimate.position, estimate.wait)
            if self._sent.get(job_id) == key:
                continue
            self._sent[job_id] = key
            data = {"queue": estimate.queue_dict(), "estimated_time_remaining": estimate.remaining}
            event = Event(job_id=job_id, seq=job.seq, kind=EventKind.POSITION, data=data)
            self.gateway.offer_local(owners[job_id], event)
            changed += 1
        for gone in set(self._sent) - live:
            del self._sent[gone]
        return changed
