"""What the operator page reads: GET /api/admin/overview, /charts, /actions and /jobs/{id}, behind admin.OperatorGate.

Reads across every user's jobs through store/admin.py (AdminQueries), never through the user API's queries.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from ..coordination import live_workers, paused_providers
from ..models import Job, JobStatus, iso
from ..store.admin import ActionRecord, MinuteTiming, OwnedJob
from ..store.users import User
from .accounts import accounts
from .errors import ApiError
from .history import input_summary
from .responses import JSONOut
from .state import app_state

OPERATOR_KEY = "aijobs.operator"  # the scope key OperatorGate leaves the operator under
LIST_LIMIT = 50  # jobs per list on the page (running, failed, expired, stuck)
STUCK_QUEUED_SECONDS = 300.0  # a queued job ready this long with nobody taking it is listed as stuck
CHART_MINUTES = 60
NO_STORE = {"Cache-Control": "no-store"}


def current_operator(conn: HTTPConnection) -> User:
    """The operator OperatorGate let in (handlers behind it only)."""
    user: User = conn.scope[OPERATOR_KEY]
    return user


def admin_job(owned: OwnedJob) -> dict[str, Any]:
    """A job as the operator page shows it: whose it is, where it runs, its attempts and error; its input only as
    the one-line summary (the page never needs the rest), never its result or output."""
    job = owned.job
    on = job.running_on or {}
    return {
        "job_id": job.id,
        "type": job.type,
        "status": job.status.value,
        "priority": job.priority,
        "user": {"id": job.user_id, "name": owned.owner},
        "input_summary": input_summary(job.input),
        "attempt": job.attempts,
        "max_attempts": job.max_attempts,
        "attempts": job.history,
        "percentage": round(job.percentage, 1),
        "current_step": job.current_step,
        "error": job.error.to_dict() if job.error else None,
        "worker_id": job.worker_id,
        "running_on": {"provider": on.get("provider"), "model": on.get("model")} if on else None,
        "model": job.model,
        "cancel_requested": job.cancel_requested,
        "retry_of": job.retry_of,
        "request_id": job.request_id,
        "own_provider_key": job.own_provider_key,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "updated_at": iso(job.updated_at),
        "lease_expires_at": iso(job.lease_expires_at),
    }


def stuck_reason(job: Job, at: float) -> str:
    if job.status is JobStatus.PROCESSING:
        return (
            f"Its lease lapsed {round(at - (job.lease_expires_at or at))} s ago: worker {job.worker_id} stopped "
            "answering. The sweeper takes it back (queued again, or failed after its last attempt)."
        )
    waited = round(at - (job.ready_at or job.created_at))
    return f"Ready to run for {waited // 60} min {waited % 60} s and no worker has taken it: is a worker running?"


def action_item(record: ActionRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": iso(record.acted_at),
        "operator": {"id": record.operator_id, "name": record.operator_name},
        "action": record.action,
        "job_id": record.job_id,
        "job_user_id": record.job_user_id,
        "detail": record.detail,
    }


async def overview(request: Request) -> Response:
    """Everything the page shows but its charts, in one answer: polled every few seconds while the page is visible."""
    state = app_state(request)
    acc = accounts(request)
    at = time.time()
    queue = await acc.admin.queue_depth(at)
    running, running_total = await acc.admin.running(limit=LIST_LIMIT)
    busy = await acc.admin.busy_slots()
    stuck = await acc.admin.stuck(queued_for=STUCK_QUEUED_SECONDS, at=at, limit=LIST_LIMIT)
    # The workers' list and the pauses live in Redis: without Redis the rest of the page still answers.
    try:
        workers = await live_workers(state.redis, acc.settings.queue_name)
    except (RedisError, OSError):
        workers = []
    try:
        backoff: list[dict[str, Any]] | None = await paused_providers(state.redis)
    except (RedisError, OSError):
        backoff = None  # unknown, which the page says (an empty list would say "nothing paused")
    counts = await acc.queries.counts_by_status()
    heartbeat_ttl = acc.settings.heartbeat_seconds * 3  # what each worker's heartbeat promises (lifecycle.py)
    body = {
        "now": iso(at),
        "counts": {s.value: counts.get(s.value, 0) for s in JobStatus},
        "queue": {
            "total": sum(q.queued for q in queue),
            "by_priority": [
                {
                    "priority": q.priority,
                    "queued": q.queued,
                    "deferred": q.deferred,
                    "oldest_wait": round(max(0.0, at - q.oldest_created_at), 1),
                }
                for q in queue
            ],
        },
        "workers": [
            {
                "id": w["id"],
                "slots": w["concurrency"],
                "busy": busy.get(w["id"], 0),
                "alive_until": iso(w["alive_until"]),
                "last_heartbeat": iso(w["alive_until"] - heartbeat_ttl),
            }
            for w in workers
        ],
        "running": {"total": running_total, "jobs": [admin_job(o) for o in running]},
        "stuck": [{**admin_job(o), "reason": stuck_reason(o.job, at)} for o in stuck],
        "failed": [admin_job(o) for o in await acc.admin.finished(("failed",), limit=LIST_LIMIT)],
        "expired": [admin_job(o) for o in await acc.admin.finished(("expired",), limit=LIST_LIMIT)],
        "backoff": backoff,
        "actions": [action_item(r) for r in await acc.audit.recent(limit=20)],
    }
    return JSONOut(body, headers=NO_STORE)


def _timing(t: MinuteTiming | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"count": t.count, "average": round(t.average, 3), "p95": round(t.p95, 3)}


async def charts(request: Request) -> Response:
    """The last hour, minute by minute (the current minute last): jobs finished by status, and the wait and run
    times' mean and 95th percentile. Minutes with no jobs are there too, with zeros and nulls."""
    acc = accounts(request)
    last = int(time.time() // 60)
    first = last - CHART_MINUTES + 1
    since = first * 60.0
    finished = await acc.admin.finished_per_minute(since)
    waits = {t.minute: t for t in await acc.admin.wait_per_minute(since)}
    runs = {t.minute: t for t in await acc.admin.run_per_minute(since)}
    statuses = ("completed", "failed", "cancelled", "expired")
    minutes = [
        {
            "start": iso(m * 60.0),
            "finished": {s: finished.get((m, s), 0) for s in statuses},
            "wait": _timing(waits.get(m)),
            "run": _timing(runs.get(m)),
        }
        for m in range(first, last + 1)
    ]
    return JSONOut({"since": iso(since), "minute_seconds": 60, "minutes": minutes}, headers=NO_STORE)


async def get_job(request: Request) -> Response:
    found = await accounts(request).admin.job(request.path_params["job_id"])
    if found is None:
        raise ApiError(404, "job_not_found", "No job with that id.")
    return JSONOut(admin_job(found), headers=NO_STORE)


async def list_actions(request: Request) -> Response:
    """The record of operators' actions, newest first: `limit` (1-500, 50) and `job_id` narrow it."""
    raw = request.query_params.get("limit") or "50"
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise ApiError(400, "invalid_limit", "'limit' must be an integer from 1 to 500.")
    job_id = request.query_params.get("job_id") or None
    records = await accounts(request).audit.recent(limit=int(raw), job_id=job_id)
    return JSONOut({"actions": [action_item(r) for r in records]}, headers=NO_STORE)
