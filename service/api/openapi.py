"""GET /api/openapi.json: the API contract, built from the same schemas and patterns the code validates with.

Job inputs come from each task's input dataclass through `schema.json_schema` (what `schema.parse` enforces);
query and header parameters use the very patterns their handlers check (history.py, streams.py, multiwatch.py,
submit_rules.py); the response shapes below are the one description of what the handlers return. OpenAPI 3.2,
for its `itemSchema`: each Server-Sent Event is described with its `data` as JSON (`contentSchema`), one
alternative per event kind. tests/test_openapi_contract.py runs schemathesis with every check against the live app,
following the `links` below from a new job to its read, events, cancel and retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..models import JobStatus
from ..push.multiwatch import CURSOR as EVENTS_CURSOR
from ..push.multiwatch import CURSOR_MAX_CHARS
from ..schema import json_schema
from ..tasks import TaskRegistry
from ..webhooks.targets import EVENTS as WEBHOOK_EVENTS
from ..webhooks.targets import MAX_URL_CHARS as WEBHOOK_URL_CHARS
from ..webhooks.targets import URL_PATTERN as WEBHOOK_URL
from .history import CURSOR, FULL_DATE, MAX_LIMIT, UNIX_SECONDS, list_pattern
from .streams import RESUME_POINT
from .submit_rules import KEY_FIELD, MAX_KEY_CHARS

STATUSES = [s.value for s in JobStatus]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: list[str], props: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": extra}


NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
TIME = _nullable({"type": "string", "format": "date-time"})
KEY_SCHEMA = {"type": "string", "pattern": f"^[!-~]{{1,{MAX_KEY_CHARS}}}$"}
ERROR = _obj(
    ["error"],
    {"error": _obj(["code", "message"], {"code": STR, "message": STR, "field": STR}, extra=True)},
)
JOB_ERROR = _nullable(_obj(["message", "code", "retryable"], {"message": STR, "code": STR, "retryable": BOOL}))
USAGE = _nullable(
    _obj(
        ["prompt_tokens", "completion_tokens"],
        {"prompt_tokens": INT, "completion_tokens": INT, "estimated": BOOL, "cached": BOOL},
        extra=True,
    )
)
LINKS = _obj(["self", "events"], {"self": STR, "events": STR})
WEBHOOK_EVENT_LIST = {
    "type": "array",
    "items": {"enum": list(WEBHOOK_EVENTS)},
    "minItems": 1,
    "uniqueItems": True,
    "description": "Which ends of the job to announce (each as the event type `job.<status>`); default: all",
}
WEBHOOK_IN = _obj(
    ["url"],
    {
        "url": {
            "type": "string",
            "pattern": WEBHOOK_URL,
            "maxLength": WEBHOOK_URL_CHARS,
            "description": "Where to POST the events. Its host must resolve to a public address (else 422 "
            "webhook_url_refused; an operator may allow ranges: WEBHOOK_ALLOW_NETS), checked again at each delivery",
        },
        "events": WEBHOOK_EVENT_LIST,
    },
)
WEBHOOK = _nullable(
    _obj(["url", "events"], {"url": STR, "events": {"type": "array", "items": {"enum": list(WEBHOOK_EVENTS)}}})
)
DELIVERY = _obj(
    [
        "id",
        "event",
        "url",
        "status",
        "attempts",
        "occurred_at",
        "next_attempt_at",
        "delivered_at",
        "last_status_code",
        "last_error",
        "responses",
    ],
    {
        "id": {"type": "string", "description": "The webhook-id header of every attempt (receivers dedupe on it)"},
        "event": {"enum": [f"job.{e}" for e in WEBHOOK_EVENTS]},
        "url": STR,
        "status": {"enum": ["pending", "delivered", "failed"]},
        "attempts": INT,
        "occurred_at": TIME,
        "next_attempt_at": {**TIME, "description": "While pending: when the next attempt is due"},
        "delivered_at": TIME,
        "last_status_code": _nullable(INT),
        "last_error": _nullable(STR),
        "responses": {
            "type": "array",
            "description": "One entry per recorded attempt, oldest first",
            "items": _obj(
                ["attempt", "at", "status_code", "error", "seconds"],
                {
                    "attempt": INT,
                    "at": {"type": "string", "format": "date-time"},
                    "status_code": {**_nullable(INT), "description": "The receiver's answer; null: none"},
                    "error": _nullable(STR),
                    "seconds": NUM,
                },
            ),
        },
    },
)
JOB_WEBHOOKS = _obj(
    ["job_id", "webhook", "deliveries"],
    {"job_id": STR, "webhook": WEBHOOK, "deliveries": {"type": "array", "items": DELIVERY}},
)
WEBHOOK_SECRET = _obj(
    ["secret", "created_at", "previous_valid_until"],
    {
        "secret": {"type": "string", "pattern": "^whsec_[A-Za-z0-9+/]+=*$"},
        "created_at": TIME,
        "previous_valid_until": {
            **TIME,
            "description": "After a rotation: until when deliveries are also signed with the secret it replaced",
        },
    },
)
QUEUE = _obj(
    ["position", "estimated_wait", "workers_capacity"],
    {"position": _nullable(INT), "estimated_wait": _nullable(NUM), "workers_capacity": INT},
)
ATTEMPT = _obj(
    ["attempt", "provider", "model", "error", "seconds", "at"],
    {
        "attempt": INT,
        "provider": _nullable(STR),
        "model": _nullable(STR),
        "error": _nullable(STR),
        "seconds": NUM,
        "at": {"type": "string", "format": "date-time"},
    },
    extra=True,
)
_JOB_COMMON: dict[str, Any] = {
    "job_id": STR,
    "type": STR,
    "status": {"enum": STATUSES},
    "priority": {"type": "integer", "minimum": 1, "maximum": 10},
    "progress": _obj(
        ["percentage", "current_step", "estimated_time_remaining"],
        {"percentage": NUM, "current_step": _nullable(STR), "estimated_time_remaining": _nullable(NUM)},
    ),
    "attempt": INT,
    "max_attempts": INT,
    "result": {},
    "error": JOB_ERROR,
    "model": _nullable(STR),
    "provider": _nullable(STR),
    "usage": USAGE,
    "last_seq": INT,
    "created_at": TIME,
    "started_at": TIME,
    "completed_at": TIME,
    "updated_at": TIME,
    "cancel_requested": {"type": "boolean", "description": "A cancel was asked for and the worker is stopping"},
    "next_attempt_at": {
        **TIME,
        "description": "While a failed attempt waits for its retry: when the next one may start",
    },
    "attempts": {"type": "array", "items": ATTEMPT, "description": "One entry per finished attempt, oldest first"},
    "retry_of": {**_nullable(STR), "description": "The job this one retries (POST /api/jobs/{id}/retry)"},
    "own_provider_key": {
        "type": "boolean",
        "description": "It runs on your own provider key (never returned): a retry must send the key again",
    },
    "queue": {
        **_nullable(QUEUE),
        "description": "While queued: jobs ahead, the expected wait (null: no live worker) and the workers' slots",
    },
    "webhook": {**WEBHOOK, "description": "Where the job's ends are announced (submitted with it), or null"},
    "poll_interval": NUM,
    "links": LINKS,
}
_JOB_REQUIRED = [
    "job_id",
    "type",
    "status",
    "priority",
    "progress",
    "attempt",
    "max_attempts",
    "result",
    "error",
    "model",
    "provider",
    "usage",
    "last_seq",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
    "cancel_requested",
    "next_attempt_at",
    "attempts",
    "retry_of",
    "own_provider_key",
    "queue",
    "webhook",
]
JOB = _obj(
    [*_JOB_REQUIRED, "input", "partial_output", "links"],
    {**_JOB_COMMON, "input": {"type": "object"}, "partial_output": _nullable(STR)},
)
# A snapshot event carries the job without its links (they are the URLs the client already follows).
EVENT_JOB = _obj(
    [*_JOB_REQUIRED, "input", "partial_output"],
    {**_JOB_COMMON, "input": {"type": "object"}, "partial_output": _nullable(STR)},
)
HISTORY_JOB = _obj(
    [*_JOB_REQUIRED, "input_summary", "durations", "cost", "links"],
    {
        **_JOB_COMMON,
        "input_summary": STR,
        "durations": _obj(["wait", "run"], {"wait": _nullable(NUM), "run": _nullable(NUM)}),
        "cost": _nullable(NUM),
    },
)
TOTALS = {"jobs": INT, "prompt_tokens": INT, "completion_tokens": INT, "cost": NUM}
HISTORY = _obj(
    ["jobs", "next_cursor", "totals"],
    {
        "jobs": {"type": "array", "items": HISTORY_JOB},
        "next_cursor": {**_nullable({"type": "string", "pattern": CURSOR}), "description": "null on the last page"},
        "totals": _obj(list(TOTALS), TOTALS),
    },
)
STATS = _obj(
    [*(f"total_{s}" for s in STATUSES), "average_wait_time", "estimated_wait_time", "workers", "user", "by_type"],
    {
        **{f"total_{s}": INT for s in STATUSES},
        "average_wait_time": _nullable(NUM),
        "average_run_time": _nullable(NUM),
        "estimated_wait_time": _nullable(NUM),
        "window_seconds": NUM,
        "by_type": {
            "type": "array",
            "items": _obj(
                ["type", "started", "completed", "average_wait_time", "average_run_time"],
                {
                    "type": STR,
                    "started": INT,
                    "completed": INT,
                    "average_wait_time": _nullable(NUM),
                    "average_run_time": _nullable(NUM),
                },
            ),
        },
        "workers": _obj(["live", "capacity"], {"live": INT, "capacity": INT}),
        "user": _obj(
            ["by_status", "active", *TOTALS],
            {"by_status": _obj(STATUSES, {s: INT for s in STATUSES}), "active": INT, **TOTALS},
        ),
    },
)
USER = _obj(["id", "name", "created_at"], {"id": STR, "name": STR, "created_at": TIME})
SESSION = _obj(["user"], {"user": USER})
ME = _obj(
    ["user", "limits"],
    {
        "user": USER,
        "limits": _obj(
            ["max_active_jobs", "submissions_per_minute", "max_streams", "max_input_bytes"],
            {
                "max_active_jobs": INT,
                "submissions_per_minute": INT,
                "max_streams": INT,
                "max_input_bytes": {"type": "object", "additionalProperties": INT},
            },
            extra=True,
        ),
    },
)
HEALTH = _obj(["status", "checks"], {"status": {"enum": ["ok", "degraded"]}, "checks": {"type": "object"}}, extra=True)

# The JSON in each SSE `data:` line (and each WebSocket event message), one schema per `kind`.
_EVENT_BASE = {"job_id": STR, "seq": INT, "ts": NUM}
EVENT_DATA: dict[str, dict[str, Any]] = {
    "snapshot": _obj(
        ["job_id", "seq", "kind", "ts", "reason", "job"],
        {**_EVENT_BASE, "kind": {"const": "snapshot"}, "reason": STR, "job": EVENT_JOB},
    ),
    "status": _obj(
        ["job_id", "seq", "kind", "ts", "status", "attempt", "max_attempts", "percentage", "current_step"],
        {
            **_EVENT_BASE,
            "kind": {"const": "status"},
            "status": {"enum": STATUSES},
            "attempt": INT,
            "max_attempts": INT,
            "percentage": NUM,
            "current_step": _nullable(STR),
            # on the terminal event: the outcome
            "result": {},
            "error": JOB_ERROR,
            "model": _nullable(STR),
            "provider": _nullable(STR),
            "usage": USAGE,
            "partial_output": _nullable(STR),
            # queued again after a failed attempt
            "next_attempt_at": {"type": "string", "format": "date-time"},
        },
    ),
    "progress": _obj(
        ["job_id", "seq", "kind", "ts", "percentage", "current_step"],
        {
            **_EVENT_BASE,
            "kind": {"const": "progress"},
            "percentage": NUM,
            "current_step": _nullable(STR),
            "estimated_time_remaining": NUM,
        },
    ),
    "delta": _obj(["job_id", "seq", "kind", "ts", "text"], {**_EVENT_BASE, "kind": {"const": "delta"}, "text": STR}),
    "position": _obj(
        ["job_id", "kind", "ts", "queue", "estimated_time_remaining"],
        {
            "job_id": STR,
            "kind": {"const": "position"},
            "ts": NUM,
            "queue": QUEUE,
            "estimated_time_remaining": _nullable(NUM),
        },
    ),
}


def sse_item(id_schema: dict[str, Any]) -> dict[str, Any]:
    """One Server-Sent Event as OpenAPI 3.2 reads a stream: `event` names the kind, `data` is that kind's JSON.

    A `position` event has no `id:` of its own (it is not in the job's log); a client keeps its last id."""
    variants = []
    for kind, data in EVENT_DATA.items():
        props: dict[str, Any] = {
            "event": {"const": kind},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
            "id": id_schema,
            "retry": INT,
        }
        variants.append({"type": "object", "title": kind, "required": ["event", "data"], "properties": props})
    # The server's last word on a stream whose session was signed out or whose token was revoked (no id), after
    # which it closes the stream: the 401 body a new request would get, with `reason` ("signed_out", "revoked").
    ended = {
        "event": {"const": "error"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": ERROR},
    }
    variants.append({"type": "object", "title": "error", "required": ["event", "data"], "properties": ended})
    return {"oneOf": variants}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _sse(description: str, id_schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"text/event-stream": {"itemSchema": sse_item(id_schema)}}}


STREAM_UNAVAILABLE = "The stream could not start (the store or Redis failing): reconnect after Retry-After, or poll"


def _errors(*statuses: int, notes: dict[int, str] | None = None) -> dict[str, Any]:
    """The documented refusals, each the one Error shape; `notes` words a status for this operation."""
    why = {
        400: "Bad request (malformed JSON, query or header; or a Host not in ALLOWED_HOSTS)",
        401: "Not signed in: send a Bearer token or the session cookie",
        403: "Refused as possibly cross-site (csrf_refused): a change signed in by the session cookie, and signing "
        "in or out, must be JSON (Content-Type: application/json) with this app's Origin; Bearer clients are exempt",
        404: "No such job for this user (another user's job looks exactly the same)",
        409: "The job is not in a state that allows this",
        413: "Body or input too large",
        415: "Body is not JSON",
        422: "Input breaks the job type's schema",
        429: "Over a per-user limit; see Retry-After",
        503: "The job store cannot take jobs right now; nothing was created. See Retry-After",
    }
    why.update(notes or {})
    out = {str(s): _json({"$ref": "#/components/schemas/Error"}, why[s]) for s in statuses}
    for code in ("429", "503"):
        if code in out:
            out[code]["headers"] = {
                "Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "description": "Seconds to wait"}
            }
    return out


def submit_schema(registry: TaskRegistry) -> dict[str, Any]:
    """One alternative per job type, its `input` being exactly what that type's dataclass accepts."""
    variants = []
    for spec in registry:
        variants.append(
            {
                "type": "object",
                "title": spec.name,
                "description": spec.description,
                "required": ["type", "input"],
                "additionalProperties": False,
                "properties": {
                    "type": {"const": spec.name},
                    "input": json_schema(spec.input_type),
                    "priority": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
                    KEY_FIELD: {
                        **KEY_SCHEMA,
                        "description": "Your own provider API key for this job alone; stored only encrypted, "
                        "deleted when the job ends, never returned. The same key may also come as X-Provider-Key; "
                        "two different keys are a 400 provider_key_twice",
                    },
                    "webhook": {
                        **WEBHOOK_IN,
                        "description": "Announce the job's end: a signed POST (Standard Webhooks) to `url` for each "
                        "event in `events`; see GET /api/webhooks/secret and GET /api/jobs/{job_id}/webhooks",
                    },
                },
            }
        )
    return {"oneOf": variants}


def _param(name: str, where: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "schema": schema, "description": description, **extra}


# OpenAPI links: from a job in a response to what can be done with it next (schemathesis follows them).
_FROM_JOB = "$response.body#/job_id"
JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": {"job_id": _FROM_JOB}},
    "JobEvents": {
        "operationId": "jobEvents",
        "parameters": {"job_id": _FROM_JOB, "after": "$response.body#/last_seq", "Last-Event-ID": ""},
    },
    "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": _FROM_JOB}},
    "RetryJob": {"operationId": "retryJob", "parameters": {"job_id": _FROM_JOB}},
    "JobWebhooks": {"operationId": "jobWebhooks", "parameters": {"job_id": _FROM_JOB}},
}


def _web_refusals(paths: dict[str, Any]) -> None:
    """What the web layer answers before any handler: every /api/ operation a 400 for a Host not in
    ALLOWED_HOSTS, and every one that changes something a 403 when it may come from another site (CSRF)."""
    for path, operations in paths.items():
        if not path.startswith("/api/"):
            continue
        for method, operation in operations.items():
            extra = [400] + ([403] if method in ("post", "put", "patch", "delete") else [])
            for status, response in _errors(*extra).items():
                operation["responses"].setdefault(status, response)


def build_openapi(registry: TaskRegistry) -> dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    statuses = list_pattern(STATUSES)
    types = list_pattern(registry.names())
    job_ref = {"$ref": "#/components/schemas/Job"}
    location = {"Location": {"schema": STR, "description": "The new job's URL (links.self)"}}
    document: dict[str, Any] = {
        "openapi": "3.2.0",
        "info": {
            "title": "aijobs",
            "version": "1",
            "description": "Slow AI requests as background jobs with live progress. Errors are always "
            '{"error": {"code", "message"}}. Live updates also come over the WebSocket WS /api/ws (see the README). '
            "The OpenAI-compatible API under /v1 (for the official openai SDK) is not described here: OpenAI's API "
            "reference is its contract (README, OpenAI-compatible API).",
        },
        "security": [{"bearer": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "`aijobs users create NAME`"},
                "session": {"type": "apiKey", "in": "cookie", "name": "aijobs_session"},
            },
            "schemas": {"Error": ERROR, "Job": JOB, "HistoryJob": HISTORY_JOB, "History": HISTORY, "Stats": STATS},
        },
        "paths": {
            "/api/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Submit a job",
                    "parameters": [
                        _param("X-Provider-Key", "header", KEY_SCHEMA, f"Alternative to the body's `{KEY_FIELD}`"),
                        _param(
                            "Idempotency-Key",
                            "header",
                            {"type": "string", "minLength": 1, "maxLength": 255},
                            "The same user and key within 24 h give back the same job (Idempotent-Replayed: true); "
                            "the same key with a different body is a 422 idempotency_key_reused",
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": submit_schema(registry)}},
                    },
                    "responses": {
                        "202": {
                            **_json(job_ref, "Accepted: stored and queued", location),
                            "links": JOB_LINKS,
                        },
                        **_errors(400, 401, 413, 415, 422, 429, 503),
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "Your job history, newest first",
                    "parameters": [
                        _param(
                            "status",
                            "query",
                            {"type": "string", "pattern": statuses},
                            "Comma-separated statuses; empty: all",
                        ),
                        _param(
                            "type",
                            "query",
                            {"type": "string", "pattern": types},
                            "Comma-separated job types; empty: all",
                        ),
                        _param(
                            "since",
                            "query",
                            {
                                "anyOf": [
                                    {"type": "string", "pattern": UNIX_SECONDS},
                                    {"type": "string", "format": "date-time"},
                                    {"type": "string", "format": "date", "pattern": FULL_DATE},
                                    {"const": ""},
                                ]
                            },
                            "Jobs created at or after: unix seconds, a date (its midnight UTC) or an RFC 3339 "
                            "date-time; empty: all",
                        ),
                        _param(
                            "limit",
                            "query",
                            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                            "Jobs per page (20)",
                        ),
                        _param(
                            "cursor",
                            "query",
                            {"type": "string", "pattern": CURSOR},
                            "next_cursor of the previous page (any value of this shape is a place in the list); "
                            "empty: the first page",
                        ),
                    ],
                    "responses": {
                        "200": {
                            **_json({"$ref": "#/components/schemas/History"}, "A page"),
                            "links": {
                                "NextPage": {
                                    "operationId": "listJobs",
                                    "parameters": {"cursor": "$response.body#/next_cursor"},
                                }
                            },
                        },
                        **_errors(400, 401),
                    },
                },
            },
            "/api/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "The job now (the polling fallback)",
                    "parameters": [
                        job_id,
                        _param("If-None-Match", "header", STR, "The ETag of a response seen before: 304 if unchanged"),
                    ],
                    "responses": {
                        "200": {
                            **_json(
                                job_ref,
                                "The job",
                                {
                                    "ETag": {"schema": {"type": "string", "pattern": '^W/"[0-9]+"$'}},
                                    "X-Poll-Interval": {
                                        "schema": {"type": "string"},
                                        "description": "Seconds until it is worth asking again (not once finished)",
                                    },
                                },
                            ),
                            "links": JOB_LINKS,
                        },
                        "304": {"description": "Unchanged since If-None-Match"},
                        **_errors(401, 404),
                    },
                }
            },
            "/api/jobs/{job_id}/events": {
                "get": {
                    "operationId": "jobEvents",
                    "summary": "Server-Sent Events: snapshot, progress, delta, status, position; ends after the last",
                    "parameters": [
                        job_id,
                        _param(
                            "after",
                            "query",
                            {"type": "string", "pattern": RESUME_POINT},
                            "Resume after this seq (like Last-Event-ID, which wins when both are sent); empty: from a "
                            "snapshot. A seq beyond the job's last event is a 400 invalid_last_event_id",
                        ),
                        _param(
                            "Last-Event-ID",
                            "header",
                            {"type": "string", "pattern": RESUME_POINT},
                            "The id of the last event received (EventSource sends it when it reconnects)",
                        ),
                    ],
                    "responses": {
                        "200": _sse(
                            "The job's events; each `id:` is the event's seq", {"type": "string", "pattern": "^[0-9]+$"}
                        ),
                        **_errors(400, 401, 404, 429, 503, notes={503: STREAM_UNAVAILABLE}),
                    },
                }
            },
            "/api/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel: a queued job never starts; a running one stops within about a second",
                    "parameters": [job_id],
                    "responses": {
                        "200": {
                            **_json(job_ref, "The job: cancelled (again 200 if it already was), or still stopping"),
                            "links": {k: v for k, v in JOB_LINKS.items() if k != "CancelJob"},
                        },
                        **_errors(401, 404, 409),
                    },
                }
            },
            "/api/jobs/{job_id}/retry": {
                "post": {
                    "operationId": "retryJob",
                    "summary": "A new job with the same request (failed, cancelled or expired jobs only, else 409), "
                    "under the same limits as a new one",
                    "description": "A job that ran on your own provider key (own_provider_key) is retried only with "
                    f"the key sent again, as `{KEY_FIELD}` or X-Provider-Key; without it the answer is 422 "
                    "provider_key_required. Any job may be retried on a key sent here.",
                    "parameters": [
                        job_id,
                        _param("X-Provider-Key", "header", KEY_SCHEMA, f"Alternative to the body's `{KEY_FIELD}`"),
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _obj([], {KEY_FIELD: KEY_SCHEMA})}},
                    },
                    "responses": {
                        "202": {
                            **_json(job_ref, "Accepted: the new job, its retry_of naming the old one", location),
                            "links": JOB_LINKS,
                        },
                        **_errors(400, 401, 404, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/api/events": {
                "get": {
                    "operationId": "allEvents",
                    "summary": "Server-Sent Events of all your jobs: active ones from a snapshot, then new ones",
                    "parameters": [
                        _param(
                            "cursor",
                            "query",
                            {"type": "string", "pattern": EVENTS_CURSOR, "maxLength": CURSOR_MAX_CHARS},
                            "Resume points, `<job_id>:<seq>` joined by commas (an `id:` of this stream); "
                            "Last-Event-ID wins when both are sent; empty: from snapshots",
                        ),
                        _param(
                            "Last-Event-ID",
                            "header",
                            {"type": "string", "pattern": EVENTS_CURSOR, "maxLength": CURSOR_MAX_CHARS},
                            "The id of the last event received (EventSource sends it when it reconnects)",
                        ),
                    ],
                    "responses": {
                        "200": _sse(
                            "Events of all your jobs; each `id:` is the resume point of every job still running here",
                            {"type": "string", "pattern": EVENTS_CURSOR, "maxLength": CURSOR_MAX_CHARS},
                        ),
                        **_errors(400, 401, 429, 503, notes={503: STREAM_UNAVAILABLE}),
                    },
                }
            },
            "/api/jobs/{job_id}/webhooks": {
                "get": {
                    "operationId": "jobWebhooks",
                    "summary": "The job's webhook and its deliveries, each with the receiver's answers",
                    "parameters": [job_id],
                    "responses": {
                        "200": _json(JOB_WEBHOOKS, "The webhook (null: none) and one delivery per announced end"),
                        **_errors(401, 404),
                    },
                }
            },
            "/api/webhooks/secret": {
                "get": {
                    "operationId": "getWebhookSecret",
                    "summary": "Your webhook signing secret (made on first ask); verify deliveries with it",
                    "responses": {"200": _json(WEBHOOK_SECRET, "The secret (Cache-Control: no-store)"), **_errors(401)},
                },
                "post": {
                    "operationId": "rotateWebhookSecret",
                    "summary": "A new signing secret; the old one also signs until previous_valid_until",
                    "responses": {"200": _json(WEBHOOK_SECRET, "The new secret"), **_errors(401)},
                },
            },
            "/api/stats": {
                "get": {
                    "operationId": "stats",
                    "summary": "Queue counts, timings, live workers, and your own totals",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Stats"}, "Stats"), **_errors(401)},
                }
            },
            "/api/session": {
                "post": {
                    "operationId": "signIn",
                    "summary": "Trade an API token (or, with AIJOBS_DEMO_LOGIN, nothing) for a session cookie",
                    "security": [],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {"schema": _obj([], {"token": {"type": "string", "minLength": 1}})}
                        },
                    },
                    "responses": {"200": _json(SESSION, "Signed in; Set-Cookie"), **_errors(400, 401, 413, 422)},
                },
                "delete": {
                    "operationId": "signOut",
                    "security": [],
                    "summary": "Clear the session cookie",
                    "responses": {"204": {"description": "Signed out"}},
                },
            },
            "/api/me": {
                "get": {
                    "operationId": "me",
                    "summary": "Who you are and your limits",
                    "responses": {"200": _json(ME, "You"), **_errors(401)},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "responses": {"200": _json(HEALTH, "Healthy"), "503": _json(HEALTH, "Degraded")},
                }
            },
        },
    }
    _web_refusals(document["paths"])
    return document


def openapi_json(registry: TaskRegistry) -> Callable[[Request], Awaitable[Response]]:
    document = build_openapi(registry)

    async def endpoint(request: Request) -> Response:
        return JSONResponse(document)

    return endpoint
