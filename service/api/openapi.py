"""GET /api/openapi.json: the API contract, built from the same schemas the code validates with.

Job inputs come from each task's input dataclass through `schema.json_schema` (what `schema.parse` enforces);
the response shapes below are the one description of what the handlers return, and the suite runs schemathesis
against the live app to hold the two together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..models import JobStatus
from ..schema import json_schema
from ..tasks import TaskRegistry
from .history import MAX_LIMIT
from .submit_rules import KEY_FIELD, MAX_KEY_CHARS

STATUSES = [s.value for s in JobStatus]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: list[str], props: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": extra}


NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
TIME = _nullable({"type": "string", "format": "date-time"})
ERROR = _obj(
    ["error"],
    {"error": _obj(["code", "message"], {"code": STR, "message": STR, "field": STR}, extra=True)},
)
JOB_ERROR = _nullable(
    _obj(["message", "code", "retryable"], {"message": STR, "code": STR, "retryable": {"type": "boolean"}})
)
USAGE = _nullable(
    _obj(
        ["prompt_tokens", "completion_tokens"],
        {"prompt_tokens": INT, "completion_tokens": INT, "estimated": {"type": "boolean"}},
        extra=True,
    )
)
LINKS = _obj(["self", "events"], {"self": STR, "events": STR})
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
    "poll_interval": NUM,
    "links": LINKS,
}
_JOB_REQUIRED = ["job_id", "type", "status", "priority", "progress", "attempt", "max_attempts", "result", "error"]
JOB = _obj(
    [*_JOB_REQUIRED, "input", "created_at"],
    {**_JOB_COMMON, "input": {"type": "object"}, "partial_output": _nullable(STR)},
    extra=True,
)
HISTORY_JOB = _obj(
    [*_JOB_REQUIRED, "input_summary", "durations", "cost", "links"],
    {
        **_JOB_COMMON,
        "input_summary": STR,
        "durations": _obj(["wait", "run"], {"wait": _nullable(NUM), "run": _nullable(NUM)}),
        "cost": _nullable(NUM),
    },
    extra=True,
)
TOTALS = {"jobs": INT, "prompt_tokens": INT, "completion_tokens": INT, "cost": NUM}
HISTORY = _obj(
    ["jobs", "next_cursor", "totals"],
    {
        "jobs": {"type": "array", "items": HISTORY_JOB},
        "next_cursor": _nullable(STR),
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
ME = _obj(["user", "limits"], {"user": USER, "limits": {"type": "object"}})
HEALTH = _obj(["status", "checks"], {"status": {"enum": ["ok", "degraded"]}, "checks": {"type": "object"}}, extra=True)


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(*statuses: int) -> dict[str, Any]:
    why = {
        400: "Bad request (malformed JSON, query or header)",
        401: "Not signed in: send a Bearer token or the session cookie",
        404: "No such job for this user (another user's job looks exactly the same)",
        413: "Body or input too large",
        415: "Body is not JSON",
        422: "Input breaks the job type's schema",
        429: "Over a per-user limit; see Retry-After",
    }
    out = {str(s): _json({"$ref": "#/components/schemas/Error"}, why[s]) for s in statuses}
    if "429" in out:
        out["429"]["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait"}}
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
                        "type": "string",
                        "pattern": f"^[!-~]{{1,{MAX_KEY_CHARS}}}$",
                        "description": "Your own provider API key for this job alone; stored only encrypted, "
                        "deleted when the job ends, never returned",
                    },
                },
            }
        )
    return {"oneOf": variants}


def build_openapi(registry: TaskRegistry) -> dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    list_param = {"type": "string", "description": "comma-separated"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aijobs",
            "version": "1",
            "description": "Slow AI requests as background jobs with live progress. Errors are always "
            '{"error": {"code", "message"}}.',
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
                        {
                            "name": "X-Provider-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": f"^[!-~]{{1,{MAX_KEY_CHARS}}}$"},
                            "description": f"Alternative to the body's `{KEY_FIELD}` (send one, not both)",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": submit_schema(registry)}},
                    },
                    "responses": {
                        "202": _json({"$ref": "#/components/schemas/Job"}, "Accepted: stored and queued"),
                        **_errors(400, 401, 413, 415, 422, 429),
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "Your job history, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": list_param, "description": f"any of {STATUSES}"},
                        {"name": "type", "in": "query", "schema": list_param, "description": "job types"},
                        {"name": "since", "in": "query", "schema": STR, "description": "unix seconds or ISO 8601"},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                        },
                        {"name": "cursor", "in": "query", "schema": STR, "description": "next_cursor of the last page"},
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/History"}, "A page"),
                        **_errors(400, 401),
                    },
                },
            },
            "/api/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "The job now (the polling fallback)",
                    "parameters": [job_id],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Job"}, "The job"),
                        "304": {"description": "Unchanged since If-None-Match"},
                        **_errors(401, 404),
                    },
                }
            },
            "/api/jobs/{job_id}/events": {
                "get": {
                    "operationId": "jobEvents",
                    "summary": "Server-Sent Events: snapshot, progress, delta, status; ends after the terminal one",
                    "parameters": [
                        job_id,
                        {"name": "after", "in": "query", "schema": STR, "description": "like Last-Event-ID"},
                    ],
                    "responses": {
                        "200": {"description": "An event stream", "content": {"text/event-stream": {"schema": STR}}},
                        **_errors(400, 401, 404, 429),
                    },
                }
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
                        "content": {"application/json": {"schema": _obj([], {"token": STR})}},
                    },
                    "responses": {"200": _json(SESSION, "Signed in; Set-Cookie"), **_errors(400, 401, 422)},
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


def openapi_json(registry: TaskRegistry) -> Callable[[Request], Awaitable[Response]]:
    document = build_openapi(registry)

    async def endpoint(request: Request) -> Response:
        return JSONResponse(document)

    return endpoint
