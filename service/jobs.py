"""Submitting and describing jobs: the rules between the HTTP layer and the store, queue and event log."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from .events import EventLog
from .models import Event, EventKind, Job, JobStatus
from .queue import DEFAULT_PRIORITY, JobQueue
from .runner import status_event
from .schema import ValidationError, to_dict
from .store.base import JobStore
from .tasks import TaskRegistry, UnknownTaskType

log = logging.getLogger("aijobs.jobs")


class JobRequestError(ValueError):
    """A submission we refuse; `code` is stable, `message` is for people."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class JobService:
    def __init__(
        self, *, store: JobStore, queue: JobQueue, events: EventLog, registry: TaskRegistry, max_attempts: int
    ) -> None:
        self.store = store
        self.queue = queue
        self.events = events
        self.registry = registry
        self.max_attempts = max_attempts

    def validate(self, body: Any) -> tuple[str, dict[str, Any], int]:
        if not isinstance(body, dict):
            raise JobRequestError("invalid_body", "The request body must be a JSON object.")
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
        priority = body.get("priority", DEFAULT_PRIORITY)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 10:
            raise JobRequestError("invalid_priority", "'priority' must be an integer from 1 to 10.", field="priority")
        if "input" not in body:
            raise JobRequestError("invalid_input", "'input' is required.", field="input")
        try:
            parsed = spec.parse_input(body["input"])
        except ValidationError as exc:
            where = f"input.{exc.field}" if exc.field else "input"
            raise JobRequestError("invalid_input", f"{where} {exc.message}.", field=where) from None
        return job_type, to_dict(parsed), priority

    async def submit(self, user_id: str, body: Any, *, job_id: str | None = None) -> Job:
        """Store first, then announce, then enqueue: a 202 is only given for a job the store holds.

        `job_id` is given when something must be stored under the id before the job (a sealed provider key)."""
        job_type, job_input, priority = self.validate(body)
        spec = self.registry.get(job_type)
        job = Job(
            id=job_id or str(uuid.uuid4()),
            user_id=user_id,
            type=job_type,
            input=job_input,
            priority=priority,
            max_attempts=spec.max_attempts or self.max_attempts,
            current_step="Waiting for a worker…",
        )
        await self.store.create(job)
        await self.events.publish(user_id, status_event(job))
        await self.queue.enqueue(job.id, attempt=0, priority=priority)
        log.info("job accepted", extra={"job_id": job.id, "type": job_type, "user_id": user_id})
        return job

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

    def public(self, job: Job) -> dict[str, Any]:
        return job.to_public(eta=self.eta(job), poll_interval=self.poll_interval(job))

    def snapshot_event(self, job: Job, *, reason: str) -> Event:
        """The whole job as one event: the first thing a new watcher gets, and the answer to a gap."""
        kind = EventKind.SNAPSHOT
        return Event(job_id=job.id, seq=job.seq, kind=kind, data={"reason": reason, "job": self.public(job)})
