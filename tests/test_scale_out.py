"""Scale-out: two real web processes and a worker on one Redis; a client on web A sees every event of a job on B."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from service.config import Settings

from .conftest import make_user
from .procs import web_process
from .sse import read_events

pytestmark = pytest.mark.usefixtures("worker")


async def test_client_on_web_a_gets_every_event_of_a_job_made_on_web_b(settings: Settings, tmp_path: Path) -> None:
    async with (
        web_process(settings, tmp_path / "a.log") as web_a,
        web_process(settings, tmp_path / "b.log") as web_b,
        httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {await make_user(settings, 'alice')}"}) as c,
    ):
        a, b = web_a.url, web_b.url
        events = []
        async with c.stream("GET", a + "/api/events") as stream:  # every job of the user, on web A
            it = read_events(stream)
            r = await c.post(b + "/api/jobs", json={"type": "titles", "input": {"text": "made on B [[slow:1]]"}})
            assert r.status_code == 202
            job_id = r.json()["job_id"]

            async def until_done() -> None:
                async for event in it:
                    events.append(event)
                    if event.event == "status" and event.data["status"] == "completed":
                        return

            await asyncio.wait_for(until_done(), 20)
        final = (await c.get(a + f"/api/jobs/{job_id}")).json()
        mine = [e.data["seq"] for e in events if e.data["job_id"] == job_id]
        # A job made after the stream opened is told from its first event; the log (replayed on B) agrees.
        async with c.stream("GET", b + f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "0"}) as s:
            logged = [(e.data["seq"], e.event) async for e in read_events(s)]
        log = [seq for seq, _ in logged]
        assert log == list(range(1, final["last_seq"] + 1)), "the log holds every event of the job, once, in order"
        # A live client gets them all in order, except that the gateway coalesces progress (latest wins) when two
        # arrive before the client took the first: a superseded progress event may be missing, nothing else.
        assert mine == sorted(set(mine)) and set(mine) <= set(log), "once each, in order"
        progress = [seq for seq, kind in logged if kind == "progress"]
        for missing in set(log) - set(mine):
            assert missing in progress and any(p > missing and p in mine for p in progress), (missing, mine)
