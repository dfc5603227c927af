""" "mine" watchers (GET /api/events, a WebSocket's subscribe "mine"): they read only their user's jobs (issue 15.8),
and a WebSocket "mine" subscription resumes from a cursor; unknown message fields are refused (issue 21.5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from typing import Any

import httpx
import pytest
import websockets

from service.config import Settings
from service.store.sqlite import ACTIVE_FOR_USER, SQLiteJobStore

from .conftest import LiveServer, run_worker
from .sse import read_events
from .test_push import auth, submit, ws_recv, ws_url


async def test_mine_watchers_read_only_their_users_active_jobs(
    client: httpx.AsyncClient, client_b: httpx.AsyncClient, web: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def every_users_jobs(self: SQLiteJobStore) -> list[Any]:
        raise AssertionError("a mine watcher loaded every user's active jobs")

    asked: list[str] = []
    per_user = SQLiteJobStore.active_for_user

    async def recorded(self: SQLiteJobStore, user_id: str) -> list[Any]:
        asked.append(user_id)
        return await per_user(self, user_id)

    monkeypatch.setattr(SQLiteJobStore, "list_active", every_users_jobs)
    monkeypatch.setattr(SQLiteJobStore, "active_for_user", recorded)
    mine = {await submit(client), await submit(client)}  # no worker: they stay queued
    theirs = await submit(client_b)
    me = (await client.get("/api/me")).json()["user"]["id"]

    async with client.stream("GET", "/api/events") as response:
        stream = read_events(response)
        first = [await asyncio.wait_for(anext(stream), 10) for _ in range(2)]
    assert {e.data["job_id"] for e in first} == mine and all(e.event == "snapshot" for e in first)

    async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "scope": "mine"}))
        assert await ws_recv(ws) == {"type": "subscribed", "scope": "mine"}
        snapshots = [await ws_recv(ws) for _ in range(2)]
    assert {m["job_id"] for m in snapshots} == mine and theirs not in mine
    assert asked == [me, me]


async def test_the_per_user_query_searches_an_index(settings: Settings) -> None:
    store = SQLiteJobStore(settings.sqlite_path)
    await store.open()  # migrated
    await store.close()
    with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db:
        plan = " ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {ACTIVE_FOR_USER}", ("someone",)))
    assert "SEARCH jobs USING INDEX jobs_user_status (user_id=? AND status=?)" in plan, plan


async def test_ws_mine_resumes_from_a_cursor(client: httpx.AsyncClient, web: LiveServer, settings: Settings) -> None:
    """A "mine" subscription with the SSE cursor format gets each listed job right after its seq: no snapshot,
    nothing twice, nothing missed; an active job not in the cursor starts from a snapshot."""
    slow = await submit(client, "Resume me [[slow:2]]")
    async with run_worker(settings):
        async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
            await ws.send(json.dumps({"type": "subscribe", "scope": "mine"}))
            assert (await ws_recv(ws))["type"] == "subscribed"
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["seq"] < 3:  # the snapshot, then live events
                seen.append(await ws_recv(ws))
        cut = seen[-1]["seq"]
        other = await submit(client, "Not in the cursor [[slow:2]]")
        async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
            await ws.send(json.dumps({"type": "subscribe", "scope": "mine", "cursor": f"{slow}:{cut}"}))
            assert (await ws_recv(ws))["type"] == "subscribed"
            rest: dict[str, list[dict[str, Any]]] = {}
            while not any(m.get("kind") == "status" and m.get("status") == "completed" for m in rest.get(slow, [])):
                msg = await ws_recv(ws, timeout=30)
                rest.setdefault(msg["job_id"], []).append(msg)
    final = (await client.get(f"/api/jobs/{slow}")).json()
    assert rest[slow][0]["kind"] != "snapshot"
    assert [m["seq"] for m in rest[slow]] == list(range(cut + 1, final["last_seq"] + 1))
    assert rest[other][0]["kind"] == "snapshot"  # active, not in the cursor: sent with the subscription


@pytest.mark.parametrize(
    ("message", "field", "hint"),
    [
        ({"type": "ping", "extra": 1}, "extra", "a ping message takes only type"),
        ({"type": "subscribe", "scope": "mine", "after": 3}, "after", "resumes from 'cursor'"),
        ({"type": "subscribe", "job_id": "x", "cursor": "x:1"}, "cursor", "one job resumes from 'after'"),
        ({"type": "subscribe", "job_id": "x", "afterr": 1}, "afterr", "takes only after, job_id, type"),
        ({"type": "unsubscribe", "scope": "mine", "job_id": "x"}, "job_id", "not both"),
        ({"type": "subscribe", "scope": "everyone"}, "scope", 'scope must be "mine"'),
        ({"type": "subscribe", "scope": "mine", "cursor": "nonsense"}, "cursor", "<job_id>:<seq>"),
    ],
)
async def test_ws_refuses_unknown_fields_naming_them(
    client: httpx.AsyncClient, web: LiveServer, message: dict[str, Any], field: str, hint: str
) -> None:
    async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
        await ws.send(json.dumps(message))
        err = await ws_recv(ws)
        assert err["type"] == "error" and err["field"] == field, err
        assert err["code"] in ("invalid_message", "invalid_cursor") and hint in err["message"], err
        await ws.send(json.dumps({"type": "ping"}))  # the connection carries on
        assert await ws_recv(ws) == {"type": "pong"}


async def test_a_job_made_once_the_headers_came_is_told_from_its_first_event(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/events answers its headers only once it is subscribed and has listed the active jobs: a job made
    after that (a page opens the stream, then submits) comes from seq 1, never as a snapshot of a later state.

    Listing the active jobs is held until a job is made or a second passes: with the headers sent first, the job
    is made while the stream is not yet listening, and the listing then finds it already under way."""
    from service.push.multiwatch import MultiWatch

    made = asyncio.Event()
    add_mine = MultiWatch.add_mine

    async def held(self: MultiWatch, cursor: dict[str, int] | None = None) -> list[Any]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(made.wait(), 1.0)
        return await add_mine(self, cursor)

    monkeypatch.setattr(MultiWatch, "add_mine", held)
    async with client.stream("GET", "/api/events") as response:
        assert response.status_code == 200
        stream = read_events(response)
        job_id = await submit(client)
        made.set()
        first = await asyncio.wait_for(anext(stream), 10)
    assert (first.event, first.data["job_id"], first.data["seq"]) == ("status", job_id, 1)


async def test_a_stream_that_cannot_start_is_a_json_503(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.push.multiwatch import MultiWatch

    async def broken(self: MultiWatch, cursor: dict[str, int] | None = None) -> list[Any]:
        raise ConnectionError("store gone")

    monkeypatch.setattr(MultiWatch, "add_mine", broken)
    response = await client.get("/api/events")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "stream_unavailable"
    assert response.headers["x-content-type-options"] == "nosniff"  # the security headers stay
