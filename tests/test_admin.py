"""The operator API (/api/admin/*) and page route (/admin), over real uvicorn with a real worker and Redis.

Anyone but an operator gets the unknown-path 404 for every method and path there; operators see every user's jobs,
workers, queue and back-off, and retry, cancel and purge any user's job through the same code paths as its owner,
each action recorded with who did it. Answers are checked against the operator contract (admin_openapi.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import jsonschema_rs
import pytest
from redis.asyncio import Redis

from service.api.admin_openapi import build_admin_openapi
from service.config import Settings
from service.coordination import ProviderBackoff
from service.events import stream_key
from service.store import open_users

from .conftest import LiveServer, make_user, run_worker, wait_for_status
from .procs import store_sql

CONTRACT = build_admin_openapi()


def valid(name: str, body: Any) -> Any:
    """`body` checked against the operator contract's schema `name` (its $refs resolved in the document)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": CONTRACT["components"]}
    jsonschema_rs.validate(schema, body)
    return body


async def make_operator(settings: Settings, name: str = "root") -> str:
    async with open_users(settings) as users:
        _, token = await users.create(name, operator=True)
    return token


@pytest.fixture
async def root(web: LiveServer, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    token = await make_operator(settings)
    async with httpx.AsyncClient(base_url=web.url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def unknown_path(r: httpx.Response, method: str, path: str) -> bool:
    """Exactly what the app answers for a path it does not have."""
    want = {"error": {"code": "not_found", "message": f"No such endpoint: {method} {path}"}}
    return r.status_code == 404 and r.json() == want


HIDDEN = [
    ("GET", "/admin"),
    ("GET", "/admin/"),
    ("POST", "/admin"),
    ("GET", "/api/admin"),
    ("GET", "/api/admin/"),
    ("GET", "/api/admin/overview"),
    ("POST", "/api/admin/overview"),  # a wrong method is a 404 too, not a 405 naming the right one
    ("GET", "/api/admin/charts"),
    ("GET", "/api/admin/actions"),
    ("GET", "/api/admin/jobs/x"),
    ("POST", "/api/admin/jobs/x/retry"),
    ("GET", "/api/admin/jobs/x/retry"),
    ("POST", "/api/admin/jobs/x/cancel"),
    ("POST", "/api/admin/jobs/x/purge"),
    ("POST", "/api/admin/purge"),
    ("GET", "/api/admin/openapi.json"),
]


async def test_only_operators_find_the_operator_routes(
    web: LiveServer, settings: Settings, client: httpx.AsyncClient, root: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=web.url, timeout=10) as anonymous:
        bad_token = {"Authorization": "Bearer aij_not-a-token"}
        for method, path in HIDDEN:
            for who, c, headers in (
                ("user", client, {}),
                ("nobody", anonymous, {}),
                ("bad token", anonymous, bad_token),
            ):
                r = await c.request(method, path, headers=headers, json={} if method == "POST" else None)
                assert unknown_path(r, method, path), (who, method, path, r.status_code, r.text)
        public = (await anonymous.get("/api/openapi.json")).text
        assert "/api/admin" not in public and "/admin" not in public, "the public contract does not name them"

    page = await root.get("/admin")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store" and "/static/admin.js" in page.text
    assert unknown_path(await root.get("/admin/"), "GET", "/admin/"), "only /admin itself"
    assert unknown_path(await root.get("/api/admin/nope"), "GET", "/api/admin/nope")
    wrong = await root.post("/api/admin/overview")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed", "operators: a 405"
    assert (await root.get("/api/admin/openapi.json")).json()["info"]["title"] == "aijobs operator API"

    async with open_users(settings) as users:
        await users.set_operator("root", False)
    assert unknown_path(await root.get("/api/admin/overview"), "GET", "/api/admin/overview"), "the next request"
    async with open_users(settings) as users:
        await users.set_operator("alice", True)  # `client` is alice
    valid("Overview", (await client.get("/api/admin/overview")).json())


def test_every_operator_route_is_in_the_operator_contract(settings: Settings) -> None:
    from starlette.routing import Route, Router

    from service.api.admin import admin_routes

    gate = next(r for r in admin_routes() if r.path == "/api/admin{rest:path}")
    router = gate.app.app  # type: ignore[attr-defined]  # OperatorGate(Router)
    assert isinstance(router, Router)
    served = {
        (m.lower(), r.path) for r in router.routes if isinstance(r, Route) for m in r.methods or () if m != "HEAD"
    }
    documented = {(m, path) for path, ops in CONTRACT["paths"].items() for m in ops}
    assert served == documented


async def test_operators_act_on_anyones_job_and_each_action_is_recorded(
    web: LiveServer, settings: Settings, client: httpx.AsyncClient, root: httpx.AsyncClient
) -> None:
    async with run_worker(settings):
        text = f"fails once {uuid.uuid4().hex[:8]} [[fail:400:times=1]]"
        posted = await client.post("/api/jobs", json={"type": "summary", "input": {"text": text}})
        failed = posted.json()["job_id"]
        await wait_for_status(client, failed, {"failed"})
        seen = await root.get(f"/api/admin/jobs/{failed}")  # the id to find the job's log lines, web and worker
        assert valid("AdminJob", seen.json())["request_id"] == posted.headers["X-Request-ID"], seen.text
        assert unknown_path(
            await client.post(f"/api/admin/jobs/{failed}/retry"), "POST", f"/api/admin/jobs/{failed}/retry"
        )

        retried = await root.post(f"/api/admin/jobs/{failed}/retry")
        assert retried.status_code == 202, retried.text
        body = valid("Acted", retried.json())
        new = body["job"]["job_id"]
        assert body["job"]["user"]["name"] == "alice" and body["job"]["retry_of"] == failed
        assert body["action"]["operator"]["name"] == "root" and body["action"]["action"] == "retry"
        assert body["action"]["job_id"] == failed and body["action"]["detail"]["new_job_id"] == new
        done = await wait_for_status(client, new, {"completed", "failed"})  # the owner's job: alice reads it
        assert done["status"] == "completed" and done["retry_of"] == failed
        again = await root.post(f"/api/admin/jobs/{new}/retry")
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_retryable"
        assert (await root.post(f"/api/admin/jobs/{new}/retry", json={"x": 1})).status_code == 400

        slow = {"type": "chat", "input": {"messages": [{"role": "user", "content": "long [[slow:30]]"}]}}
        running = (await client.post("/api/jobs", json=slow)).json()["job_id"]
        await wait_for_status(client, running, {"processing"})
        busy = await root.post(f"/api/admin/jobs/{running}/purge")
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "job_active"
        cancelled = await root.post(f"/api/admin/jobs/{running}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert valid("Acted", cancelled.json())["action"]["detail"]["status"] in ("cancelled", "processing")
        await wait_for_status(client, running, {"cancelled"})
        finished = await root.post(f"/api/admin/jobs/{new}/cancel")
        assert finished.status_code == 409 and finished.json()["error"]["code"] == "job_finished"

        redis = Redis.from_url(settings.redis_url or "")
        try:
            assert await redis.exists(stream_key(failed))
            purged = await root.post(f"/api/admin/jobs/{failed}/purge")
            assert purged.status_code == 200 and valid("Purged", purged.json())["purged"] == 1
            assert (await client.get(f"/api/jobs/{failed}")).status_code == 404, "gone from its owner's jobs"
            assert not await redis.exists(stream_key(failed)), "its events too"
        finally:
            await redis.aclose()
        assert (await root.post(f"/api/admin/jobs/{failed}/purge")).status_code == 404

        for bad, code in [
            ({}, "invalid_finished_before"),
            ({"finished_before": "yesterday"}, "invalid_finished_before"),
            ({"finished_before": 0, "statuses": ["queued"]}, "invalid_statuses"),
            ({"finished_before": 0, "types": ["nope"]}, "invalid_types"),
            ({"finished_before": 0, "user": "nobody"}, "unknown_user"),
            ({"finished_before": 0, "everything": True}, "unknown_field"),
            ([1], "invalid_body"),
        ]:
            r = await root.post("/api/admin/purge", json=bad)
            assert r.status_code in (400, 422) and r.json()["error"]["code"] == code, (bad, r.text)
        by_filter = await root.post(
            "/api/admin/purge", json={"finished_before": time.time() + 60, "statuses": ["cancelled"], "user": "alice"}
        )
        assert by_filter.status_code == 200 and valid("Purged", by_filter.json())["purged"] == 1
        assert (await client.get(f"/api/jobs/{running}")).status_code == 404
        assert (await client.get(f"/api/jobs/{new}")).status_code == 200, "a completed job is not in that filter"

    actions = (await root.get("/api/admin/actions")).json()["actions"]
    assert [(a["action"], a["job_id"]) for a in actions] == [
        ("purge", None),
        ("purge", failed),
        ("cancel", running),
        ("retry", failed),
    ], "newest first; refused actions left no record"
    assert {a["operator"]["name"] for a in actions} == {"root"}
    assert actions[0]["detail"]["purged"] == 1 and actions[0]["detail"]["filter"]["statuses"] == ["cancelled"]
    about = (await root.get("/api/admin/actions", params={"job_id": failed, "limit": 1})).json()["actions"]
    assert [a["action"] for a in about] == ["purge"]
    assert (await root.get("/api/admin/actions", params={"limit": "0"})).status_code == 400

    charts = valid("Charts", (await root.get("/api/admin/charts")).json())
    ended = {s: sum(m["finished"][s] for m in charts["minutes"]) for s in ("completed", "failed", "cancelled")}
    assert ended == {"completed": 1, "failed": 0, "cancelled": 0}, "purged jobs leave the charts"
    assert sum(m["run"]["count"] for m in charts["minutes"] if m["run"]) == 1


async def test_a_job_on_its_owners_own_key_is_not_retried_by_an_operator(
    settings: Settings, client: httpx.AsyncClient, root: httpx.AsyncClient
) -> None:
    job = {"type": "summary", "input": {"text": "mine [[fail:400]]"}, "user_provided_key": "sk-own-key-123"}
    async with run_worker(settings):
        job_id = (await client.post("/api/jobs", json=job)).json()["job_id"]
        await wait_for_status(client, job_id, {"failed"})
    r = await root.post(f"/api/admin/jobs/{job_id}/retry")
    assert r.status_code == 409 and r.json()["error"]["code"] == "provider_key_required"
    assert (await root.get("/api/admin/actions")).json()["actions"] == []


async def test_the_overview_shows_queue_workers_stuck_jobs_and_back_off(
    settings: Settings, client: httpx.AsyncClient, root: httpx.AsyncClient
) -> None:
    bob = await make_user(settings, "bob")
    for priority in (9, 9, 3):
        await client.post("/api/jobs", json={"type": "summary", "input": {"text": "wait"}, "priority": priority})
    body = {"type": "summary", "input": {"text": "lost"}}
    lost = (await client.post("/api/jobs", json=body, headers={"Authorization": f"Bearer {bob}"})).json()["job_id"]
    t = time.time()
    store_sql(
        settings,
        "UPDATE jobs SET status = 'processing', attempts = 1, lease_token = 'gone', worker_id = 'gone:1:abc', "
        "started_at = ?, lease_expires_at = ? WHERE id = ?",
        (t - 20, t - 5, lost),
    )
    redis = Redis.from_url(settings.redis_url or "")
    try:
        # A model no other test's job uses: the pause is shared by everything on this Redis, as in production.
        await ProviderBackoff(redis).pause("simulated", "sim-admin-view", 30)
        view = valid("Overview", (await root.get("/api/admin/overview")).json())
    finally:
        await redis.aclose()
    assert view["queue"]["total"] == 3 and view["counts"]["queued"] == 3
    assert [(p["priority"], p["queued"]) for p in view["queue"]["by_priority"]] == [(9, 2), (3, 1)]
    assert view["workers"] == [] and view["running"]["total"] == 1
    [stuck] = view["stuck"]
    assert stuck["job_id"] == lost and stuck["user"]["name"] == "bob" and "lease lapsed" in stuck["reason"]
    [paused] = view["backoff"]
    assert (paused["provider"], paused["model"]) == ("simulated", "sim-admin-view")
    assert 25 < paused["seconds_left"] <= 30

    async with run_worker(settings):
        deadline = time.monotonic() + 10
        while not (view := (await root.get("/api/admin/overview")).json())["workers"]:
            assert time.monotonic() < deadline, "the worker never showed"
            await asyncio.sleep(0.05)
        [worker] = view["workers"]
        assert worker["slots"] == settings.worker_concurrency and worker["busy"] >= 0
        # `now` is read before the workers (a heartbeat may land in between): within a heartbeat of it, then.
        beat, now = (datetime.fromisoformat(view[k] if k == "now" else worker[k]) for k in ("last_heartbeat", "now"))
        assert abs((now - beat).total_seconds()) < settings.heartbeat_seconds * 3
        assert view["now"] < worker["alive_until"]


def test_the_cli_makes_operators_and_takes_the_role_away(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("AIJOBS_DATA_DIR", str(settings.data_dir))
    assert main(["users", "create", "ops", "--operator"]) == 0
    assert "Created operator user ops" in capsys.readouterr().out
    assert main(["users", "create", "dev"]) == 0
    assert main(["users", "operator", "dev"]) == 0 and "dev is an operator now" in capsys.readouterr().out
    assert main(["users", "operator", "ops", "--off"]) == 0
    assert "ops is no longer an operator" in capsys.readouterr().out
    assert main(["users", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].endswith("  ops") and listed[1].endswith("  dev  (operator)"), listed
    assert main(["users", "operator", "nobody"]) == 1
    with pytest.raises(SystemExit, match="--operator goes with create"):
        main(["users", "list", "--operator"])
