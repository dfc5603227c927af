"""The OpenAPI document is the contract: schemathesis runs every check of every phase against the live app.

Real uvicorn, a real worker (jobs finish, so finished jobs' shapes are checked too), derandomized so a run is
repeatable. schemathesis' own engine runs its four phases: the schema's examples, *coverage* (boundary values, a
missing or malformed parameter, methods a path does not support: 405 with an `Allow` that lists exactly its
methods), *fuzzing* (positive and negative data) and *stateful* sequences that follow the contract's links from a
new job to its read, events, cancel and retry. Every check is on: no 5xx; statuses, content types, headers and
bodies as documented (SSE events one by one, `data` against its kind's schema); valid data accepted and invalid
data refused; auth not ignored; a job created is there to read. A failure prints each finding with a curl line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import events

from service.api.app import create_app
from service.config import Settings
from service.tasks import default_registry

from .conftest import make_user, run_worker, serve

MAX_EXAMPLES = 25
STREAMS = ("jobEvents", "allEvents")


def contract_config(token: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {token}"},
            "seed": 1,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "request-timeout": 10,
            # Every check is on by default; refusing invalid data with a 413 or a 415 is a refusal too.
            "checks": {
                "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "413", "415", "422"]},
            },
            "phases": {"stateful": {"max-steps": 8}},
            "operations": [
                # A stream is read up to its first event (the snapshot, or the next event after a resume point),
                # and cut after 2 s without one.
                {"include-operation-id": list(STREAMS), "max-stream-events": 1, "request-timeout": 2},
                {"include-operation-id": "allEvents", "generation": {"max-examples": 8}},
            ],
        }
    )


# Refusals of valid-looking requests that depend on earlier requests or on the job's state, which no schema can
# express; each is in its operation's description in the contract and tested on its own (test_provider_key.py,
# test_cancel_retry.py, test_sse.py).
STATEFUL_REFUSALS = {
    "idempotency_key_reused",  # 422: an Idempotency-Key already used with another body
    "provider_key_twice",  # 400: different keys in the body and in X-Provider-Key
    "provider_key_required",  # 422: a retry of a job that ran on the user's key, without the key
    "invalid_last_event_id",  # 400: a well-formed resume point beyond the job's last event (a malformed one is
    # schema-invalid, so never filtered here)
    # 422: a well-formed webhook URL whose host has no address (DNS says so, not the schema), or resolves to an address
    # that is not public (loopback, private, ...: decided by the resolved address and WEBHOOK_ALLOW_NETS)
    "webhook_host_unknown",
    "webhook_url_refused",
}


def stateful_refusal(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    """schemathesis `filter_failure` hook: keep every failure but a STATEFUL_REFUSALS answer to valid data, and
    uvicorn's own plain-text 400 for bytes that are not HTTP (the request never reached the app, which documents
    only what it answers itself)."""
    if response is not None and response.status_code == 400 and response.content == b"Invalid HTTP request received.":
        return False
    if getattr(failure, "code", None) != "ST202":  # RejectedPositiveData
        return True
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return True
    return code not in STATEFUL_REFUSALS


def readable(label: str, check: Any) -> str:
    info = check.failure_info
    return f"{label}: {check.name}: {info.failure.title}\n{info.failure.message}\n{info.code_sample}"


def run_contract(base_url: str, token: str) -> tuple[list[str], Counter[str]]:
    """All phases, all checks; returns the failures (readable) and how many cases each operation ran."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json", config=contract_config(token))
    schema.config.update(base_url=base_url)
    schema.hook("filter_failure")(stateful_refusal)
    failures: list[str] = []
    cases: Counter[str] = Counter()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, checks in event.recorder.checks.items():
                label = event.recorder.cases[case_id].value.operation.label
                cases[f"{event.phase.value}: {label}"] += 1
                failures += [readable(label, c) for c in checks if c.failure_info is not None]
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: error: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            failures.append(f"fatal: {event.exception!r}")
    return sorted(set(failures)), cases


@pytest.mark.timeout(600)  # ~20 s of CPU (schemathesis and the server share this process)
async def test_the_server_keeps_the_contract_under_every_schemathesis_check(settings: Settings) -> None:
    roomy = dataclasses.replace(
        settings,
        submissions_per_minute=100_000,
        max_active_jobs=100_000,
        max_streams=1000,
        # a webhook to whatever public address the fuzzer names is accepted: its delivery is tried once, briefly
        webhook_max_attempts=1,
        webhook_timeout=1.0,
    )
    assert roomy.redis_url
    async with serve(create_app(roomy, redis_url=roomy.redis_url)) as live, run_worker(roomy):
        token = await make_user(roomy, "schemathesis")
        # One job runs through the whole run, so `GET /api/events` always has a snapshot to send at once.
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {token}"}) as api:
            body = {"type": "chat", "input": {"messages": [{"role": "user", "content": "hold [[slow:600]]"}]}}
            assert (await api.post("/api/jobs", json=body)).status_code == 202
        started = time.monotonic()
        failures, cases = await asyncio.to_thread(run_contract, live.url, token)
        took = time.monotonic() - started
    print(f"contract run: {sum(cases.values())} cases in {took:.1f} s")
    for line in sorted(cases.items()):
        print(f"  {line[0]}: {line[1]}")
    assert not failures, f"{len(failures)} contract failure(s):\n\n" + "\n\n".join(failures)
    operations = {label.split(": ", 1)[1] for label in cases}
    every = {"POST /api/jobs", "GET /api/jobs", "GET /api/jobs/{job_id}", "GET /api/jobs/{job_id}/events"}
    every |= {"POST /api/jobs/{job_id}/cancel", "POST /api/jobs/{job_id}/retry", "GET /api/events"}
    every |= {"GET /api/jobs/{job_id}/webhooks", "GET /api/webhooks/secret", "POST /api/webhooks/secret"}
    assert every <= operations, operations
    assert any(label.startswith("stateful") for label in cases), "the links were never followed"


async def test_openapi_inputs_come_from_the_task_schemas(web: Any) -> None:
    from service.schema import json_schema

    async with httpx.AsyncClient(base_url=web.url) as c:
        doc = (await c.get("/api/openapi.json")).json()
    variants = doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    by_type = {v["properties"]["type"]["const"]: v["properties"]["input"] for v in variants}
    assert by_type == {spec.name: json_schema(spec.input_type) for spec in default_registry()}
    assert doc["paths"]["/api/jobs"]["get"] and doc["paths"]["/api/stats"]["get"]


def test_every_api_route_is_in_the_contract(settings: Settings) -> None:
    """A new endpoint cannot be left out of the contract again (cancel, retry and /api/events once were)."""
    from starlette.routing import Route

    from service.api.openapi import build_openapi

    assert settings.redis_url
    app = create_app(settings, redis_url=settings.redis_url)
    served = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, Route) and (route.path.startswith("/api/") or route.path == "/healthz")
        for method in route.methods or ()
        if method != "HEAD" and route.path != "/api/openapi.json"
    }
    documented = {(method, path) for path, ops in build_openapi(default_registry())["paths"].items() for method in ops}
    assert served == documented


@pytest.mark.parametrize("path", ["/api/jobs", "/api/stats", "/api/me"])
async def test_documented_operations_need_auth(web: Any, path: str) -> None:
    async with httpx.AsyncClient(base_url=web.url) as c:
        doc = (await c.get("/api/openapi.json")).json()
        assert "401" in next(iter(doc["paths"][path].values()))["responses"]
        assert (await c.get(path)).status_code == 401
