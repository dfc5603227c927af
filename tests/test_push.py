"""GET /api/events (all of the caller's jobs, composite cursor) and WS /api/ws, through real uvicorn + worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from .conftest import LiveServer, wait_for_status
from .sse import SseEvent, collect
from .sse import read_events as read_all_events

pytestmark = pytest.mark.usefixtures("worker")


async def submit(client: httpx.AsyncClient, text: str = "Streams and queues [[slow:1]]") -> str:
    r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": text}})
    assert r.status_code == 202
    return r.json()["job_id"]


def auth(client: httpx.AsyncClient) -> dict[str, str]:
    """The WebSocket handshake signs in like any request: the test user's Bearer token."""
    return {"Authorization": client.headers["authorization"]}


async def read_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """The stream's logged events: a queued job's `position` updates (no id, no seq; sent whenever the job is still
    queued at a push tick, so more of them on a slow machine) are left out."""
    async for event in read_all_events(response):
        if event.event != "position":
            yield event


def ws_url(web: LiveServer) -> str:
    return web.url.replace("http://", "ws://") + "/api/ws"


async def read_until_done(response: httpx.Response, jobs: set[str], out: list[SseEvent]) -> None:
    """Read the /api/events stream until every job in `jobs` has sent its terminal event."""
    left = set(jobs)
    async for event in read_events(response):
        out.append(event)
        d = event.data
        status = d["job"]["status"] if event.event == "snapshot" else d.get("status")
        if d["job_id"] in left and status in {"completed", "failed", "cancelled", "expired"}:
            left.discard(d["job_id"])
            if not left:
                return


async def must_have(client: httpx.AsyncClient, job_id: str) -> list[int]:
    """Seqs a live watcher may not skip: every event but progress (which a busy client gets coalesced)."""
    log, _ = await collect(client, f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "0"})
    return [e.data["seq"] for e in log if e.event != "progress"]


def per_job(events: list[SseEvent]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in events:
        out.setdefault(e.data["job_id"], []).append(e.data["seq"])
    return out


async def test_all_events_streams_every_job_of_the_user(client: httpx.AsyncClient) -> None:
    before = await submit(client)  # active before the stream opens: starts from a snapshot
    events: list[SseEvent] = []
    done: set[str] = set()
    async with client.stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = read_events(response)
        events.append(await asyncio.wait_for(anext(stream), 5))
        after = await submit(client)  # created while watching: its whole story from seq 1

        async def until_both_done() -> None:
            async for event in stream:
                events.append(event)
                if event.event == "status" and event.data["status"] == "completed":
                    done.add(event.data["job_id"])
                if done >= {before, after}:
                    return

        await asyncio.wait_for(until_both_done(), 15)
    seqs = per_job(events)
    assert events[0].event == "snapshot" and events[0].data["job_id"] == before
    assert seqs[after][0] == 1, "a new job is seen from its first event"
    for job_id, s in seqs.items():
        assert s == sorted(set(s)), f"{job_id}: in order, no duplicate"
    assert set(await must_have(client, after)) <= set(seqs[after]), "no state change or delta missed"


async def test_all_events_resume_with_composite_cursor_is_gap_free(client: httpx.AsyncClient) -> None:
    a = await submit(client)
    b = await submit(client)
    first: list[SseEvent] = []
    async with client.stream("GET", "/api/events") as response:
        async for event in read_events(response):
            first.append(event)
            if len(first) >= 4:
                break
    cursor = first[-1].id
    assert cursor is not None and a in cursor or b in cursor
    seen = per_job(first)
    rest: list[SseEvent] = []
    async with client.stream("GET", "/api/events", headers={"Last-Event-ID": cursor}) as response:
        await asyncio.wait_for(read_until_done(response, {a, b}, rest), 20)
    positions = dict(part.rsplit(":", 1) for part in cursor.split(","))
    for job_id in (a, b):
        before, after = seen.get(job_id, []), per_job(rest).get(job_id, [])
        got = before + after
        assert got == sorted(set(got)), f"{job_id}: in order, nothing twice across the cut"
        if job_id in positions:
            assert after[0] == int(positions[job_id]) + 1, "resume starts right after the cursor"
        snap = [e.data["seq"] for e in first + rest if e.data["job_id"] == job_id and e.event == "snapshot"]
        need = [q for q in await must_have(client, job_id) if q >= (snap[0] if snap else 1)]
        assert set(need) <= set(got), f"{job_id}: no state change or delta missed"


async def test_all_events_cursor_drops_ids_it_does_not_follow(
    client: httpx.AsyncClient, client_b: httpx.AsyncClient
) -> None:
    """A cursor's unknown or someone else's job ids are ignored, and not echoed back in every later `id:`."""
    mine = await submit(client)
    theirs = await submit(client_b)
    cursor = f"no-such-job:4,{theirs}:1,{mine}:1"
    events: list[SseEvent] = []
    async with client.stream("GET", "/api/events", headers={"Last-Event-ID": cursor}) as response:
        await asyncio.wait_for(read_until_done(response, {mine}, events), 20)
    ids = [e.id for e in events if e.id]
    assert ids and all(f"{mine}:" in i for i in ids[:-1]), ids
    assert not any("no-such-job" in i or theirs in i for i in ids), ids
    assert {e.data["job_id"] for e in events} == {mine}


async def test_all_events_bad_cursor_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/events", headers={"Last-Event-ID": "nonsense"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_last_event_id"


async def ws_recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    """The next message that is neither a server keepalive nor a queued job's `position` (not logged, no seq: sent
    whenever a job is still queued at a tick of POSITION_PUSH_SECONDS, which on a busy machine any job may be)."""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg != {"type": "ping"} and msg.get("kind") != "position":
            return msg


async def ws_until_terminal(ws: Any, job_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        msg = await ws_recv(ws)
        if msg.get("type") == "ping":
            continue
        out.append(msg)
        if msg.get("job_id") == job_id and msg.get("kind") == "status" and msg["status"] == "completed":
            return out


async def test_ws_subscribe_to_a_job_gets_its_story(client: httpx.AsyncClient, web: LiveServer) -> None:
    job_id = await submit(client)
    async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "job_id": job_id}))
        assert await ws_recv(ws) == {"type": "subscribed", "job_id": job_id}
        msgs = await ws_until_terminal(ws, job_id)
    assert msgs[0]["kind"] == "snapshot"
    seqs = [m["seq"] for m in msgs]
    assert seqs == sorted(set(seqs))
    assert msgs[-1]["result"]["titles"]


async def test_ws_resume_after_n_is_gap_free(client: httpx.AsyncClient, web: LiveServer) -> None:
    job_id = await submit(client)
    async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "job_id": job_id}))
        await ws_recv(ws)
        first = [await ws_recv(ws) for _ in range(3)]
    cut = first[-1]["seq"]
    async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "job_id": job_id, "after": cut}))
        await ws_recv(ws)
        rest = await ws_until_terminal(ws, job_id)
    final = (await client.get(f"/api/jobs/{job_id}")).json()
    assert [m["seq"] for m in rest] == list(range(cut + 1, final["last_seq"] + 1))


async def test_ws_mine_ping_and_errors(client: httpx.AsyncClient, web: LiveServer) -> None:
    async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert await ws_recv(ws) == {"type": "pong"}
        await ws.send(json.dumps({"type": "subscribe", "scope": "mine"}))
        assert await ws_recv(ws) == {"type": "subscribed", "scope": "mine"}
        job_id = await submit(client, "quick")
        msgs = await ws_until_terminal(ws, job_id)
        assert [m["seq"] for m in msgs] == list(range(1, msgs[-1]["seq"] + 1))
        missing = "00000000-0000-0000-0000-000000000000"
        await ws.send(json.dumps({"type": "subscribe", "job_id": missing}))
        err = await ws_recv(ws)
        assert err == {"type": "error", "code": "job_not_found", "message": "No job with that id.", "job_id": missing}
        for bad in [
            "{",
            "[1]",
            json.dumps({"type": "dance"}),
            json.dumps({"type": "subscribe", "job_id": job_id, "after": -1}),
        ]:
            await ws.send(bad)
            assert (await ws_recv(ws))["type"] == "error"
        await ws.send("x" * 5000)
        assert (await ws_recv(ws))["code"] == "message_too_large"


def refusal(info: pytest.ExceptionInfo[websockets.exceptions.InvalidStatus]) -> tuple[int, str]:
    """The status and JSON error code a refused handshake was answered with (before any upgrade)."""
    response = info.value.response
    assert response.headers["content-type"] == "application/json"
    return response.status_code, json.loads(response.body)["error"]["code"]


async def test_ws_without_a_valid_token_is_refused_before_upgrade(web: LiveServer) -> None:
    """`WS /api/ws` skips Starlette's middleware (api/direct.py): no token, or a wrong one, is the same 401 JSON
    error an HTTP request gets, sent instead of the upgrade."""
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}):
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            async with websockets.connect(ws_url(web), additional_headers=headers):
                pass
        assert refusal(info) == (401, "unauthenticated")
        assert info.value.response.headers["www-authenticate"] == "Bearer"


async def test_ws_foreign_origin_is_refused_before_upgrade(client: httpx.AsyncClient, web: LiveServer) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(ws_url(web), additional_headers=auth(client), origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refusal(info) == (403, "origin_not_allowed")
    assert "ALLOWED_ORIGINS" in json.loads(info.value.response.body)["error"]["message"]
    port = web.url.rsplit(":", 1)[1]
    async with websockets.connect(
        ws_url(web), additional_headers=auth(client), origin=f"http://127.0.0.1:{port}"
    ) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "ping"}))
        assert await ws_recv(ws) == {"type": "pong"}


async def test_ws_cookie_without_origin_is_refused_but_bearer_is_not(
    client: httpx.AsyncClient, web: LiveServer
) -> None:
    """A browser always sends Origin; a cookie-signed handshake without one is refused (403) before the upgrade."""
    token = client.headers["authorization"].split(" ", 1)[1]
    async with httpx.AsyncClient(base_url=web.url, headers={"Origin": web.url}) as browser:
        assert (await browser.post("/api/session", json={"token": token})).status_code == 200
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(ws_url(web), additional_headers={"Cookie": cookie}):  # no Origin header
            pass
    assert refusal(info) == (403, "origin_required")
    port = web.url.rsplit(":", 1)[1]
    async with websockets.connect(
        ws_url(web), additional_headers={"Cookie": cookie}, origin=f"http://127.0.0.1:{port}"
    ) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "ping"}))
        assert await ws_recv(ws) == {"type": "pong"}
    async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:  # Bearer, no Origin
        await ws.send(json.dumps({"type": "ping"}))
        assert await ws_recv(ws) == {"type": "pong"}


async def test_ws_rate_limit(client: httpx.AsyncClient, web: LiveServer) -> None:
    async with websockets.connect(ws_url(web), additional_headers=auth(client)) as ws:
        for _ in range(60):
            await ws.send(json.dumps({"type": "ping"}))
        replies = [await ws_recv(ws) for _ in range(60)]
    assert any(r.get("code") == "rate_limited" for r in replies)


async def test_polling_still_answers(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "quick")
    done = await wait_for_status(client, job_id, {"completed"})
    assert done["last_seq"] >= 3
