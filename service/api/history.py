"""GET /api/jobs: the caller's own jobs, newest first, filtered, with cursor pages and usage/cost totals."""

from __future__ import annotations

import re
from datetime import UTC, datetime
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

# What each query parameter accepts, written once: the handler checks these and the OpenAPI contract states them
# (the filters and the cursor also take the empty value: "no filter" / "the first page", as a blank form sends it).
UNIX_SECONDS = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"
FULL_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"  # RFC 3339 full-date: the day's midnight, UTC
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")
CURSOR = r"^([0-9]{1,16}(\.[0-9]{1,17})?_[A-Za-z0-9-]{1,64})?$"
LIMIT = r"^[0-9]{1,3}$"


def list_pattern(allowed: list[str]) -> str:
    """Comma-separated values from `allowed`, or nothing at all."""
    one = "(" + "|".join(re.escape(a) for a in allowed) + ")"
    return f"^({one}(,{one})*)?$"


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
    """The last job's place in the order, `<created_at>_<id>`: any value of that shape is a valid place to go on
    from (the page after it), so every cursor the contract allows is one the server accepts."""
    return f"{job.created_at!r}_{job.id}"


def decode_cursor(raw: str) -> tuple[float, str] | None:
    if not re.fullmatch(CURSOR, raw):
        raise ApiError(400, "invalid_cursor", "'cursor' must be a next_cursor from a previous page.")
    if not raw:
        return None
    created_at, job_id = raw.split("_", 1)
    return float(created_at), job_id


def _list_param(request: Request, name: str, allowed: list[str]) -> tuple[str, ...]:
    raw = request.query_params.get(name) or ""
    if not re.fullmatch(list_pattern(allowed), raw):
        raise ApiError(
            400, f"invalid_{name}", f"'{name}' must be one or more of {', '.join(allowed)} (comma-separated)."
        )
    return tuple(raw.split(",")) if raw else ()


def parse_since(raw: str | None) -> float | None:
    """Unix seconds, an RFC 3339 date-time (ISO 8601 with a time and a zone), or a full date (its midnight, UTC);
    empty is no filter."""
    if not raw:
        return None
    try:
        if re.fullmatch(UNIX_SECONDS, raw):
            return float(raw)
        if re.fullmatch(FULL_DATE, raw):
            return datetime.fromisoformat(raw).replace(tzinfo=UTC).timestamp()
        if RFC3339.fullmatch(raw):
            # RFC 3339 allows a leap second (:60) and lower-case t/z, which Python's parser does not.
            text = raw.upper()
            text = text[:17] + "59" + text[19:] if text[17:19] == "60" else text
            return datetime.fromisoformat(text).astimezone(UTC).timestamp()
    except (ValueError, OverflowError):
        pass
    raise ApiError(
        400,
        "invalid_since",
        "'since' must be unix seconds, a date such as 2026-01-31 (midnight UTC) or an RFC 3339 date-time such as "
        "2026-01-31T09:00:00Z.",
    )


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(LIMIT, raw) or not 1 <= int(raw) <= MAX_LIMIT:
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
    after = decode_cursor(request.query_params.get("cursor") or "")
    page, more = await acc.queries.history(f, limit=limit, after=after)
    return JSONResponse(
        {
            "jobs": [history_item(request, job, state.jobs, acc.prices) for job in page],
            "next_cursor": encode_cursor(page[-1]) if more and page else None,
            "totals": await usage_totals(acc, f),
        },
        headers={"Cache-Control": "no-store"},
    )
