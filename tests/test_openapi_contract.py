"""The OpenAPI document is the contract: schemathesis fuzzes every operation on the live app (real uvicorn).

Bounded: a fixed number of examples per operation and mode (positive and negative), derandomized so a run is
repeatable. A failure is any 5xx, an undocumented status or content type, a body that breaks its schema, or
schema-violating input that is not refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.app import create_app
from service.config import Settings
from service.tasks import default_registry

from .conftest import make_user, serve

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(base_url: str, token: str) -> dict[str, int]:
    """Run every operation in both modes; raise on the first failing case (schemathesis explains it)."""
    config = schemathesis.Config.from_dict(
        # Invalid input must be refused with a 4xx; 413 (oversized input) is a refusal too.
        {
            "checks": {
                "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "413", "415", "422"]}
            }
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json", config=config)
    headers = {"Authorization": f"Bearer {token}"}
    ran: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hsettings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                checks = CHECKS + [negative_data_rejection]
                case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=10)
                ran[case.operation.label] = ran.get(case.operation.label, 0) + 1

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return ran


async def test_schemathesis_finds_no_5xx_and_no_schema_break(settings: Settings) -> None:
    roomy = dataclasses.replace(settings, submissions_per_minute=100_000, max_active_jobs=100_000)
    assert roomy.redis_url
    async with serve(create_app(roomy, redis_url=roomy.redis_url)) as live:
        token = await make_user(roomy, "schemathesis")
        ran = await asyncio.to_thread(fuzz, live.url, token)
    assert {"POST /api/jobs", "GET /api/jobs", "GET /api/jobs/{job_id}", "GET /api/stats"} <= set(ran), ran


async def test_openapi_inputs_come_from_the_task_schemas(web: Any) -> None:
    from service.schema import json_schema

    async with httpx.AsyncClient(base_url=web.url) as c:
        doc = (await c.get("/api/openapi.json")).json()
    variants = doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    by_type = {v["properties"]["type"]["const"]: v["properties"]["input"] for v in variants}
    assert by_type == {spec.name: json_schema(spec.input_type) for spec in default_registry()}
    assert doc["paths"]["/api/jobs"]["get"] and doc["paths"]["/api/stats"]["get"]


@pytest.mark.parametrize("path", ["/api/jobs", "/api/stats", "/api/me"])
async def test_documented_operations_need_auth(web: Any, path: str) -> None:
    async with httpx.AsyncClient(base_url=web.url) as c:
        doc = (await c.get("/api/openapi.json")).json()
        assert "401" in next(iter(doc["paths"][path].values()))["responses"]
        assert (await c.get(path)).status_code == 401
