"""The push fast paths fail safe (issue 15.13): a fault in one turns it off, and nobody loses an event.

A lane or a direct write reaches into uvicorn's private objects (service/push/wire.py). These tests make those
writes raise, as a changed uvicorn would, mid-job while many real clients watch over real uvicorn, and check
that every client still gets every event once and in order through the normal path, that `/healthz` says the
fast path is off, and that the process goes on serving. And the gateway's one subscription task, if it dies,
is started again and its watchers get later events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from service.api import app as app_module
from service.api.app import create_app
from service.config import Settings
from service.events import EventLog
from service.models import Event, EventKind
from service.push.gateway import Gateway, Subscriber
from service.push.wire import SseWire, WsWire

from .conftest import LiveServer, run_worker, serve, until, user_client
from .sse import collect, read_events

CLIENTS = 100
WS_CLIENTS = 30
TERMINAL = {"completed", "failed", "cancelled", "expired"}


class Renamed:
    """A transport as a changed server might hand it over: what the lane reads next is gone."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def get_write_buffer_size(self) -> int:
        raise AttributeError("'Transport' object has no attribute 'get_write_buffer_size' (injected)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def broken(*_: Any) -> Any:
    raise AttributeError("'WebSocketsSansIOProtocol' object has no attribute 'writable' (injected)")


def inject(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> int:
    """Fault the fast write path: every second parked client's socket (so the lane writes to some before it
    hits one), every wire's checks and writes from now on. Returns how many clients were parked."""
    parked = 0
    for group in gateway._parked.values():
        for i, watch in enumerate(group.members):
            parked += 1
            if i % 2:
                watch.transport = Renamed(watch.transport)
    for cls in (SseWire, WsWire):
        monkeypatch.setattr(cls, "ready", broken)
        monkeypatch.setattr(cls, "write", broken)
    return parked


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Many streams of one user: lift the per-user stream cap."""
    import dataclasses

    return dataclasses.replace(settings, max_streams=1000, sse_ping_seconds=30)


@pytest.fixture
async def live(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[LiveServer, list[Gateway]]]:
    """The app on real uvicorn, with its gateway at hand (the process's one), and no worker yet."""
    gateways: list[Gateway] = []

    class Recorded(Gateway):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            gateways.append(self)

    monkeypatch.setattr(app_module, "Gateway", Recorded)
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as web:
        yield web, gateways


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    # A connection of its own each time: uvicorn closes a keep-alive connection idle for 5 s, and on a loaded
    # machine (one loop for server and client, stalled) a poll can go out on one it is closing (httpx.ReadError).
    r = await client.get("/healthz", headers={"Connection": "close"})
    assert r.status_code == 200
    return r.json()["gateway"]


async def full_log(client: httpx.AsyncClient, job_id: str) -> list[int]:
    log, _ = await collect(client, f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "0"})
    return [e.data["seq"] for e in log]


@contextlib.asynccontextmanager
async def fault_mid_job(
    settings: Settings,
    got: dict[int, list[int]],
    watchers: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[None]:
    """Run the job (a worker) until every watcher has had live events through the fast path, then yield for the test
    to inject its fault; on leaving, wait for every watcher to see the job end and undo the fault. The fast path's
    log records stay in `caplog`."""
    async with run_worker(settings):

        async def some_live_events() -> bool:
            return all(len(s) >= 3 for s in got.values())

        await until(some_live_events, what="live events through the fast path, before the fault")
        with caplog.at_level(logging.ERROR, logger="aijobs.fastpath"):
            yield
            await asyncio.wait_for(asyncio.gather(*watchers), 30)
            monkeypatch.undo()


def assert_every_event_once_in_order(got: dict[int, list[int]], log: list[int], first: dict[int, int]) -> None:
    for client, seqs in got.items():
        assert seqs == [s for s in log if s >= first[client]], f"client {client}: {seqs} != the log {log}"


async def test_a_fault_in_the_sse_fast_path_mid_job_loses_no_event_for_100_clients(
    live: tuple[LiveServer, list[Gateway]],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    web, gateways = live
    async with user_client(web, settings, "alice") as client:
        r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "Fault lines [[slow:2.5]]"}})
        job_id = r.json()["job_id"]
        got: dict[int, list[int]] = {i: [] for i in range(CLIENTS)}
        first: dict[int, int] = {}
        limits = httpx.Limits(max_connections=CLIENTS + 10)
        async with httpx.AsyncClient(base_url=web.url, headers=client.headers, limits=limits, timeout=30) as http:

            async def watch(i: int) -> None:
                async with http.stream("GET", f"/api/jobs/{job_id}/events") as response:
                    assert response.status_code == 200
                    async for event in read_events(response):
                        if event.event == "position":
                            continue  # not in the job's log (no seq)
                        first.setdefault(i, event.data["seq"])
                        got[i].append(event.data["seq"])
                        status = event.data["job"]["status"] if event.event == "snapshot" else event.data.get("status")
                        if status in TERMINAL:
                            return

            watchers = [asyncio.create_task(watch(i)) for i in range(CLIENTS)]

            async def all_parked() -> bool:
                return (await health(client))["parked"] == CLIENTS

            await until(all_parked, what="every client parked on the SSE lane")
            assert (await health(client))["fast_paths"]["sse_lane"] == "on"
            async with fault_mid_job(settings, got, watchers, caplog, monkeypatch):
                before = [len(s) for s in got.values()]
                assert inject(gateways[0], monkeypatch) == CLIENTS
            log = await full_log(client, job_id)
            assert_every_event_once_in_order(got, log, first)
            assert min(len(s) for s in got.values()) > max(before), "the job went on after the fault"
            state = await health(client)
            assert state["fast_paths"]["sse_lane"].startswith("off: AttributeError"), state
            assert state["parked"] == 0 and state["restarts"] == 0
            logged = [r for r in caplog.records if r.name == "aijobs.fastpath"]
            assert len(logged) == 1 and logged[0].levelno == logging.ERROR and logged[0].exc_info, "logged once"

            # The process keeps serving: a new client of a new job gets its whole story, the normal way.
            async with run_worker(settings):
                r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "After the fault"}})
                new_id = r.json()["job_id"]
                events, _ = await collect(http, f"/api/jobs/{new_id}/events")
            assert events[-1].data["status"] == "completed"
            seqs = [e.data["seq"] for e in events if e.event != "position"]
            assert_every_event_once_in_order({0: seqs}, await full_log(client, new_id), {0: seqs[0]})


async def test_a_fault_in_the_websocket_fast_paths_mid_job_loses_no_event(
    live: tuple[LiveServer, list[Gateway]],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    web, gateways = live
    async with user_client(web, settings, "alice") as client:
        r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "Fault lines [[slow:2.5]]"}})
        job_id = r.json()["job_id"]
        got: dict[int, list[int]] = {i: [] for i in range(WS_CLIENTS)}
        first: dict[int, int] = {}
        url = web.url.replace("http://", "ws://") + "/api/ws"
        headers = {"Authorization": client.headers["authorization"]}
        subscribed = 0

        async def watch(i: int) -> None:
            nonlocal subscribed
            async with websockets.connect(url, additional_headers=headers) as ws:
                await ws.send(json.dumps({"type": "subscribe", "job_id": job_id}))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if msg.get("type") == "subscribed":
                        subscribed += 1
                    if "kind" not in msg or msg["kind"] == "position":
                        continue
                    first.setdefault(i, msg["seq"])
                    got[i].append(msg["seq"])
                    status = msg["job"]["status"] if msg["kind"] == "snapshot" else msg.get("status")
                    if status in TERMINAL:
                        return

        watchers = [asyncio.create_task(watch(i)) for i in range(WS_CLIENTS)]

        async def all_parked() -> bool:
            return (await health(client))["parked"] == WS_CLIENTS

        await until(all_parked, what="every WebSocket parked on the WS lane")
        async with fault_mid_job(settings, got, watchers, caplog, monkeypatch):
            assert inject(gateways[0], monkeypatch) == WS_CLIENTS
        log = await full_log(client, job_id)
        assert_every_event_once_in_order(got, log, first)
        state = await health(client)
        assert state["fast_paths"]["ws_lane"].startswith("off: AttributeError"), state
        assert state["fast_paths"]["ws_direct"].startswith("off: AttributeError"), state
        assert state["fast_paths"]["sse_lane"] == "on"
        assert state["parked"] == 0
        logged = sorted(r.getMessage().split()[3] for r in caplog.records if r.name == "aijobs.fastpath")
        assert logged == ["ws_direct", "ws_lane"], "each path logged once"

        # A new WebSocket still gets a job's whole story.
        async with run_worker(settings):
            r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "After the fault"}})
            new_id = r.json()["job_id"]
            got, first = {0: []}, {}
            job_id = new_id
            await asyncio.wait_for(watch(0), 30)
        assert_every_event_once_in_order(got, await full_log(client, new_id), first)


def progress(job_id: str, seq: int) -> Event:
    return Event(job_id=job_id, seq=seq, kind=EventKind.PROGRESS, data={"percentage": seq, "current_step": "x"})


async def test_a_lane_that_raises_turns_its_path_off_and_its_clients_get_the_event_the_usual_way(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    gateway = Gateway(redis, ping_seconds=30)
    await gateway.start()
    events = EventLog(redis)
    job = f"lane-fault-{time.monotonic_ns()}"
    written: list[int] = []

    def lane(event: Event | None, members: dict[Any, Subscriber]) -> list[Any]:
        for m in members:
            if m == 5:
                raise AttributeError("injected")
            written.append(m)
        return []

    try:
        subs = [Subscriber("fault-user", {job}) for _ in range(10)]
        for i, sub in enumerate(subs):
            await gateway.subscribe(sub)
            assert gateway.park(sub, job, i, lane, gateway.fast.sse_lane)
        with caplog.at_level(logging.ERROR, logger="aijobs.fastpath"):
            await events.publish("fault-user", progress(job, 1))

            async def offered() -> bool:
                return all(s.buffer for s in subs)

            await until(offered, what="the event offered the usual way")
        assert written == [0, 1, 2, 3, 4]
        assert [[e.seq for e in s.buffer] for s in subs] == [[1]] * 10, "everyone, the owner's seq check dedups"
        assert gateway.parked == 0 and not gateway.fast.sse_lane.on
        assert not gateway.park(subs[0], job, 0, lane, gateway.fast.sse_lane), "no parking on a path that is off"
        assert gateway.fast.ws_lane.on, "only the faulty path goes off"
        assert len([r for r in caplog.records if r.name == "aijobs.fastpath"]) == 1
    finally:
        await gateway.stop()
        await redis.aclose()


async def test_a_subscription_task_that_dies_is_restarted_and_watchers_get_later_events(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    gateway = Gateway(redis, ping_seconds=30)
    await gateway.start()
    events = EventLog(redis)
    job = f"restart-{time.monotonic_ns()}"
    try:
        sub = Subscriber("restart-user", {job})
        await gateway.subscribe(sub)
        real = gateway._deliver

        def boom(user_id: str, event: Event) -> None:
            gateway._deliver = real  # type: ignore[method-assign]
            raise LookupError("injected: a bug in the dispatch")

        gateway._deliver = boom  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="aijobs.gateway"):
            await events.publish("restart-user", progress(job, 1))

            async def resynced() -> bool:
                return sub.resync

            await until(resynced, what="the watcher told to re-read its stream")
        assert gateway.restarts == 1
        died = [r for r in caplog.records if "subscription task ended" in r.getMessage()]
        assert len(died) == 1 and died[0].exc_info and isinstance(died[0].exc_info[1], LookupError)
        sub.resync = False
        await events.publish("restart-user", progress(job, 2))

        async def delivered() -> bool:
            return [e.seq for e in sub.buffer] == [2]

        await until(delivered, what="a later event through the restarted task")

        # Ended any other way (cancelled from outside), it comes back too.
        assert gateway._task is not None
        gateway._task.cancel()

        async def restarted() -> bool:
            return gateway.restarts == 2 and sub.resync

        await until(restarted, what="a second restart")
        sub.drain()
        await events.publish("restart-user", progress(job, 3))

        async def delivered_again() -> bool:
            return [e.seq for e in sub.buffer] == [3]

        await until(delivered_again, what="a later event after the second restart")
    finally:
        await gateway.stop()
        await redis.aclose()


MINE_CLIENTS = 20


async def test_api_events_writes_from_the_dispatch_and_a_fault_there_loses_no_event(
    live: tuple[LiveServer, list[Gateway]],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`GET /api/events` (every job of the caller) takes the direct write too (multiwatch.MineDirect): each event
    with this stream's cursor as its id. Faulted mid-job, every client still gets every event once, in order, with
    the right cursor, and `sse_direct` is off."""
    web, _ = live
    async with user_client(web, settings, "alice") as client:
        got: dict[int, list[int]] = {i: [] for i in range(MINE_CLIENTS)}
        ids: dict[int, list[str | None]] = {i: [] for i in range(MINE_CLIENTS)}
        first: dict[int, int] = {}
        limits = httpx.Limits(max_connections=MINE_CLIENTS + 10)
        opened = 0
        async with httpx.AsyncClient(base_url=web.url, headers=client.headers, limits=limits, timeout=30) as http:

            async def watch(i: int) -> None:
                nonlocal opened
                async with http.stream("GET", "/api/events") as response:
                    assert response.status_code == 200
                    opened += 1
                    async for event in read_events(response):
                        if event.event == "position":
                            continue
                        first.setdefault(i, event.data["seq"])
                        got[i].append(event.data["seq"])
                        ids[i].append(event.id)
                        if event.data.get("status") in TERMINAL:
                            return

            watchers = [asyncio.create_task(watch(i)) for i in range(MINE_CLIENTS)]

            async def all_open() -> bool:
                return opened == MINE_CLIENTS and (await health(client))["connections"] == MINE_CLIENTS

            await until(all_open, what="every /api/events stream open")
            r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "Fault lines [[slow:2.5]]"}})
            job_id = r.json()["job_id"]
            async with fault_mid_job(settings, got, watchers, caplog, monkeypatch):
                assert (await health(client))["fast_paths"]["sse_direct"] == "on"
                monkeypatch.setattr(SseWire, "ready", broken)
            log = await full_log(client, job_id)
            assert_every_event_once_in_order(got, log, first)
            for i, seqs in got.items():  # the cursor: this job at the event's seq, and empty once it ended
                assert ids[i] == [f"{job_id}:{s}" for s in seqs[:-1]] + [""], ids[i]
            state = await health(client)
            assert state["fast_paths"]["sse_direct"].startswith("off: AttributeError"), state
            logged = [r for r in caplog.records if r.name == "aijobs.fastpath"]
            assert len(logged) == 1 and "sse_direct" in logged[0].getMessage(), "logged once"
