"""One error tree for everything a caller can be told: each error knows its HTTP status, its stable `code`, and
whether trying the same thing again can help, so no handler re-maps one error type into another.

    AijobsError                    500  internal_error       the base; an unexpected bug is answered as this
    ├── ApiError                   any  (given)              a refusal made at the HTTP edge (auth, origin, body, …)
    ├── JobRequestError            422  (given)              a request the job service refuses: invalid_input,
    │                                                        unknown_type, idempotency_key_reused, … (400 for a
    │                                                        body that is not an object, 409 for job_finished and
    │                                                        job_not_retryable)
    ├── LimitExceeded              429  (given)              over a per-user limit (413 input_too_large); carries
    │                                                        Retry-After when waiting helps
    └── StoreUnavailable           503  store_unavailable    the store could not answer: nothing was written,
                                                             retryable (Retry-After), never a 500

`retryable` says whether the same request may succeed later unchanged (a 429 or 503), as the error object in a
job's record does for provider errors (`providers/errors.py`, whose `ProviderError` knows `retryable` and
`retry_after` the same way; those become a job's `error`, never an HTTP answer).

The web app answers every `AijobsError` with `{"error": {"code", "message", ...extra}}`, its status and headers
(`api/errors.py`); workers use `StoreUnavailable` to leave a job queued when the store cannot record a claim.
"""

from __future__ import annotations

from typing import Any


class AijobsError(Exception):
    status: int = 500
    code: str = "internal_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self._headers = headers
        self.extra = extra  # more members of the JSON error object, such as `field`

    @property
    def headers(self) -> dict[str, str] | None:
        """The response headers: Retry-After when waiting helps, plus any given."""
        if self.retry_after is None:
            return self._headers
        return {**(self._headers or {}), "Retry-After": str(max(1, round(self.retry_after)))}


class ApiError(AijobsError):
    """A refusal made at the HTTP edge, with its status and code spelled out where it is raised."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message, code=code, status=status, headers=headers, **extra)
        self.retryable = status in (429, 503)


class JobRequestError(AijobsError):
    """A submission, cancel or retry the job service refuses; `code` is stable, `message` is for people."""

    status = 422

    def __init__(self, code: str, message: str, *, field: str | None = None, status: int = 422) -> None:
        extra: dict[str, Any] = {"field": field} if field else {}
        super().__init__(message, code=code, status=status, **extra)
        self.field = field


class LimitExceeded(AijobsError):
    """Over a per-user limit: a message that says what to do, and Retry-After when waiting helps."""

    status = 429

    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, code=code, status=status, retry_after=retry_after)
        self.retryable = retry_after is not None


class StoreUnavailable(AijobsError):
    """The store could not answer: nothing was promised or written; the same request may succeed shortly."""

    status = 503
    code = "store_unavailable"
    retryable = True

    def __init__(
        self, message: str = "The job store cannot take jobs right now; nothing was created. Try again shortly."
    ) -> None:
        super().__init__(message, retry_after=5)
