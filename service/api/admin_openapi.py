"""GET /api/admin/openapi.json: the operator API's own contract, served to operators only.

Kept out of the public /api/openapi.json on purpose: that document is served to anyone, and listing /api/admin/*
there would reveal what the 404s for non-operators hide. Built from the same helpers and shapes as the public one;
tests/test_admin.py checks that every operator route is in it and validates real answers against its schemas.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..store.admin import FINISHED
from .openapi import ATTEMPT, BOOL, ERROR, INT, JOB_ERROR, NUM, STATUSES, STR, TIME, _errors, _json, _nullable, _obj

ADMIN_JOB_FIELDS: dict[str, Any] = {
    "job_id": STR,
    "type": STR,
    "status": {"enum": STATUSES},
    "priority": {"type": "integer", "minimum": 1, "maximum": 10},
    "user": _obj(["id", "name"], {"id": STR, "name": _nullable(STR)}),
    "input_summary": STR,
    "attempt": INT,
    "max_attempts": INT,
    "attempts": {"type": "array", "items": ATTEMPT},
    "percentage": NUM,
    "current_step": _nullable(STR),
    "error": JOB_ERROR,
    "worker_id": _nullable(STR),
    "running_on": _nullable(_obj(["provider", "model"], {"provider": _nullable(STR), "model": _nullable(STR)})),
    "model": _nullable(STR),
    "cancel_requested": BOOL,
    "retry_of": _nullable(STR),
    "request_id": _nullable(STR),
    "own_provider_key": BOOL,
    "created_at": TIME,
    "started_at": TIME,
    "completed_at": TIME,
    "updated_at": TIME,
    "lease_expires_at": TIME,
}
ADMIN_JOB = _obj(list(ADMIN_JOB_FIELDS), ADMIN_JOB_FIELDS)
STUCK_JOB = _obj([*ADMIN_JOB_FIELDS, "reason"], {**ADMIN_JOB_FIELDS, "reason": STR})
ACTION = _obj(
    ["id", "at", "operator", "action", "job_id", "job_user_id", "detail"],
    {
        "id": STR,
        "at": TIME,
        "operator": _obj(["id", "name"], {"id": STR, "name": STR}),
        "action": {"enum": ["retry", "cancel", "purge"]},
        "job_id": _nullable(STR),
        "job_user_id": _nullable(STR),
        "detail": {"type": "object"},
    },
)
_jobs = {"type": "array", "items": {"$ref": "#/components/schemas/AdminJob"}}
OVERVIEW = _obj(
    ["now", "counts", "queue", "workers", "running", "stuck", "failed", "expired", "backoff", "actions"],
    {
        "now": TIME,
        "counts": _obj(STATUSES, {s: INT for s in STATUSES}),
        "queue": _obj(
            ["total", "by_priority"],
            {
                "total": INT,
                "by_priority": {
                    "type": "array",
                    "items": _obj(
                        ["priority", "queued", "deferred", "oldest_wait"],
                        {"priority": INT, "queued": INT, "deferred": INT, "oldest_wait": NUM},
                    ),
                },
            },
        ),
        "workers": {
            "type": "array",
            "items": _obj(
                ["id", "slots", "busy", "alive_until", "last_heartbeat"],
                {"id": STR, "slots": INT, "busy": INT, "alive_until": TIME, "last_heartbeat": TIME},
            ),
        },
        "running": _obj(["total", "jobs"], {"total": INT, "jobs": _jobs}),
        "stuck": {"type": "array", "items": STUCK_JOB},
        "failed": _jobs,
        "expired": _jobs,
        "backoff": {
            **_nullable(
                {
                    "type": "array",
                    "items": _obj(
                        ["provider", "model", "seconds_left"], {"provider": STR, "model": STR, "seconds_left": NUM}
                    ),
                }
            ),
            "description": "Provider/model pauses in force (null: Redis did not answer)",
        },
        "actions": {"type": "array", "items": {"$ref": "#/components/schemas/Action"}},
    },
)
TIMING = _nullable(_obj(["count", "average", "p95"], {"count": INT, "average": NUM, "p95": NUM}))
CHARTS = _obj(
    ["since", "minute_seconds", "minutes"],
    {
        "since": TIME,
        "minute_seconds": INT,
        "minutes": {
            "type": "array",
            "minItems": 60,
            "maxItems": 60,
            "items": _obj(
                ["start", "finished", "wait", "run"],
                {
                    "start": TIME,
                    "finished": _obj(list(FINISHED), {s: INT for s in FINISHED}),
                    "wait": TIMING,
                    "run": TIMING,
                },
            ),
        },
    },
)
ACTED = _obj(["job", "action"], {"job": {"$ref": "#/components/schemas/AdminJob"}, "action": ACTION})
PURGED = _obj(["purged", "action"], {"purged": INT, "action": ACTION})
PURGE_BODY = _obj(
    ["finished_before"],
    {
        "finished_before": {
            "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "format": "date-time"}],
            "description": "Jobs that ended before this (unix seconds, a date or an RFC 3339 date-time) are purged",
        },
        "statuses": {"type": "array", "minItems": 1, "items": {"enum": list(FINISHED)}},
        "types": {"type": "array", "minItems": 1, "items": STR},
        "user": {"type": "string", "description": "Only this user's jobs (a user name)"},
    },
)
_NOT_FOUND = {404: "No such job (and, for anyone but an operator, this whole API: the unknown-path 404)"}


def build_admin_openapi() -> dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    empty_body = {"required": False, "content": {"application/json": {"schema": _obj([], {})}}}

    def action(op: str, summary: str, ok: dict[str, Any], *refusals: int) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op,
                "summary": summary,
                "parameters": [job_id],
                "requestBody": empty_body,
                "responses": {**ok, **_errors(400, 403, 404, *refusals, notes=_NOT_FOUND)},
            }
        }

    acted = {"$ref": "#/components/schemas/Acted"}
    return {
        "openapi": "3.2.0",
        "info": {
            "title": "aijobs operator API",
            "version": "1",
            "description": "For users marked operator (`aijobs users create NAME --operator`); anyone else gets the "
            "unknown-path 404 for every route here. Every retry, cancel and purge is recorded with who did it.",
        },
        "security": [{"bearer": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "aijobs_session"},
            },
            "schemas": {
                "Error": ERROR,
                "AdminJob": ADMIN_JOB,
                "Action": ACTION,
                "Acted": ACTED,
                "Purged": PURGED,
                "Overview": OVERVIEW,
                "Charts": CHARTS,
            },
        },
        "paths": {
            "/api/admin/overview": {
                "get": {
                    "operationId": "adminOverview",
                    "summary": "Queue depth by priority, live workers with their slots and heartbeats, running, "
                    "stuck, failed and expired jobs, provider back-off, the latest operator actions",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Overview"}, "Now"), **_errors(404)},
                }
            },
            "/api/admin/charts": {
                "get": {
                    "operationId": "adminCharts",
                    "summary": "The last hour by minute: jobs finished by status, wait and run time (mean, p95)",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Charts"}, "60 minutes"), **_errors(404)},
                }
            },
            "/api/admin/actions": {
                "get": {
                    "operationId": "adminActions",
                    "summary": "What operators did, newest first",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                        {"name": "job_id", "in": "query", "schema": STR, "description": "Only about this job"},
                    ],
                    "responses": {
                        "200": _json(_obj(["actions"], {"actions": {"type": "array", "items": ACTION}}), "The records"),
                        **_errors(400, 404),
                    },
                }
            },
            "/api/admin/jobs/{job_id}": {
                "get": {
                    "operationId": "adminGetJob",
                    "summary": "Any user's job",
                    "parameters": [job_id],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/AdminJob"}, "The job"),
                        **_errors(404, notes=_NOT_FOUND),
                    },
                }
            },
            "/api/admin/jobs/{job_id}/retry": action(
                "adminRetryJob",
                "A new job of the same owner repeating the request (failed, cancelled or expired jobs; under the "
                "owner's limits); 409 provider_key_required for a job that ran on its owner's own key",
                {"202": _json(acted, "The new job, and the record of the retry")},
                409,
                429,
                503,
            ),
            "/api/admin/jobs/{job_id}/cancel": action(
                "adminCancelJob",
                "Cancel any user's job, as its owner's cancel does",
                {"200": _json(acted, "The job, and the record of the cancel")},
                409,
            ),
            "/api/admin/jobs/{job_id}/purge": action(
                "adminPurgeJob",
                "Delete one finished job and its events (409 job_active while it runs)",
                {"200": _json({"$ref": "#/components/schemas/Purged"}, "Deleted, and the record of it")},
                409,
            ),
            "/api/admin/purge": {
                "post": {
                    "operationId": "adminPurge",
                    "summary": "Delete every finished job (and its events) the filter picks",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": PURGE_BODY}}},
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Purged"}, "How many, and the record of it"),
                        **_errors(400, 403, 404, 413, 415, 422),
                    },
                }
            },
            "/api/admin/openapi.json": {
                "get": {
                    "operationId": "adminOpenapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "This document"}},
                }
            },
        },
    }


def admin_openapi_json() -> Callable[[Request], Awaitable[Response]]:
    document = build_admin_openapi()

    async def endpoint(request: Request) -> Response:
        return JSONResponse(document, headers={"Cache-Control": "no-store"})

    return endpoint
