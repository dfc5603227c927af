"""Acting on a job after submission: cancel it, or retry one that did not complete."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .accounts import accounts
from .auth import current_user
from .errors import ApiError, not_found
from .jobs import accepted, admit, job_links, read_json
from .state import app_state
from .submit_rules import KEY_FIELD, take_provider_key


async def cancel_job(request: Request) -> Response:
    """200 with the job (cancelled, or still stopping if its worker is slow to answer); 409 once finished."""
    state = app_state(request)
    job = await state.jobs.cancel(current_user(request), request.path_params["job_id"])  # 409 once finished
    if job is None:
        raise not_found()
    if job.terminal:  # cancelled before any worker opened it (or after): the sealed provider key goes now
        await accounts(request).secrets.delete(job.id)
    payload = await state.jobs.describe(job)
    payload["links"] = job_links(request, job.id)
    return JSONResponse(payload)


async def retry_job(request: Request) -> Response:
    """202 with a new job that repeats the old one's request (`retry_of` links them), under the same limits as a
    new submission: a retry is one more job running on someone's account.

    A job that ran on the user's own provider key is only retried with that key sent again (the body's
    `user_provided_key` or X-Provider-Key, sealed under the new job as on submit): the old sealed copy is gone, and
    the server's key is never used in its place. Any job may be retried on a key sent here. The new job keeps the old
    one's webhook (its address checked again)."""
    state = app_state(request)
    user = current_user(request)
    body = await read_json(request, state.settings.max_body_bytes, empty={})
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", f'Send an empty body, or {{"{KEY_FIELD}": "…"}}.')
    provider_key = take_provider_key(request, body)
    if body:
        field = sorted(body)[0]
        raise ApiError(400, "unknown_field", f"Unknown field {field!r}; a retry takes only '{KEY_FIELD}'.", field=field)
    old = await state.jobs.retryable(user, request.path_params["job_id"])  # 409 unless it did not complete
    if old is None:
        raise not_found()
    if old.own_provider_key and provider_key is None:
        raise ApiError(
            422,
            "provider_key_required",
            "This job ran on your own provider key, which the server does not keep. To retry it, send the key again "
            f"as '{KEY_FIELD}' in the body or in the X-Provider-Key header.",
            field=KEY_FIELD,
        )
    job, payload, _ = await admit(
        request, user, state.jobs.retry_body(old), provider_key=provider_key, retry_of=old.id, webhook=old.webhook
    )
    return accepted(request, job, payload)
