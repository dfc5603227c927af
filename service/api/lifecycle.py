"""Acting on a job after submission: cancel it, or retry one that did not complete."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..jobs import JobRequestError
from .accounts import accounts
from .auth import current_user
from .errors import ApiError, not_found
from .jobs import accepted, admit, job_links
from .state import app_state


async def cancel_job(request: Request) -> Response:
    """200 with the job (cancelled, or still stopping if its worker is slow to answer); 409 once finished."""
    state = app_state(request)
    try:
        job = await state.jobs.cancel(current_user(request), request.path_params["job_id"])
    except JobRequestError as exc:
        raise ApiError(409, exc.code, exc.message) from None
    if job is None:
        raise not_found()
    if job.terminal:  # cancelled before any worker opened it (or after): the sealed provider key goes now
        await accounts(request).secrets.delete(job.id)
    payload = await state.jobs.describe(job)
    payload["links"] = job_links(request, job.id)
    return JSONResponse(payload)


async def retry_job(request: Request) -> Response:
    """202 with a new job that repeats the old one's request (`retry_of` links them), under the same limits as a
    new submission: a retry is one more job running on someone's account."""
    state = app_state(request)
    user = current_user(request)
    try:
        old = await state.jobs.retryable(user, request.path_params["job_id"])
    except JobRequestError as exc:
        raise ApiError(409, exc.code, exc.message) from None
    if old is None:
        raise not_found()
    job, payload, _ = await admit(request, user, state.jobs.retry_body(old), provider_key=None, retry_of=old.id)
    return accepted(request, job, payload)
