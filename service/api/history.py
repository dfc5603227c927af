"""GET /api/jobs: the caller's own jobs, newest first, filtered, with cursor pages and usage/cost totals."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..jobs import JobService
from ..models import Job, JobStatus
from ..store.queries import HistoryFilter
from ..usage import PriceTable
from .accounts import Accounts, accounts
from .auth import current_user
from .errors import ApiError
from .jobs import job_links
from .state import app_state

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
SUMMARY_CHARS = 120
STATUSES = [s.value for s in JobStatus]


def input_summary(job_input: dict[str, Any]) -> str:
    """One short line a person recognises the request by: the text, the prompt, or the last chat message."""
    text: Any = job_input.get("text") or job_input.get("prompt")
    if text is None and isinstance(job_input.get("messages"), list) and job_input["messages"]:
        text = job_input["messages"][-1].get("content")
    text = " ".join(str(text or "").split())
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def durations(job: Job) -> dict[str, float | None]:
    """Seconds waiting in the queue before the first start, and from that start to the end."""
    wait = None if job.started_at is None else round(max(0.0, job.started_at - job.created_at), 3)
    run = None
    if job.started_at is not None and job.completed_at is not None:
        run = round(max(0.0, job.completed_at - job.started_at), 3)
    return {"wait": wait, "run": run}


def history_item(request: Request, job: Job, jobs: JobService, prices: PriceTable) -> dict[str, Any]:
    item = jobs.public(job)
    del item["input"], item["partial_output"]  # pages stay small; the full job is one GET away
    item["input_summary"] = input_summary(job.input)
    item["durations"] = durations(job)
    item["cost"] = prices.job_cost(job.model, job.usage)
    item["links"] = job_links(request, job.id)
    return item


def encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.created_at, job.id]).encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[float, str]:
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if isinstance(created_at, bool) or not isinstance(created_at, int | float) or not isinstance(job_id, str):
            raise ValueError
        return float(created_at), job_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "invalid_cursor", "'cursor' must be a next_cursor from a previous page.") from None


def _list_param(request: Request, name: str, allowed: list[str]) -> tuple[str, ...]:
    raw = request.query_params.get(name)
    if raw is None:
        return ()
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ApiError(
            400, f"invalid_{name}", f"'{name}' must be one or more of {', '.join(allowed)} (comma-separated)."
        )
    return values


def parse_since(raw: str | None) -> float | None:
    """Unix seconds or an ISO 8601 time (a time without a zone is UTC)."""
    if raw is None:
        return None
    try:
        return float(raw) if raw.replace(".", "", 1).isdigit() else _iso(raw)
    except ValueError:
        raise ApiError(400, "invalid_since", "'since' must be unix seconds or an ISO 8601 time.") from None


def _iso(raw: str) -> float:
    from datetime import UTC

    parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"'limit' must be an integer from 1 to {MAX_LIMIT}.")
    return int(raw)


async def usage_totals(acc: Accounts, f: HistoryFilter) -> dict[str, Any]:
    jobs = prompt = completion = 0
    cost = 0.0
    for model, n, p, c in await acc.queries.usage_by_model(f):
        jobs, prompt, completion = jobs + n, prompt + p, completion + c
        cost += acc.prices.cost(model, p, c) or 0.0
    return {"jobs": jobs, "prompt_tokens": prompt, "completion_tokens": completion, "cost": round(cost, 8)}


async def list_jobs(request: Request) -> Response:
    state = app_state(request)
    acc = accounts(request)
    f = HistoryFilter(
        user_id=current_user(request),
        statuses=_list_param(request, "status", STATUSES),
        types=_list_param(request, "type", state.jobs.registry.names()),
        since=parse_since(request.query_params.get("since")),
    )
    limit = parse_limit(request.query_params.get("limit"))
    cursor = request.query_params.get("cursor")
    page, more = await acc.queries.history(f, limit=limit, after=decode_cursor(cursor) if cursor else None)
    return JSONResponse(
        {
            "jobs": [history_item(request, job, state.jobs, acc.prices) for job in page],
            "next_cursor": encode_cursor(page[-1]) if more and page else None,
            "totals": await usage_totals(acc, f),
        },
        headers={"Cache-Control": "no-store"},
    )
