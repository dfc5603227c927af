"""REST endpoints for jobs: submit, read (the polling fallback, with ETag and a suggested interval)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import tracing
from ..jobs import TooManyActive
from ..models import Job
from .auth import current_user
from .body import read_body
from .errors import ApiError, not_found
from .responses import JSONOut
from .state import app_state
from .submit_rules import (
    check_limits,
    check_webhook_address,
    refuse_active,
    seal_provider_key,
    take_provider_key,
    take_webhook,
)


async def read_json(request: Request, limit: int, *, empty: Any = None) -> Any:
    """The body as JSON, refusing oversized or malformed input before it costs anything.

    `empty`: what an empty body stands for, where one is allowed (None: refused)."""
    if request.headers.get("content-type", "").split(";")[0].strip() not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON (Content-Type: application/json).")
    raw = await read_body(request, limit)
    if not raw.strip():
        if empty is not None:
            return empty
        raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON ({exc}).") from None


def job_links(request: Request, job_id: str) -> dict[str, str]:
    """The job's own URLs (the get_job and job_events routes), formatted: url_for walks every route per call."""
    base = f"{request.scope.get('root_path', '')}/api/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events"}


async def create_job(request: Request) -> Response:
    state = app_state(request)
    if not state.tracing.on:
        return await _create_job(request)
    origin = tracing.current()
    with state.tracing.span(
        "POST /api/jobs",
        kind="server",
        parent=origin.traceparent if origin is not None else None,
        attributes={"http.request.method": "POST", "http.route": "/api/jobs"},
        adopt=True,  # the job carries this span to the worker: its runs are this span's children
    ) as span:
        response = await _create_job(request)
        span.set_attribute("http.response.status_code", response.status_code)
        return response


async def _create_job(request: Request) -> Response:
    state = app_state(request)
    user = current_user(request)
    body = await read_json(request, state.settings.max_body_bytes)
    provider_key = take_provider_key(request, body)
    webhook = take_webhook(body)
    job, payload, replayed = await admit(
        request,
        user,
        body,
        provider_key=provider_key,
        idempotency_key=request.headers.get("idempotency-key"),
        webhook=webhook,
    )
    return accepted(request, job, payload, replayed=replayed)


async def admit(
    request: Request,
    user: str,
    body: Any,
    *,
    provider_key: str | None,
    idempotency_key: str | None = None,
    retry_of: str | None = None,
    webhook: dict[str, Any] | None = None,
) -> tuple[Job, dict[str, Any], bool]:
    """Everything between a request and a stored job, for a new submission and a retry alike: the input schema and
    size, the webhook's address, the per-minute budget, the sealed provider key, and the store's insert under the
    active-jobs cap.

    Returns the job, its public form, and whether it is an idempotent replay (not new)."""
    state = app_state(request)
    replayed = False
    job_id = spent = None
    max_active = state.settings.max_active_jobs
    try:
        validated = state.jobs.validate(body)
        if webhook is not None:
            await check_webhook_address(request, webhook)
        spent = await check_limits(request, user, validated[0], validated[1])
        job_id = await seal_provider_key(request, user, provider_key) if provider_key else None
        if idempotency_key is None:
            job, payload = await state.jobs.submit_described(
                user,
                body,
                job_id=job_id,
                retry_of=retry_of,
                max_active=max_active,
                validated=validated,
                own_provider_key=provider_key is not None,
                webhook=webhook,
            )
        else:
            job, created = await state.jobs.submit_idempotent(
                user,
                body,
                idempotency_key,
                job_id=job_id,
                max_active=max_active,
                own_provider_key=provider_key is not None,
                webhook=webhook,
            )
            replayed = not created
            payload = await state.jobs.describe(job)
    except TooManyActive:
        raise await refuse_active(request, user, spent=spent, job_id=job_id) from None
    return job, payload, replayed


def accepted(request: Request, job: Job, payload: dict[str, Any], *, replayed: bool = False) -> Response:
    """The 202 for a stored job, with its links."""
    payload["links"] = job_links(request, job.id)
    headers = {"Location": payload["links"]["self"]}
    origin = tracing.current()
    if origin is not None and origin.request_id:  # the id the job's log lines carry, web and worker
        headers["X-Request-ID"] = origin.request_id
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONOut(payload, status_code=202, headers=headers)


async def get_job(request: Request) -> Response:
    state = app_state(request)
    found = await state.store.get_owned_ranked(request.path_params["job_id"], current_user(request))
    if found is None:
        raise not_found()
    job, ahead = found
    state.metrics.pollers.seen(job.id)
    etag = f'W/"{job.seq}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    interval = state.jobs.poll_interval(job)
    if interval is not None:
        headers["X-Poll-Interval"] = str(interval)
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    payload = await state.jobs.describe(job, ahead=ahead)
    payload["links"] = job_links(request, job.id)
    return JSONOut(payload, headers=headers)
