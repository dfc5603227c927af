"""SSE through a real uvicorn server: the job's story in order, resumable, ending on the terminal event."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from .conftest import wait_for_status
from .sse import collect

pytestmark = pytest.mark.usefixtures("worker")


async def submit(client: httpx.AsyncClient, text: str = "Streams and queues [[slow:1]]") -> str:
    r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": text}})
    assert r.status_code == 202
    return r.json()["job_id"]


async def test_stream_tells_the_whole_story_in_order(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    events, response = await asyncio.wait_for(collect(client, f"/api/jobs/{job_id}/events"), 15)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[0].event == "snapshot" and events[0].data["reason"] == "initial"
    seqs = [int(e.id) for e in events]
    assert seqs == sorted(set(seqs)), "ids strictly increase: no duplicates, in order"
    assert all(int(e.id) == e.data["seq"] for e in events)
    kinds = [e.event for e in events]
    assert "progress" in kinds and "delta" in kinds
    steps = [e.data["current_step"] for e in events if e.event == "progress"]
    assert "Generating titles…" in steps
    assert events[-1].event == "status" and events[-1].data["status"] == "completed"
    assert len(events[-1].data["result"]["titles"]) == 5
    final = (await client.get(f"/api/jobs/{job_id}")).json()
    assert final["last_seq"] == seqs[-1]


async def test_resume_with_last_event_id_has_no_gap_and_no_duplicate(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    first, _ = await collect(client, f"/api/jobs/{job_id}/events", stop_after=3)
    cut = int(first[-1].id)
    rest, _ = await asyncio.wait_for(
        collect(client, f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": str(cut)}), 15
    )
    assert rest[0].event != "snapshot", "the Stream covers the gap: plain replay"
    assert int(rest[0].id) == cut + 1
    seqs = [int(e.id) for e in rest]
    assert seqs == list(range(cut + 1, cut + 1 + len(seqs))), "every event after the cut, once"
    assert rest[-1].data["status"] == "completed"


async def test_late_watcher_gets_snapshot_and_ends_at_once(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "quick")
    await wait_for_status(client, job_id, {"completed"})
    events, _ = await asyncio.wait_for(collect(client, f"/api/jobs/{job_id}/events"), 5)
    assert len(events) == 1
    assert events[0].event == "snapshot" and events[0].data["job"]["status"] == "completed"
    assert events[0].data["job"]["result"]["titles"]


async def test_resume_after_completion_replays_the_end(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "quick")
    done = await wait_for_status(client, job_id, {"completed"})
    events, _ = await collect(client, f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "2"})
    assert [int(e.id) for e in events] == list(range(3, done["last_seq"] + 1))
    assert events[-1].data["status"] == "completed"


async def test_gap_the_stream_cannot_cover_gets_a_reset_snapshot(client: httpx.AsyncClient, settings) -> None:
    from redis.asyncio import Redis

    job_id = await submit(client, "quick")
    done = await wait_for_status(client, job_id, {"completed"})
    async with Redis.from_url(settings.redis_url) as r:
        await r.delete(f"aijobs:events:{job_id}")  # as if Redis lost its data
    events, _ = await collect(client, f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "2"})
    assert len(events) == 1
    assert events[0].event == "snapshot" and events[0].data["reason"] == "gap"
    assert int(events[0].id) == done["last_seq"]
    assert events[0].data["job"]["status"] == "completed"


@pytest.mark.parametrize("bad", ["abc", "-1", "99999", "1234567890123"])
async def test_bad_last_event_id_is_a_clear_400(client: httpx.AsyncClient, bad: str) -> None:
    job_id = await submit(client, "quick")
    r = await client.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": bad})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_last_event_id"
    assert r.json()["error"]["message"].startswith("Last-Event-ID") and "leave it out" in r.json()["error"]["message"]
    by_query = await client.get(f"/api/jobs/{job_id}/events?after={bad}")  # the same refusal names ?after=
    assert by_query.status_code == 400 and by_query.json()["error"]["message"].startswith("?after=")
    r = await client.get(f"/api/jobs/{job_id}/events", params={"after": "٣"})  # a digit, not an ASCII one
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_last_event_id"


async def test_unknown_job_stream_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/jobs/00000000-0000-0000-0000-000000000000/events")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "job_not_found"


async def test_stream_refusals_are_the_same_json_as_the_full_stack(client: httpx.AsyncClient) -> None:
    """The stream routes skip Starlette's middleware (api/direct.py): their refusals must not change."""
    missing = await client.get("/api/jobs/no-such-job/events")
    assert missing.status_code == 404
    assert missing.content == (await client.get("/api/jobs/no-such-job")).content
    assert missing.json()["error"]["code"] == "job_not_found"
    job_id = await submit(client, "quick")
    ahead = await client.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "x1"})
    assert ahead.status_code == 400 and ahead.json()["error"]["code"] == "invalid_last_event_id"
    bad_cursor = await client.get("/api/events", headers={"Last-Event-ID": "not a cursor"})
    assert bad_cursor.status_code == 400 and bad_cursor.json()["error"]["code"] == "invalid_last_event_id"
    by_query = await client.get("/api/events?cursor=not-a-cursor")
    assert by_query.status_code == 400 and by_query.json()["error"]["message"].startswith("?cursor=")
    async with httpx.AsyncClient(base_url=str(client.base_url)) as anonymous:
        for path in (f"/api/jobs/{job_id}/events", "/api/events"):
            refused = await anonymous.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.content == (await anonymous.get(f"/api/jobs/{job_id}")).content
