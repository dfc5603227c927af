"""What an attempt's outcome means for the job: the error users are told, whether and when to try again, and the
line it leaves in the attempt history. Pure functions and signals, no I/O: the runner acts on them."""

from __future__ import annotations

import random
from typing import Any

from ..models import Job, JobError, iso, now
from ..providers.errors import AuthError, ProviderError
from ..schema import ValidationError


class HeldBack(Exception):
    """The job's provider/model is paused (a shared 429 back-off): wait in the queue, spend no attempt."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"provider paused for {seconds:.1f} s")
        self.seconds = seconds


def attempt_record(
    job: Job, model: str | None, error: JobError | None, seconds: float, provider: str | None = None
) -> dict[str, Any]:
    """One line of a job's attempt history: which provider and model, what went wrong (if anything), how long."""
    return {
        "attempt": job.attempts,
        "provider": provider,
        "model": model,
        "error": error.code if error else None,
        "seconds": round(seconds, 3),
        "at": iso(now()),
    }


class KeyElsewhere(AuthError):
    """A job with the user's own key reached a chain step on another provider: it is not tried there."""

    code = "provider_key_elsewhere"


def retry_delay(attempt: int, retry_after: float | None, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff (base × 2^(n-1), capped) with jitter over the upper half; a provider's Retry-After wins."""
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
