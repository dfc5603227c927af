"""The shapes on the wire and in the store. Imports nothing of ours."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})


def now() -> float:
    return time.time()


@functools.lru_cache(maxsize=8192)  # a polled job's timestamps are formatted again on every poll
def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> str:
    """The one JSON encoder: compact, UTF-8, stable across processes (built once: json.dumps with options
    builds a new encoder on every call, which showed in the worker's profile)."""
    return _ENCODE(value)


@dataclass(slots=True)
class JobError:
    message: str
    code: str
    retryable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code, "retryable": self.retryable}


@dataclass(slots=True)
class Job:
    id: str
    user_id: str
    type: str
    input: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    priority: int = 5
    result: Any = None
    error: JobError | None = None
    attempts: int = 0
    max_attempts: int = 3
    percentage: float = 0.0
    current_step: str | None = None
    partial_output: str | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    lease_token: str | None = None
    worker_id: str | None = None
    seq: int = 0
    created_at: float = field(default_factory=now)
    started_at: float | None = None
    completed_at: float | None = None
    updated_at: float = field(default_factory=now)
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    ready_at: float | None = None  # when a queued job may run (later than now while a retry backs off)
    expires_at: float | None = None  # a job not started by then becomes `expired`
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished attempt
    model_index: int = 0  # position in the type's model fallback chain
    retry_of: str | None = None
    # {"provider", "model", "since"}: the chain step the latest attempt runs on, and when that attempt was claimed
    running_on: dict[str, Any] | None = None
    sealed_key: bool | None = None  # set by a claim: whether a sealed provider key waits (None: not known)
    # Submitted with the user's own provider key (the key itself is sealed apart and deleted when the job ends): a
    # retry must bring the key again, never fall back to the server's.
    own_provider_key: bool = False
    # {"url", "events"}: where to announce the job's end, and which ends (see service/webhooks/). Set at submit, never
    # changed; the store turns the job's terminal write into a delivery record in the same statement (a trigger).
    webhook: dict[str, Any] | None = None
    # The submitting request's id and W3C traceparent (service/tracing.py), written with the job: every later spell
    # carries them, also one the sweeper or reconciler enqueues again after the spell that carried them was lost.
    request_id: str | None = None
    traceparent: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def provider(self) -> str | None:
        """Which provider answered (with `model`, which model): the one of the attempt that completed the job."""
        if self.status is not JobStatus.COMPLETED:
            return None
        return next((h.get("provider") for h in reversed(self.history) if h.get("error") is None), None)

    def to_public(self, *, eta: float | None = None, poll_interval: float | None = None) -> dict[str, Any]:
        """The job as users see it; an allowlist of fields (no lease token, no worker internals)."""
        body: dict[str, Any] = {
            "job_id": self.id,
            "type": self.type,
            "status": self.status.value,
            "priority": self.priority,
            "progress": {
                "percentage": round(self.percentage, 1),
                "current_step": self.current_step,
                "estimated_time_remaining": eta,
            },
            "attempt": self.attempts,
            "max_attempts": self.max_attempts,
            "input": self.input,
            "result": self.result,
            "partial_output": self.partial_output if not self.result else None,
            "error": self.error.to_dict() if self.error else None,
            "model": self.model,
            "provider": self.provider,
            "usage": self.usage,
            "last_seq": self.seq,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "updated_at": iso(self.updated_at),
        }
        body["cancel_requested"] = self.cancel_requested
        body["next_attempt_at"] = (
            iso(self.ready_at)
            if self.status is JobStatus.QUEUED and self.ready_at and self.ready_at > now() and self.started_at
            else None
        )
        body["attempts"] = self.history
        body["retry_of"] = self.retry_of
        body["own_provider_key"] = self.own_provider_key
        body["webhook"] = self.webhook
        if poll_interval is not None:
            body["poll_interval"] = poll_interval
        return body


class EventKind(StrEnum):
    """What an event says; a state change is never coalesced away, progress and deltas may be."""

    STATUS = "status"  # queued / processing / completed / failed / cancelled / expired
    PROGRESS = "progress"
    DELTA = "delta"  # a piece of streamed text output
    SNAPSHOT = "snapshot"  # the whole job: first thing a watcher gets, and the answer to a gap in replay
    POSITION = "position"  # a queued job's place and wait, pushed to its watchers: ephemeral (no seq, not logged)


@dataclass(slots=True)
class Event:
    job_id: str
    seq: int
    kind: EventKind
    data: dict[str, Any]
    ts: float = field(default_factory=now)
    # Encoded forms (JSON, SSE body), made once per event and shared by every client of a fan-out.
    encoded: dict[str, bytes | str | dict[str, int]] | None = field(default=None, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.kind is EventKind.STATUS and self.data.get("status") in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        if self.kind is EventKind.POSITION:  # not an event of the job's log: nothing to resume from
            return {"job_id": self.job_id, "kind": self.kind.value, "ts": round(self.ts, 3), **self.data}
        return {"job_id": self.job_id, "seq": self.seq, "kind": self.kind.value, "ts": round(self.ts, 3), **self.data}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Event:
        data = {k: v for k, v in raw.items() if k not in {"job_id", "seq", "kind", "ts"}}
        return cls(
            job_id=raw["job_id"], seq=int(raw["seq"]), kind=EventKind(raw["kind"]), data=data, ts=float(raw["ts"])
        )
