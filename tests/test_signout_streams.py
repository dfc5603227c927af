"""Open live streams end when the credential they were opened with lapses: a signed-out session's SSE and WebSocket
streams on every web process, and every stream of a user whose token is revoked. Other sessions keep theirs.

Before, a sign-out refused new requests at once but a stream opened earlier kept delivering the user's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import websockets
from redis.asyncio import Redis

from service.api.app import create_app
from service.config import Settings
from service.coordination import publish_revoked

from .conftest import LiveServer, make_user, serve
from .sse import SseEvent, read_events

JOB = {"type": "titles", "input": {"text": "sign-out"}}
JSON = {"Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def session(live: LiveServer, token: str) -> AsyncIterator[str]:
    """A browser session made as the page makes it; yields its Cookie header."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as c:
        r = await c.post("/api/session", json={"token": token}, headers={"Origin": live.url})
        assert r.status_code == 200, r.text
        yield f"aijobs_session={c.cookies['aijobs_session']}"


class Stream:
    """An SSE stream read in the background: its events, and whether the server ended it."""

    def __init__(self, live: LiveServer, path: str, headers: dict[str, str]) -> None:
        self.events: list[SseEvent] = []
        self.ended = asyncio.Event()
        self.opened = asyncio.Event()
        self._client = httpx.AsyncClient(base_url=live.url, headers=headers, timeout=httpx.Timeout(10, read=None))
        self._task = asyncio.create_task(self._read(path))

    async def _read(self, path: str) -> None:
        async with self._client.stream("GET", path) as response:
            assert response.status_code == 200, await response.aread()
            self.opened.set()
            async for event in read_events(response):
                self.events.append(event)
        self.ended.set()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        await self._client.aclose()

    def saw(self, job_id: str) -> bool:
        return any(e.data.get("job_id") == job_id for e in self.events if isinstance(e.data, dict))


async def wait(event: asyncio.Event, what: str, timeout: float = 10) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def until_seen(stream: Stream, job_id: str, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not stream.saw(job_id):
        assert asyncio.get_running_loop().time() < deadline, f"{what} never saw job {job_id}"
        await asyncio.sleep(0.02)


async def test_sign_out_ends_that_sessions_open_streams_on_every_web_process(settings: Settings) -> None:
    assert settings.redis_url
    token = await make_user(settings, "leaver")
    bearer = {"Authorization": f"Bearer {token}"}
    async with (
        serve(create_app(settings, redis_url=settings.redis_url)) as one,
        serve(create_app(settings, redis_url=settings.redis_url)) as two,
        httpx.AsyncClient(base_url=one.url, headers=bearer) as api,
        session(one, token) as leaving,
        session(two, token) as staying,
    ):
        job_id = (await api.post("/api/jobs", json=JOB)).json()["job_id"]  # no worker: it stays queued
        ws_url = two.url.replace("http://", "ws://") + "/api/ws"
        streams = {
            "job SSE on one": Stream(one, f"/api/jobs/{job_id}/events", {"Cookie": leaving}),
            "all-jobs SSE on two": Stream(two, "/api/events", {"Cookie": leaving}),
            "other session's SSE": Stream(one, "/api/events", {"Cookie": staying}),
            "bearer SSE": Stream(two, "/api/events", bearer),
        }
        ws = await websockets.connect(ws_url, additional_headers={"Cookie": leaving, "Origin": two.url})
        other_ws = await websockets.connect(ws_url, additional_headers={"Cookie": staying, "Origin": two.url})
        try:
            for sock in (ws, other_ws):
                await sock.send(json.dumps({"type": "subscribe", "scope": "mine"}))
                while json.loads(await asyncio.wait_for(sock.recv(), 10)).get("type") != "subscribed":
                    pass
            for name, stream in streams.items():
                await wait(stream.opened, f"{name} to open")
            await until_seen(streams["all-jobs SSE on two"], job_id, "the leaving session's stream")

            async with httpx.AsyncClient(base_url=one.url, headers={"Cookie": leaving, "Origin": one.url}) as c:
                assert (await c.request("DELETE", "/api/session", headers=JSON)).status_code == 204

            for name in ("job SSE on one", "all-jobs SSE on two"):
                stream = streams[name]
                await wait(stream.ended, f"the signed-out session's {name} to end")
                last = stream.events[-1]
                assert last.event == "error", (name, last)
                assert last.data["error"]["code"] == "unauthenticated"
                assert "signed out" in last.data["error"]["message"]
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if msg.get("type") == "error":
                        assert msg["code"] == "unauthenticated" and msg["reason"] == "signed_out", msg
            assert ws.close_code == 1008 and ws.close_reason == "signed_out"

            # The other session and the Bearer client still follow the user's jobs, live.
            second = (await api.post("/api/jobs", json=JOB)).json()["job_id"]
            for name in ("other session's SSE", "bearer SSE"):
                await until_seen(streams[name], second, name)
                assert not streams[name].ended.is_set()
            while (msg := json.loads(await asyncio.wait_for(other_ws.recv(), 10))).get("job_id") != second:
                pass
        finally:
            for stream in streams.values():
                await stream.close()
            await ws.close()
            await other_ws.close()


async def test_a_revoked_token_ends_every_stream_of_its_user(settings: Settings) -> None:
    assert settings.redis_url
    token = await make_user(settings, "revokee")
    other = await make_user(settings, "bystander")
    async with (
        serve(create_app(settings, redis_url=settings.redis_url)) as live,
        session(live, token) as cookie,
    ):
        streams = [
            Stream(live, "/api/events", {"Authorization": f"Bearer {token}"}),
            Stream(live, "/api/events", {"Cookie": cookie}),
        ]
        bystander = Stream(live, "/api/events", {"Authorization": f"Bearer {other}"})
        try:
            for stream in (*streams, bystander):
                await wait(stream.opened, "a stream to open")
            redis = Redis.from_url(settings.redis_url)
            try:
                await publish_revoked(redis, (await me(live, token))["id"])  # what `aijobs users revoke` sends
            finally:
                await redis.aclose()
            for stream in streams:
                await wait(stream.ended, "the revoked user's stream to end")
                assert stream.events[-1].event == "error"
                assert "revoked" in stream.events[-1].data["error"]["message"]
            assert not bystander.ended.is_set()
        finally:
            for stream in (*streams, bystander):
                await stream.close()


async def me(live: LiveServer, token: str) -> dict:
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {token}"}) as c:
        body = (await c.get("/api/me")).json()
    return body["user"]
