"""What an operator does to anyone's job: retry, cancel and purge, each recorded with who did it (operator_actions).

The same code paths as a user's own retry and cancel (jobs.py, api/jobs.admit), with the ownership check replaced by
the operator check (admin.OperatorGate) and the job's owner standing in for the caller: a retried job is its owner's,
under its owner's limits (a retry is one more job running on their account), and a job that ran on its owner's own
provider key cannot be retried by anyone else (the key is not kept). The record is written once the action took
effect; a refused action (404, 409, 422, 429) leaves none.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from ..events import stream_key
from ..store.admin import FINISHED, OwnedJob, PurgeFilter
from .accounts import accounts
from .admin_views import action_item, admin_job, current_operator
from .errors import ApiError, not_found
from .history import parse_since
from .jobs import admit, read_json
from .responses import JSONOut
from .state import app_state

log = logging.getLogger("aijobs.admin")

PURGE_FIELDS = ("finished_before", "statuses", "types", "user")


async def _no_body(request: Request) -> None:
    body = await read_json(request, app_state(request).settings.max_body_bytes, empty={})
    if body != {}:
        raise ApiError(400, "invalid_body", "This action takes no body: send none, or {}.")


async def _record(
    request: Request,
    action: str,
    *,
    job_id: str | None = None,
    job_user_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operator = current_operator(request)
    record = await accounts(request).audit.record(
        operator_id=operator.id,
        operator_name=operator.name,
        action=action,
        job_id=job_id,
        job_user_id=job_user_id,
        detail=detail,
    )
    log.info(
        "operator action",
        extra={"operator": operator.name, "action": action, "job_id": job_id, "user_id": job_user_id},
    )
    return action_item(record)


async def _find(request: Request) -> OwnedJob:
    found = await accounts(request).admin.job(request.path_params["job_id"])
    if found is None:
        raise not_found()
    return found


async def _drop_streams(request: Request, ids: list[str]) -> None:
    """The purged jobs' event streams (their events): gone with them. Redis trouble leaves them to their TTL."""
    redis = app_state(request).redis
    with contextlib.suppress(RedisError, OSError):
        for start in range(0, len(ids), 500):
            await redis.delete(*[stream_key(i) for i in ids[start : start + 500]])


async def retry_job(request: Request) -> Response:
    """202: a new job, its owner's, repeating the old one's request (failed, cancelled or expired jobs only), with
    its webhook, as the owner's own retry."""
    state = app_state(request)
    await _no_body(request)
    found = await _find(request)
    old = await state.jobs.retryable(found.job.user_id, found.job.id)  # 409 unless it did not complete
    if old is None:
        raise not_found()
    if old.own_provider_key:
        raise ApiError(
            409,
            "provider_key_required",
            "This job ran on its owner's own provider key, which the server does not keep: only its owner can "
            "retry it, sending the key again.",
        )
    job, _, _ = await admit(
        request, old.user_id, state.jobs.retry_body(old), provider_key=None, retry_of=old.id, webhook=old.webhook
    )
    action = await _record(
        request, "retry", job_id=old.id, job_user_id=old.user_id, detail={"new_job_id": job.id, "type": old.type}
    )
    return JSONOut({"job": admin_job(OwnedJob(job, found.owner)), "action": action}, status_code=202)


async def cancel_job(request: Request) -> Response:
    """200: the job cancelled (again 200 if it already was), or still stopping; 409 once it ended otherwise."""
    state = app_state(request)
    await _no_body(request)
    found = await _find(request)
    job = await state.jobs.cancel(found.job.user_id, found.job.id)
    if job is None:
        raise not_found()
    if job.terminal:  # as a user's cancel: a sealed provider key goes now
        await accounts(request).secrets.delete(job.id)
    action = await _record(
        request, "cancel", job_id=job.id, job_user_id=job.user_id, detail={"status": job.status.value}
    )
    return JSONOut({"job": admin_job(OwnedJob(job, found.owner)), "action": action})


async def purge_job(request: Request) -> Response:
    """200: one finished job deleted with its events (gone from its owner's history and stats); 409 while active."""
    await _no_body(request)
    found = await _find(request)
    job = found.job
    if not job.terminal:
        raise ApiError(409, "job_active", f"The job is still {job.status.value}: cancel it first, then purge it.")
    if not await accounts(request).admin.purge_job(job.id):
        raise not_found()  # purged by someone else meanwhile
    await _drop_streams(request, [job.id])
    action = await _record(
        request,
        "purge",
        job_id=job.id,
        job_user_id=job.user_id,
        detail={"purged": 1, "status": job.status.value, "type": job.type},
    )
    return JSONOut({"purged": 1, "action": action})


def _strings(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not value or any(v not in allowed for v in value):
        raise ApiError(
            422, f"invalid_{name}", f"'{name}' must be a non-empty list of: {', '.join(allowed)}.", field=name
        )
    return tuple(dict.fromkeys(value))


def _finished_before(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and value:
        with contextlib.suppress(ApiError):
            found = parse_since(value)
            if found is not None:
                return found
    raise ApiError(
        422,
        "invalid_finished_before",
        "'finished_before' is required: unix seconds, a date such as 2026-01-31 (midnight UTC) or an RFC 3339 "
        "date-time such as 2026-01-31T09:00:00Z. Jobs that ended before it are purged.",
        field="finished_before",
    )


async def purge(request: Request) -> Response:
    """200: every finished job the filter picks deleted, with its events. `finished_before` is required (a purge of
    everything must be asked for by a time in the future, not by leaving the filter out)."""
    state = app_state(request)
    acc = accounts(request)
    body = await read_json(request, state.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", f"Send a JSON object with {', '.join(PURGE_FIELDS)}.")
    unknown = sorted(set(body) - set(PURGE_FIELDS))
    if unknown:
        raise ApiError(400, "unknown_field", f"Unknown field {unknown[0]!r}.", field=unknown[0])
    before = _finished_before(body.get("finished_before"))
    statuses = _strings(body, "statuses", FINISHED) or FINISHED
    types = _strings(body, "types", tuple(state.jobs.registry.names())) or ()
    user_id = None
    if body.get("user") is not None:
        owner = await acc.users.by_name(body["user"]) if isinstance(body["user"], str) else None
        if owner is None:
            raise ApiError(422, "unknown_user", "'user' must be the name of an existing user.", field="user")
        user_id = owner.id
    ids = await acc.admin.purge(PurgeFilter(finished_before=before, statuses=statuses, types=types, user_id=user_id))
    await _drop_streams(request, ids)
    shown = {"finished_before": before, "statuses": list(statuses), "types": list(types), "user": body.get("user")}
    action = await _record(request, "purge", job_user_id=user_id, detail={"filter": shown, "purged": len(ids)})
    return JSONOut({"purged": len(ids), "action": action})
