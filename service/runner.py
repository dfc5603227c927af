"""The lifecycle around every task run: claim, progress, output, result, error, each fenced and announced.

Order matters: the store is written first (conditional on this run's lease token), and only a write the
store accepted is published as an event, with the seq the store gave it. A run that lost its lease
(taken over, cancelled) therefore can neither change the job nor show users anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .events import EventLog
from .models import Event, EventKind, Job, JobError, JobStatus
from .providers.base import ChatMessage, ChatResult, ImageResult, Provider, Usage
from .providers.errors import ProviderError
from .queue import JobQueue
from .schema import ValidationError
from .store.base import JobStore
from .tasks.registry import TaskRegistry

log = logging.getLogger("aijobs.runner")

DELTA_FLUSH_SECONDS = 0.1  # at most ~10 delta events per second per job


def status_data(job: Job) -> dict[str, Any]:
    """The payload of a status event: small, and complete enough to render the job without a fetch."""
    data: dict[str, Any] = {
        "status": job.status.value,
        "attempt": job.attempts,
        "max_attempts": job.max_attempts,
        "percentage": round(job.percentage, 1),
        "current_step": job.current_step,
    }
    if job.terminal:
        data.update(
            result=job.result,
            error=job.error.to_dict() if job.error else None,
            model=job.model,
            usage=job.usage,
            partial_output=job.partial_output if job.result is None else None,
        )
    elif job.error:
        data["error"] = job.error.to_dict()
    return data


def status_event(job: Job) -> Event:
    return Event(job_id=job.id, seq=job.seq, kind=EventKind.STATUS, data=status_data(job))


class RecordingProvider:
    """Wraps the provider for one run, to learn which model answered and how many tokens it cost."""

    def __init__(self, inner: Provider) -> None:
        self._inner = inner
        self.name = inner.name
        self.default_model = inner.default_model
        self.model: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.estimated = False

    def _record(self, model: str, usage: Usage) -> None:
        self.model = model
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.estimated = self.estimated or usage.estimated

    async def chat(self, messages: list[ChatMessage], **kwargs: Any) -> ChatResult:
        result = await self._inner.chat(messages, **kwargs)
        self._record(result.model, result.usage)
        return result

    async def image(self, prompt: str, **kwargs: Any) -> ImageResult:
        result = await self._inner.image(prompt, **kwargs)
        self._record(result.model, result.usage)
        return result

    async def aclose(self) -> None:  # the worker owns the real provider
        return None

    def usage(self) -> dict[str, Any] | None:
        if self.model is None:
            return None
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated": self.estimated,
        }


class LeaseLost(Exception):
    """The store refused a write: this run no longer owns the job."""


@dataclass
class RunContext:
    """The TaskContext handed to a task for one attempt."""

    job_id: str
    user_id: str
    attempt: int
    max_attempts: int
    token: str
    ai: RecordingProvider
    store: JobStore
    events: EventLog
    api_key: str | None = None
    _output: list[str] = field(default_factory=list)
    _pending: list[str] = field(default_factory=list)
    _last_flush: float = 0.0
    _percentage: float = 0.0

    async def _emit(self, job: Job | None, kind: EventKind, data: dict[str, Any]) -> None:
        if job is None:
            raise LeaseLost(self.job_id)
        await self.events.publish(self.user_id, Event(job_id=self.job_id, seq=job.seq, kind=kind, data=data))

    async def progress(self, percentage: float, step: str | None = None) -> None:
        await self.flush()
        self._percentage = max(0.0, min(100.0, float(percentage)))
        job = await self.store.progress(self.job_id, self.token, percentage=self._percentage, step=step)
        await self._emit(job, EventKind.PROGRESS, {"percentage": round(self._percentage, 1), "current_step": step})

    async def delta(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        if time.monotonic() - self._last_flush >= DELTA_FLUSH_SECONDS:
            await self.flush()

    async def flush(self) -> None:
        """Write and announce the text gathered since the last flush, as one delta event."""
        if not self._pending:
            return
        piece = "".join(self._pending)
        self._pending.clear()
        self._output.append(piece)
        self._last_flush = time.monotonic()
        job = await self.store.progress(
            self.job_id, self.token, percentage=self._percentage, step=None, partial_output="".join(self._output)
        )
        await self._emit(job, EventKind.DELTA, {"text": piece})


ProviderKeyOpener = Callable[[Job], Awaitable[str | None]]  # the user's own provider key for a job, if any


class JobRunner:
    """Runs one attempt of one job; shared by every arq job in a worker process."""

    def __init__(
        self,
        *,
        store: JobStore,
        events: EventLog,
        queue: JobQueue,
        registry: TaskRegistry,
        provider: Provider,
        worker_id: str,
        default_timeout: float,
        provider_keys: ProviderKeyOpener | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.queue = queue
        self.registry = registry
        self.provider = provider
        self.worker_id = worker_id
        self.default_timeout = default_timeout
        self.provider_keys: ProviderKeyOpener | None = provider_keys

    async def _announce(self, job: Job | None) -> Job | None:
        if job is not None:
            await self.events.publish(job.user_id, status_event(job))
        return job

    async def run(self, job_id: str) -> str:
        token = uuid.uuid4().hex
        job = await self._announce(await self.store.claim(job_id, worker_id=self.worker_id, token=token))
        if job is None:
            current = await self.store.get(job_id)
            log.info("job not claimable", extra={"job_id": job_id, "status": current and current.status.value})
            return "skipped"
        spec = self.registry.get(job.type)
        ai = RecordingProvider(self.provider)
        ctx = RunContext(
            job_id=job.id,
            user_id=job.user_id,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            token=token,
            ai=ai,
            store=self.store,
            events=self.events,
        )
        started = time.monotonic()
        log.info("job started", extra={"job_id": job.id, "type": job.type, "attempt": job.attempts})
        try:
            data = spec.parse_input(job.input)
            if self.provider_keys is not None:
                ctx.api_key = await self.provider_keys(job)  # the user's own key, decrypted just in time
            result = await asyncio.wait_for(spec.fn(ctx, data), timeout=spec.timeout or self.default_timeout)
            await ctx.flush()
        except asyncio.CancelledError:
            # Shutdown: give the job back without spending the attempt; arq will run it again.
            await self._give_back(job, token, ctx)
            raise
        except LeaseLost:
            log.warning("lease lost, run abandoned", extra={"job_id": job.id})
            return "lease_lost"
        except Exception as exc:
            return await self._failed(job, token, ctx, exc, time.monotonic() - started)
        finished = await self._announce(
            await self.store.finish(
                job.id, token, status=JobStatus.COMPLETED, result=result, model=ai.model, usage=ai.usage()
            )
        )
        log.info(
            "job completed",
            extra={"job_id": job.id, "type": job.type, "seconds": round(time.monotonic() - started, 3)},
        )
        return "completed" if finished else "lease_lost"

    async def _give_back(self, job: Job, token: str, ctx: RunContext) -> None:
        try:
            await asyncio.shield(self._requeue(job, token, ctx, None, "Waiting for a worker…"))
        except Exception:
            log.exception("could not give the job back", extra={"job_id": job.id})

    async def _requeue(self, job: Job, token: str, ctx: RunContext, error: JobError | None, step: str) -> Job | None:
        if ctx._pending:
            await ctx.flush()
        return await self._announce(await self.store.requeue(job.id, token, error=error, step=step))

    async def _failed(self, job: Job, token: str, ctx: RunContext, exc: Exception, seconds: float) -> str:
        error = to_job_error(exc)
        if ctx._pending:
            try:
                await ctx.flush()
            except LeaseLost:
                return "lease_lost"
        if error.retryable and job.attempts < job.max_attempts:
            delay = retry_delay(job.attempts, getattr(exc, "retry_after", None))
            requeued = await self._requeue(
                job, token, ctx, error, f"Retrying in {delay:.0f} s (attempt {job.attempts + 1} of {job.max_attempts})…"
            )
            if requeued is None:
                return "lease_lost"
            await self.queue.enqueue(job.id, attempt=requeued.attempts, priority=job.priority, defer_seconds=delay)
            log.warning(
                "job attempt failed, retrying",
                extra={"job_id": job.id, "code": error.code, "attempt": job.attempts, "delay": delay},
            )
            return "retrying"
        finished = await self._announce(
            await self.store.finish(
                job.id, token, status=JobStatus.FAILED, error=error, model=ctx.ai.model, usage=ctx.ai.usage()
            )
        )
        log.warning(
            "job failed",
            extra={"job_id": job.id, "code": error.code, "error": error.message, "seconds": round(seconds, 3)},
        )
        return "failed" if finished else "lease_lost"


def retry_delay(attempt: int, retry_after: float | None, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter over the upper half; a provider's Retry-After wins."""
    import random

    if retry_after is not None:
        return max(0.0, float(retry_after))
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def to_job_error(exc: BaseException) -> JobError:
    """What users are told: a plain message and a stable code, never a traceback."""
    if isinstance(exc, ProviderError):
        return JobError(message=exc.message, code=exc.code, retryable=exc.retryable)
    if isinstance(exc, TimeoutError):
        return JobError(message="The job took longer than its time limit.", code="job_timeout", retryable=True)
    if isinstance(exc, ValidationError):
        return JobError(message=f"Invalid input: {exc}", code="invalid_input", retryable=False)
    message = str(exc) or exc.__class__.__name__
    return JobError(message=message[:500], code="task_error", retryable=False)
