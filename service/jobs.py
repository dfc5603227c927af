"""Submitting and describing jobs: the rules between the HTTP layer and the store, queue and event log."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from typing import Any

from . import tracing
from .admit import Admission
from .coordination import publish_cancel
from .errors import JobRequestError, StoreUnavailable
from .estimates import Estimate, QueueEstimator
from .events import EventLog, announcement
from .metrics import Metrics
from .models import Event, EventKind, Job, JobStatus
from .queue import DEFAULT_PRIORITY, JobQueue
from .schema import ValidationError, as_integer, to_dict
from .store.base import JobStore
from .tasks import TaskRegistry, UnknownTaskType

log = logging.getLogger("aijobs.jobs")


IDEMPOTENCY_TTL = 24 * 3600.0


class TooManyActive(Exception):
    """The store refused the job: its user already has `max_active` jobs queued or running. Nothing was written."""


class JobService:
    def __init__(
        self,
        *,
        store: JobStore,
        queue: JobQueue,
        events: EventLog,
        registry: TaskRegistry,
        max_attempts: int,
        max_wait: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.store = store
        self.queue = queue
        self.events = events
        self.registry = registry
        self.max_attempts = max_attempts
        self.max_wait = max_wait  # 0: each type's own
        self.estimates = QueueEstimator(store, queue)
        self.admission = Admission(events, queue)

    def validate(self, body: Any) -> tuple[str, dict[str, Any], int]:
        if not isinstance(body, dict):
            raise JobRequestError("invalid_body", "The request body must be a JSON object.", status=400)
        unknown = sorted(set(body) - {"type", "input", "priority"})
        if unknown:
            raise JobRequestError("unknown_field", f"Unknown field {unknown[0]!r}.", field=unknown[0])
        job_type = body.get("type")
        if not isinstance(job_type, str):
            raise JobRequestError(
                "missing_type", f"'type' is required: one of {', '.join(self.registry.names())}.", field="type"
            )
        try:
            spec = self.registry.get(job_type)
        except UnknownTaskType:
            raise JobRequestError(
                "unknown_type",
                f"Unknown job type {job_type!r}; known types: {', '.join(self.registry.names())}.",
                field="type",
            ) from None
        priority = as_integer(body.get("priority", DEFAULT_PRIORITY))
        if priority is None or not 1 <= priority <= 10:
            raise JobRequestError("invalid_priority", "'priority' must be an integer from 1 to 10.", field="priority")
        if "input" not in body:
            raise JobRequestError("invalid_input", "'input' is required.", field="input")
        try:
            parsed = spec.parse_input(body["input"])
        except ValidationError as exc:
            where = f"input.{exc.field}" if exc.field else "input"
            raise JobRequestError("invalid_input", f"{where} {exc.message}.", field=where) from None
        return job_type, to_dict(parsed), priority

    async def submit(
        self,
        user_id: str,
        body: Any,
        *,
        job_id: str | None = None,
        retry_of: str | None = None,
        max_active: int | None = None,
        own_provider_key: bool = False,
        webhook: dict[str, Any] | None = None,
    ) -> Job:
        """Store first, then announce, then enqueue: a 202 is only given for a job the store holds.

        If Redis is down the job is still accepted (the store has it) and the reconciler enqueues it later;
        if the store cannot take it, StoreUnavailable (503) and nothing was promised. With `max_active`, the
        store only takes it while the user has fewer jobs queued or running (else TooManyActive).
        """
        job, _ = await self._submit(
            user_id,
            body,
            job_id=job_id,
            retry_of=retry_of,
            max_active=max_active,
            own_provider_key=own_provider_key,
            webhook=webhook,
        )
        return job

    async def submit_described(
        self,
        user_id: str,
        body: Any,
        *,
        job_id: str | None = None,
        retry_of: str | None = None,
        max_active: int | None = None,
        validated: tuple[str, dict[str, Any], int] | None = None,
        own_provider_key: bool = False,
        webhook: dict[str, Any] | None = None,
    ) -> tuple[Job, dict[str, Any]]:
        """submit(), plus the public job with its estimate, built from what submitting read anyway.

        `validated`: what validate(body) returned, when the caller already ran it (it is not run twice)."""
        job, ahead = await self._submit(
            user_id,
            body,
            job_id=job_id,
            retry_of=retry_of,
            max_active=max_active,
            validated=validated,
            own_provider_key=own_provider_key,
            webhook=webhook,
        )
        return job, await self.describe(job, ahead=ahead)

    async def _submit(
        self,
        user_id: str,
        body: Any,
        *,
        job_id: str | None,
        retry_of: str | None,
        max_active: int | None,
        validated: tuple[str, dict[str, Any], int] | None = None,
        own_provider_key: bool = False,
        webhook: dict[str, Any] | None = None,
    ) -> tuple[Job, int]:
        """The job and its queue position when stored. Two round trips: one statement, one Redis script."""
        job_type, job_input, priority = validated or self.validate(body)
        spec = self.registry.get(job_type)
        origin = tracing.current()  # the request's id (and trace): in the row and the queue entry, for every spell
        job = Job(
            id=job_id or str(uuid.uuid4()),
            user_id=user_id,
            type=job_type,
            input=job_input,
            priority=priority,
            max_attempts=spec.max_attempts or self.max_attempts,
            current_step="Waiting for a worker…",
            retry_of=retry_of,
            own_provider_key=own_provider_key,
            webhook=webhook,
        )
        if origin is not None:
            job.request_id, job.traceparent = origin.request_id, origin.traceparent
        job.ready_at = job.created_at
        job.expires_at = job.created_at + (self.max_wait or spec.max_wait)
        try:
            ahead = await self.store.create_ranked(job, max_active=max_active)
        except Exception as exc:
            log.error("the store refused a job", extra={"error": repr(exc)})
            raise StoreUnavailable() from exc
        if ahead is None:
            raise TooManyActive()
        self.metrics.job_submitted(job_type)
        try:
            admitted = await self.admission.admit(
                user_id,
                announcement(job),
                ticket=job.seq,
                priority=priority,
                origin=origin.enqueue_kwargs() if origin is not None else None,
            )
            self.estimates.note_capacity(admitted.capacity)
        except Exception as exc:
            log.warning(
                "job stored but not enqueued; the reconciler will",
                extra={"job_id": job.id, "user_id": user_id, "attempt": 0, "error": repr(exc)},
            )
        log.info("job accepted", extra={"job_id": job.id, "type": job_type, "user_id": user_id, "attempt": 0})
        return job, ahead

    async def submit_idempotent(
        self,
        user_id: str,
        body: Any,
        key: str,
        *,
        job_id: str | None = None,
        max_active: int | None = None,
        own_provider_key: bool = False,
        webhook: dict[str, Any] | None = None,
    ) -> tuple[Job, bool]:
        """The same key and body within 24 h gives the same job (False: not new); another body is refused.

        `webhook`: the checked webhook ({"url", "events"}), part of the request compared."""
        if not key or len(key) > 255:
            raise JobRequestError("invalid_idempotency_key", "Idempotency-Key must be 1-255 characters.")
        # The request as it will run, defaults applied: `"priority": 5` written out is the same request as none.
        job_type, job_input, priority = self.validate(body)
        normal: dict[str, Any] = {"type": job_type, "input": job_input, "priority": priority}
        if webhook is not None:  # absent, it leaves the digest as it was before webhooks existed
            normal["webhook"] = webhook
        digest = hashlib.sha256(json.dumps(normal, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        since = time.time() - IDEMPOTENCY_TTL
        job_id = job_id or str(uuid.uuid4())
        for _ in range(50):
            try:
                held = await self.store.idempotency_get(user_id, key, since=since)
                if held is None and await self.store.idempotency_put(user_id, key, digest, job_id, since=since):
                    try:
                        job = await self.submit(
                            user_id,
                            body,
                            job_id=job_id,
                            max_active=max_active,
                            own_provider_key=own_provider_key,
                            webhook=webhook,
                        )
                        return job, True
                    except TooManyActive:
                        await self.store.idempotency_release(user_id, key, job_id)  # a refusal leaves no trace
                        raise
                held = held or await self.store.idempotency_get(user_id, key, since=since)
            except (StoreUnavailable, TooManyActive):
                raise
            except Exception as exc:
                raise StoreUnavailable() from exc
            if held is not None:
                if held[0] != digest:
                    raise JobRequestError(
                        "idempotency_key_reused",
                        "This Idempotency-Key was already used in the last 24 h with a different request: send "
                        "this one with a new key, or repeat the first request exactly to get its job back.",
                    )
                existing = await self.store.get(held[1])
                if existing is not None:
                    return existing, False
            await asyncio.sleep(0.05)  # the first request holds the key and is still storing its job
        raise StoreUnavailable()

    async def cancel(self, user_id: str, job_id: str, *, wait: float = 2.0) -> Job | None:
        """Cancel a job: queued ones at once, running ones by their worker (within ~1 s); None if unknown.

        Raises JobRequestError('job_finished') for a job that already ended other than cancelled.
        """
        job = await self.store.cancel_queued(job_id, user_id)
        if job is not None:
            self.metrics.job_finished(job.type, JobStatus.CANCELLED.value)
            await self.events.announce(job)
            return job
        job = await self.store.request_cancel(job_id, user_id)
        if job is None:
            job = await self.store.get_owned(job_id, user_id)
            if job is None:
                return None
            if job.status is JobStatus.CANCELLED:
                return job
            if job.terminal:
                raise JobRequestError(
                    "job_finished", f"The job already ended ({job.status.value}); nothing to cancel.", status=409
                )
            return await self.cancel(user_id, job_id, wait=wait)  # it changed state under us: try again
        with contextlib.suppress(Exception):
            await publish_cancel(self.queue.redis, job_id)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:  # answer with the outcome when the worker is quick, as it should be
            current = await self.store.get(job_id)
            if current is None or current.terminal:
                return current
            await asyncio.sleep(0.05)
        return await self.store.get(job_id)

    async def retryable(self, user_id: str, job_id: str) -> Job | None:
        """The user's job to retry (None if unknown); JobRequestError('job_not_retryable') unless it did not complete.

        The new job goes through the same limits as any submission (the caller's), with `retry_body(old)` and
        `retry_of=old.id`."""
        old = await self.store.get_owned(job_id, user_id)
        if old is None:
            return None
        if old.status not in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED):
            raise JobRequestError(
                "job_not_retryable",
                f"Only failed, cancelled or expired jobs can be retried; this one is {old.status}.",
                status=409,
            )
        return old

    @staticmethod
    def retry_body(old: Job) -> dict[str, Any]:
        """The submission that repeats `old`'s request."""
        return {"type": old.type, "input": old.input, "priority": old.priority}

    async def describe(self, job: Job, *, ahead: int | None = None) -> dict[str, Any]:
        """The public job with honest estimates: queue position and wait, or time remaining.

        `ahead`: the queue position, when the caller read it with the job (saves a statement).
        """
        return self.public(job, estimate=await self.estimates.estimate(job, self.registry, ahead=ahead))

    def poll_interval(self, job: Job) -> float | None:
        if job.terminal:
            return None
        return self.registry.get(job.type).poll_interval if job.type in self.registry else 2.0

    def eta(self, job: Job) -> float | None:
        """Seconds left, from progress so far and the type's typical duration; None when unknown."""
        if job.terminal or job.type not in self.registry:
            return None
        typical = self.registry.get(job.type).typical_seconds
        if job.status is JobStatus.PROCESSING and job.started_at is not None and job.percentage >= 5:
            elapsed = max(0.0, job.updated_at - job.started_at)
            return round(max(0.0, elapsed * (100 - job.percentage) / job.percentage), 1)
        return round(typical * (1 - job.percentage / 100), 1)

    def public(self, job: Job, *, estimate: Estimate | None = None) -> dict[str, Any]:
        eta = estimate.remaining if estimate is not None else self.eta(job)
        body = job.to_public(eta=eta, poll_interval=self.poll_interval(job))
        body["queue"] = estimate.queue_dict() if estimate is not None and job.status is JobStatus.QUEUED else None
        return body

    def snapshot_event(self, job: Job, *, reason: str, estimate: Estimate | None = None) -> Event:
        """The whole job as one event: the first thing a new watcher gets, and the answer to a gap."""
        kind = EventKind.SNAPSHOT
        data = {"reason": reason, "job": self.public(job, estimate=estimate)}
        return Event(job_id=job.id, seq=job.seq, kind=kind, data=data)
