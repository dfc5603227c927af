"""A worker's fenced writes wait out a store outage instead of failing the job or losing its outcome.

A run's progress checkpoints, its final write (`finish`) and its hand-backs (`requeue`) are fenced by its lease
token, so writing one again after the store comes back is safe: it lands if the run still holds the lease, and
changes nothing if the lease lapsed meanwhile and another worker took the job over (the run then stops as lease
lost). So on `StoreUnavailable` these writes are tried again, with a growing pause, until the store answers; the
run pauses with them, keeping its job. The heartbeat's `renew` is not patient: it must notice an outage longer than
the lease, and stop the run (its job is then taken over once the store is back: one terminal event either way).

At shutdown the patience ends (`give_up`, once SHUTDOWN_GRACE is over): a write the store cannot take then fails at
once, so a worker stopped during an outage exits instead of waiting for the store; its runs' leases lapse and
another worker's sweeper hands their jobs on (nothing is lost, the attempt is not refunded).

What is not covered: a write that committed but whose answer the restart cut off is tried again and refused (its
token is spent), so the run stops as lease lost although its outcome is stored; a progress write so repeated may
append its piece of output twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import StoreUnavailable
from ..models import Job

log = logging.getLogger("aijobs.store")

FIRST_PAUSE = 0.2
LONGEST_PAUSE = 2.0


class PatientWrites:
    """The store, with progress/finish/requeue retried through an outage; every other call passed through."""

    def __init__(self, store: Any, *, first: float = FIRST_PAUSE, longest: float = LONGEST_PAUSE) -> None:
        self._store = store
        self._first = first
        self._longest = longest
        self._patient = True

    def give_up(self) -> None:
        """From now on, a write the store cannot take fails (StoreUnavailable) instead of waiting: a held one fails
        at its next try."""
        self._patient = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def _patiently(self, what: str, job_id: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        pause = self._first
        waited = 0.0
        while True:
            try:
                result = await call(*args, **kwargs)  # the write's answer: None when it was refused
            except StoreUnavailable as exc:
                if not self._patient:
                    raise
                if waited == 0.0:
                    log.warning(
                        "store unavailable: write held until it answers",
                        extra={"job_id": job_id, "write": what, "error": repr(exc.__cause__ or exc)},
                    )
                await asyncio.sleep(pause)
                waited += pause
                pause = min(pause * 2, self._longest)
                continue
            if waited and result is None:  # fenced: the lease lapsed meanwhile and the job was taken over
                log.warning(
                    "store back: write refused, the lease was lost meanwhile (the job was taken over)",
                    extra={"job_id": job_id, "write": what, "waited": round(waited, 1)},
                )
            elif waited:
                log.info("store back: write done", extra={"job_id": job_id, "write": what, "waited": round(waited, 1)})
            return result

    async def progress(self, job_id: str, token: str, **kwargs: Any) -> int | None:
        return await self._patiently("progress", job_id, self._store.progress, job_id, token, **kwargs)

    async def finish(self, job_id: str, token: str, **kwargs: Any) -> Job | None:
        return await self._patiently("finish", job_id, self._store.finish, job_id, token, **kwargs)

    async def requeue(self, job_id: str, token: str, **kwargs: Any) -> Job | None:
        return await self._patiently("requeue", job_id, self._store.requeue, job_id, token, **kwargs)
