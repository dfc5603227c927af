"""A provider's own rate limit, enforced the way OpenAI enforces it: for the simulated provider and the test server.

Per API key, two token buckets: `requests` calls and `tokens` tokens per `period` seconds, each full at start and
refilled continuously (OpenAI: "a limit of 60 RPM may be enforced as 1 request per second"). A call takes one
request and its tokens (prompt estimate plus its output limit, as OpenAI counts `max_tokens` up front). Every
answer carries the `x-ratelimit-*` headers; a refusal is a 429 with `Retry-After` (seconds, possibly fractional).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for `x-ratelimit-reset-*`: `120ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


@dataclass
class _Bucket:
    level: float
    at: float


@dataclass
class UpstreamLimit:
    requests: int
    tokens: int | None = None
    period: float = 60.0
    retry_after: bool = True  # send Retry-After with a 429 (some providers send only the x-ratelimit-* headers)
    full: bool = True  # each key's buckets start full (False: empty, as for a key already in use)
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)
    answered: int = 0
    refused: int = 0

    def _level(self, key: str, kind: str, capacity: int, now: float) -> _Bucket:
        bucket = self._buckets.setdefault((key, kind), _Bucket(float(capacity) if self.full else 0.0, now))
        bucket.level = min(float(capacity), bucket.level + (now - bucket.at) * capacity / self.period)
        bucket.at = now
        return bucket

    def take(self, key: str, tokens: int = 0) -> tuple[bool, float, dict[str, str]]:
        """(allowed, retry_after seconds, headers) for one call of `tokens` tokens on `key`."""
        now = self.clock()
        req = self._level(key, "requests", self.requests, now)
        tok = self._level(key, "tokens", self.tokens, now) if self.tokens else None
        tokens = min(tokens, self.tokens) if self.tokens else tokens
        wait = 0.0
        if req.level < 1:
            wait = (1 - req.level) * self.period / self.requests
        if tok is not None and self.tokens and tok.level < tokens:
            wait = max(wait, (tokens - tok.level) * self.period / self.tokens)
        allowed = wait <= 0
        if allowed:
            req.level -= 1
            if tok is not None:
                tok.level -= tokens
            self.answered += 1
        else:
            self.refused += 1
        headers = {
            "x-ratelimit-limit-requests": str(self.requests),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(req.level))),
            "x-ratelimit-reset-requests": format_reset((self.requests - req.level) * self.period / self.requests),
        }
        if tok is not None and self.tokens:
            headers |= {
                "x-ratelimit-limit-tokens": str(self.tokens),
                "x-ratelimit-remaining-tokens": str(max(0, math.floor(tok.level))),
                "x-ratelimit-reset-tokens": format_reset((self.tokens - tok.level) * self.period / self.tokens),
            }
        if not allowed and self.retry_after:
            headers["retry-after"] = f"{max(wait, 0.001):.3f}".rstrip("0").rstrip(".")
        return allowed, wait, headers
