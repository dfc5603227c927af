"""Provider errors, each saying whether a retry can help.

ProviderError                 base: .retryable, .retry_after, .status, .code
├── RetryableError            worth another try later
│   ├── ProviderTimeout       the request or stream took too long
│   ├── ProviderUnavailable   connection refused/reset, DNS, TLS
│   ├── RateLimited           HTTP 429 (honours Retry-After)
│   └── ProviderServerError   HTTP 5xx
└── PermanentError            the same request will fail again
    ├── BadRequest            HTTP 400/404/422: the request itself is wrong
    ├── AuthError             HTTP 401/403: the key is missing, wrong or lacks access
    ├── ContentRefused        the provider declined the content
    └── BadResponse           a 2xx answer aijobs cannot use (an image that is SVG, not an image, or missing)
"""

from __future__ import annotations


class ProviderError(Exception):
    retryable: bool = False
    code: str = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        limits: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.limits = limits  # the provider's x-ratelimit-* headers, when it sent any


class RetryableError(ProviderError):
    retryable = True
    code = "provider_retryable"


class ProviderTimeout(RetryableError):
    code = "provider_timeout"


class ProviderUnavailable(RetryableError):
    code = "provider_unavailable"


class RateLimited(RetryableError):
    code = "rate_limited"


class ProviderServerError(RetryableError):
    code = "provider_server_error"


class PermanentError(ProviderError):
    retryable = False
    code = "provider_rejected"


class BadRequest(PermanentError):
    code = "provider_bad_request"


class AuthError(PermanentError):
    code = "provider_auth"


class ContentRefused(PermanentError):
    code = "content_refused"


class BadResponse(PermanentError):
    code = "provider_bad_response"
