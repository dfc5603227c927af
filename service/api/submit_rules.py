"""What POST /api/jobs checks beyond the input schema: per-user limits, the user's own provider key, the webhook.

The key may come as the body's `user_provided_key` field or the `X-Provider-Key` header. It is sealed (AES-GCM,
associated data user|job) and stored as ciphertext under the job id before the job exists, so no worker can
pick the job up without it; it is never put in the job, its input, the Redis payload, a log line or a response.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request

from ..errors import LimitExceeded
from ..webhooks.targets import FIELD as WEBHOOK_FIELD
from ..webhooks.targets import parse_webhook, resolve
from .accounts import accounts
from .errors import ApiError
from .state import app_state

KEY_FIELD = "user_provided_key"
KEY_HEADER = "x-provider-key"
MAX_KEY_CHARS = 512
KEY_PATTERN = re.compile(rf"[!-~]{{1,{MAX_KEY_CHARS}}}")  # printable ASCII, no spaces (the OpenAPI pattern too)


log = logging.getLogger("aijobs.api")


def take_provider_key(request: Request, body: Any) -> str | None:
    """Remove the key from the body (so nothing downstream ever sees it) and check its shape, never its value."""
    in_body = isinstance(body, dict) and KEY_FIELD in body
    from_body = body.pop(KEY_FIELD) if in_body else None
    if in_body and not isinstance(from_body, str):  # null too: a key that is there must be a key
        raise _bad_key()
    from_header = request.headers.get(KEY_HEADER)
    if from_body is not None and from_header is not None and from_body != from_header:
        # The same key in both places is one key (a client library may always set the header); two different
        # keys would leave it to us which account pays.
        raise ApiError(
            400, "provider_key_twice", f"Two different provider keys: send one, as '{KEY_FIELD}' or X-Provider-Key."
        )
    key = from_body if from_body is not None else from_header
    if key is None:
        return None
    if not KEY_PATTERN.fullmatch(key):
        raise _bad_key()
    return key


def take_webhook(body: Any) -> dict[str, Any] | None:
    """Remove the body's `webhook` (the job service knows nothing of it) and check its shape: {"url", "events"}."""
    if not isinstance(body, dict) or WEBHOOK_FIELD not in body:
        return None
    return parse_webhook(body.pop(WEBHOOK_FIELD))


async def check_webhook_address(request: Request, webhook: dict[str, Any]) -> None:
    """422 webhook_url_refused / webhook_host_unknown unless the URL's host resolves to an address a delivery may
    reach (each delivery checks again: the name may point elsewhere by then)."""
    state = app_state(request)
    await resolve(
        webhook["url"],
        resolver=state.resolver,
        allowed=state.settings.webhook_nets,
        timeout=state.settings.webhook_timeout,
    )


def _bad_key() -> ApiError:
    return ApiError(
        422,
        "invalid_provider_key",
        f"'{KEY_FIELD}' must be a provider API key: 1-{MAX_KEY_CHARS} printable ASCII characters, no spaces.",
        field=KEY_FIELD,
    )


async def check_limits(request: Request, user_id: str, job_type: str, job_input: Any) -> str | None:
    """The input size, then the per-minute budget; returns the budget entry spent (None when Redis is down).

    The active-jobs cap is checked by the store's insert itself (atomic, and no statement of its own): when that
    refuses, refuse_active() gives the entry back, so a refused submission still costs nothing.
    """
    acc = accounts(request)
    acc.limits.check_input_size(job_type, job_input)
    try:
        return await acc.limits.take_submission(user_id)
    except (RedisError, OSError) as exc:
        # The store is the truth and still takes jobs; refusing everyone for Redis' sake would lose work.
        log.warning("rate limit unchecked: Redis unavailable", extra={"user_id": user_id, "error": repr(exc)})
        return None


async def refuse_active(request: Request, user_id: str, *, spent: str | None, job_id: str | None) -> LimitExceeded:
    """The 429 for a submission the store refused at the active-jobs cap, after undoing what it already did."""
    acc = accounts(request)
    if spent is not None:
        try:
            await acc.limits.give_back(user_id, spent)
        except (RedisError, OSError) as exc:
            log.warning("could not give back a rate-limit entry", extra={"user_id": user_id, "error": repr(exc)})
    if job_id is not None:  # the sealed provider key of a job that will never exist
        await acc.secrets.delete(job_id)
    return acc.limits.too_many_active(await acc.queries.count_active(user_id))


def acquire_stream_slot(request: Any, user_id: str, kind: str = "sse") -> Any:
    """A StreamSlot for one SSE/WebSocket stream (`kind`: "sse" or "ws"), or a 429 refusal; the caller must release()
    it when done."""
    return accounts(request).slots.acquire(user_id, kind)


async def seal_provider_key(request: Request, user_id: str, key: str) -> str:
    """Store the sealed key under a fresh job id and return that id, for the job to be created with."""
    acc = accounts(request)
    job_id = str(uuid.uuid4())
    await acc.secrets.put(job_id, user_id, acc.keybox.seal(key, user_id=user_id, job_id=job_id))
    return job_id
