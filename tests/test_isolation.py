"""Two users at once: neither can read, watch, cancel, retry or list the other's jobs.

Table-driven: a new job endpoint is one line in ENDPOINTS. An endpoint another branch adds (cancel, retry) is
skipped until it exists here, then checked automatically: the owner's call must reach the job, and a second
user's call must be byte-for-byte the answer for a job id that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx
import pytest

from .conftest import LiveServer, wait_for_status

pytestmark = pytest.mark.usefixtures("worker")

# (name, method, path with {id}, extra headers)
ENDPOINTS: list[tuple[str, str, str, dict[str, str]]] = [
    ("get", "GET", "/api/jobs/{id}", {}),
    ("get_if_none_match", "GET", "/api/jobs/{id}", {"If-None-Match": 'W/"1"'}),
    ("events", "GET", "/api/jobs/{id}/events", {}),
    ("events_resume", "GET", "/api/jobs/{id}/events", {"Last-Event-ID": "1"}),
    ("events_after", "GET", "/api/jobs/{id}/events?after=1", {}),
    ("cancel", "POST", "/api/jobs/{id}/cancel", {}),
    ("retry", "POST", "/api/jobs/{id}/retry", {}),
]


async def _call(client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    async with client.stream(method, path, headers=headers) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            return r  # the owner's stream opened: that is all we need to know
        await r.aread()
        return r


@pytest.mark.parametrize(("name", "method", "path", "headers"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
async def test_other_users_job_is_exactly_a_missing_job(
    client: httpx.AsyncClient, client_b: httpx.AsyncClient, name: str, method: str, path: str, headers: dict[str, str]
) -> None:
    job_id = (await client.post("/api/jobs", json={"type": "titles", "input": {"text": "mine [[slow:0.5]]"}})).json()[
        "job_id"
    ]
    if name == "retry":
        failed = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "x [[fail:400]]"}})
        job_id = failed.json()["job_id"]
        await wait_for_status(client, job_id, {"failed"})
    foreign = await _call(client_b, method, path.format(id=job_id), headers)
    missing = await _call(client_b, method, path.format(id=str(uuid.uuid4())), headers)
    owner = await _call(client, method, path.format(id=job_id), headers)
    if owner.status_code == 404 and owner.json()["error"]["code"] == "not_found":
        pytest.skip(f"{method} {path} is not on this branch yet")
    assert owner.status_code != 404, owner.text
    assert foreign.status_code == 404
    assert foreign.json() == missing.json() == {"error": {"code": "job_not_found", "message": "No job with that id."}}
    assert foreign.content == missing.content
    assert {k: v for k, v in foreign.headers.items() if k != "date"} == {
        k: v for k, v in missing.headers.items() if k != "date"
    }


async def test_history_and_stats_show_only_your_own(client: httpx.AsyncClient, client_b: httpx.AsyncClient) -> None:
    mine = [
        (await client.post("/api/jobs", json={"type": "titles", "input": {"text": f"a{i}"}})).json() for i in range(3)
    ]
    theirs = (await client_b.post("/api/jobs", json={"type": "image", "input": {"prompt": "b"}})).json()
    for job in [*mine, theirs]:
        await wait_for_status(client if job in mine else client_b, job["job_id"], {"completed"})
    a_ids = {j["job_id"] for j in (await client.get("/api/jobs")).json()["jobs"]}
    b_page = (await client_b.get("/api/jobs")).json()
    assert a_ids == {j["job_id"] for j in mine}
    assert [j["job_id"] for j in b_page["jobs"]] == [theirs["job_id"]]
    assert b_page["totals"]["jobs"] == 1
    a_stats, b_stats = (await client.get("/api/stats")).json(), (await client_b.get("/api/stats")).json()
    assert a_stats["user"]["by_status"]["completed"] == 3 and a_stats["user"]["jobs"] == 3
    assert b_stats["user"]["by_status"]["completed"] == 1 and b_stats["user"]["jobs"] == 1
    # Filters and cursors never widen the view to another user's rows.
    assert (await client_b.get("/api/jobs", params={"type": "titles"})).json()["jobs"] == []


async def test_websocket_subscribe_to_another_users_job_is_exactly_a_missing_job(
    client: httpx.AsyncClient, client_b: httpx.AsyncClient, web: LiveServer
) -> None:
    import json

    import websockets

    job_id = (await client.post("/api/jobs", json={"type": "titles", "input": {"text": "mine"}})).json()["job_id"]
    url = web.url.replace("http://", "ws://") + "/api/ws"

    async def answer(c: httpx.AsyncClient, target: str) -> dict[str, object]:
        async with websockets.connect(url, additional_headers={"Authorization": c.headers["authorization"]}) as ws:
            await ws.send(json.dumps({"type": "subscribe", "job_id": target}))
            while (msg := json.loads(await ws.recv())).get("type") == "ping":
                pass
            return msg  # type: ignore[no-any-return]

    owner = await answer(client, job_id)
    foreign = await answer(client_b, job_id)
    missing = await answer(client_b, str(uuid.uuid4()))
    assert owner.get("type") != "error", owner
    assert foreign["type"] == "error" and foreign["code"] == "job_not_found"
    assert {k: v for k, v in foreign.items() if k != "job_id"} == {k: v for k, v in missing.items() if k != "job_id"}


async def test_all_events_cursor_naming_another_users_job_reveals_nothing(
    client: httpx.AsyncClient, client_b: httpx.AsyncClient
) -> None:
    from .sse import read_events

    job_id = (await client.post("/api/jobs", json={"type": "titles", "input": {"text": "mine"}})).json()["job_id"]
    async with client_b.stream("GET", "/api/events", headers={"Last-Event-ID": f"{job_id}:0"}) as r:
        assert r.status_code == 200
        seen: list[str] = []

        async def first_few() -> None:
            async for event in read_events(r):
                seen.append(event.data.get("job_id", ""))

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first_few(), 1.5)
    assert job_id not in seen
