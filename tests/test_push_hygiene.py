"""Well-behaved connections: keepalives, every trace of a client gone after it leaves, slow consumers bounded."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from service.config import Settings
from service.events import EventLog, status_event
from service.jobs import JobService
from service.models import Event, EventKind, Job, JobStatus
from service.push.gateway import Gateway, Subscriber
from service.push.multiwatch import MultiWatch
from service.push.watch import JobWatch
from service.queue import JobQueue
from service.store import open_store
from service.tasks import default_registry

from .conftest import WAIT_SECONDS, LiveServer, until


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def gateway_counts(client: httpx.AsyncClient) -> dict[str, int]:
    gateway = (await client.get("/healthz")).json()["gateway"]
    return {k: gateway[k] for k in ("connections", "channels", "parked")}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Hundreds of streams of one user at once: lift the per-user stream cap for these tests."""
    return dataclasses.replace(settings, max_streams=10_000)


async def sse_cycle(port: int, path: str, auth: str) -> None:
    """Open an SSE stream, wait for its first bytes (the client is registered by then), and hang up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\nAuthorization: {auth}\r\n\r\n"
    )
    writer.write(head.encode())
    head = await asyncio.wait_for(reader.readuntil(b"retry: "), WAIT_SECONDS)
    assert head.startswith(b"HTTP/1.1 200")
    writer.transport.abort()


async def ws_cycle(url: str, auth: str) -> None:
    async with websockets.connect(url, additional_headers={"Authorization": auth}, open_timeout=WAIT_SECONDS) as ws:
        await ws.send('{"type":"ping"}')
        while (msg := json.loads(await asyncio.wait_for(ws.recv(), WAIT_SECONDS))) == {"type": "ping"}:
            pass  # a server keepalive may come first
        assert msg == {"type": "pong"}


async def ws_until(ws: Any, found: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read messages until one is `found` (the caller bounds the wait: keepalives keep every recv short)."""
    while not found(msg := json.loads(await ws.recv())):
        pass
    return msg


@pytest.mark.timeout(600)  # ~30 s of CPU: on a machine other test processes share, far more than 120 s of wall
async def test_ten_thousand_connect_disconnect_cycles_leave_nothing_behind(
    client: httpx.AsyncClient, web: LiveServer
) -> None:
    port = int(web.url.rsplit(":", 1)[1])
    r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "stays queued: no worker"}})
    job_id = r.json()["job_id"]
    ws_url = web.url.replace("http://", "ws://") + "/api/ws"
    auth = client.headers["authorization"]
    kinds = [
        lambda: sse_cycle(port, f"/api/jobs/{job_id}/events", auth),
        lambda: sse_cycle(port, "/api/events", auth),
        lambda: ws_cycle(ws_url, auth),
    ]

    async def run(n: int, parallel: int = 25) -> None:
        sem = asyncio.Semaphore(parallel)

        async def one(i: int) -> None:
            async with sem:
                await kinds[i % len(kinds)]()

        await asyncio.gather(*(one(i) for i in range(n)))

    async def idle() -> bool:
        return await gateway_counts(client) == {"connections": 0, "channels": 0, "parked": 0}

    await run(600)  # warm up allocators and caches
    await until(idle, what="gateway idle after warm-up")
    await asyncio.sleep(0.2)
    tasks_before = len(asyncio.all_tasks())
    rss_before = rss_kb()
    await run(10_000)
    await until(idle, what="every client gone from the gateway")

    async def tasks_back() -> bool:
        return len(asyncio.all_tasks()) <= tasks_before

    await until(tasks_back, what=f"task count back to {tasks_before}")
    growth_mb = (rss_kb() - rss_before) / 1024
    assert growth_mb < 40, f"RSS grew {growth_mb:.1f} MB over 10,000 cycles"


async def test_keepalive_pings_on_idle_streams(client: httpx.AsyncClient, web: LiveServer) -> None:
    async with client.stream("GET", "/api/events") as response:
        lines = response.aiter_lines()

        async def first_ping() -> None:
            async for line in lines:
                if line == ": ping":
                    return

        await asyncio.wait_for(first_ping(), 10)  # SSE_PING_SECONDS is 1 in tests
    # A one-job stream idles parked in the gateway: its keepalives are written straight from the ticker.
    job_id = (await client.post("/api/jobs", json={"type": "titles", "input": {"text": "idle"}})).json()["job_id"]
    async with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        lines = response.aiter_lines()
        await asyncio.wait_for(first_ping(), 10)
        assert (await gateway_counts(client))["parked"] == 1
    ws_url = web.url.replace("http://", "ws://") + "/api/ws"
    async with websockets.connect(ws_url, additional_headers={"Authorization": client.headers["authorization"]}) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "ping"}
        # Following one job, the WebSocket parks too; a second subscription takes it back to the usual path.
        await ws.send(json.dumps({"type": "subscribe", "job_id": job_id}))
        await asyncio.wait_for(ws_until(ws, lambda m: m.get("kind") == "snapshot"), 10)  # a keepalive may come first
        while json.loads(await asyncio.wait_for(ws.recv(), 10)) != {"type": "ping"}:
            pass
        assert (await gateway_counts(client))["parked"] == 1
        other = (await client.post("/api/jobs", json={"type": "titles", "input": {"text": "2nd"}})).json()["job_id"]
        await ws.send(json.dumps({"type": "subscribe", "job_id": other}))
        await asyncio.wait_for(ws_until(ws, lambda m: m.get("kind") == "snapshot"), 10)
        assert (await gateway_counts(client))["parked"] == 0
        while json.loads(await asyncio.wait_for(ws.recv(), 10)) != {"type": "ping"}:
            pass


def progress(job_id: str, seq: int, step: str = "working") -> Event:
    return Event(job_id=job_id, seq=seq, kind=EventKind.PROGRESS, data={"percentage": seq % 100, "current_step": step})


async def test_slow_consumer_gets_progress_coalesced_and_every_state_change(settings: Settings) -> None:
    """A client that reads nothing while 1,000 events arrive holds a handful, never losing a status."""
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    gateway = Gateway(redis)
    await gateway.start()
    events = EventLog(redis)
    try:
        sub = Subscriber("slow-user", None)
        await gateway.subscribe(sub)
        job = f"slow-{time.monotonic_ns()}"
        statuses = []
        for seq in range(1, 1001):
            if seq % 100 == 0:
                data = {"status": "processing" if seq < 1000 else "completed"}
                statuses.append(seq)
                await events.publish("slow-user", status_event(job, seq, data))
            else:
                await events.publish("slow-user", progress(job, seq))

        async def all_in() -> bool:
            return gateway.received >= 1000

        await until(all_in, what="gateway received everything")
        buffered = sub.drain()
        assert not sub.resync
        assert [e.seq for e in buffered if e.kind is EventKind.STATUS] == statuses, "every state change kept"
        assert sum(e.kind is EventKind.PROGRESS for e in buffered) <= 1, "progress coalesced: latest wins"
        assert buffered[-1].terminal
        await gateway.unsubscribe(sub)
        assert gateway.connections == 0 and gateway.channels == 0
    finally:
        await gateway.stop()
        await redis.aclose()


async def test_overflowing_client_catches_up_from_the_stream(settings: Settings) -> None:
    """More state changes than the buffer holds: the client is flagged and re-reads the log, missing nothing."""
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    store = open_store(settings)
    await store.open()
    events = EventLog(redis)
    registry = default_registry()
    jobs = JobService(
        store=store,
        queue=JobQueue(redis, queue_name=settings.queue_name),
        events=events,
        registry=registry,
        max_attempts=3,
    )
    gateway = Gateway(redis)
    await gateway.start()
    try:
        job = await store.create(Job(id=f"of-{time.monotonic_ns()}", user_id="overflow-user", type="titles", input={}))
        mw = MultiWatch(user_id="overflow-user", store=store, events=events, jobs=jobs, gateway=gateway)
        mw.sub.maxsize = 4
        await mw.start()
        first = await mw.add_job(job.id, None)
        assert [e.kind for e in first] == [EventKind.SNAPSHOT]
        for seq in range(2, 40):
            status = JobStatus.COMPLETED if seq == 39 else JobStatus.PROCESSING
            await events.publish("overflow-user", status_event(job.id, seq, {"status": status.value, "n": seq}))
        got: list[Event] = []
        while not got or not got[-1].terminal:
            batch = await mw.next_batch(5)
            assert batch is not None, "the terminal event must arrive"
            got += batch
        assert [e.seq for e in got] == list(range(2, 40)), "every status once, in order, via the Stream"
        await mw.close()
        assert gateway.connections == 0
    finally:
        await gateway.stop()
        await store.close()
        await redis.aclose()


@pytest.fixture
def settings_fast_drop(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, push_send_timeout=1.0)


async def test_client_that_stops_reading_is_dropped(settings_fast_drop: Settings) -> None:
    from service.api.app import create_app

    from .conftest import serve, user_client

    settings = settings_fast_drop
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as web:
        async with user_client(web, settings, "alice") as client:
            job_id = (await client.post("/api/jobs", json={"type": "titles", "input": {"text": "x"}})).json()["job_id"]
            user_id = (await client.get("/api/me")).json()["user"]["id"]
            port = int(web.url.rsplit(":", 1)[1])
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            auth = client.headers["authorization"]
            request = f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
            await asyncio.get_running_loop().sock_sendall(sock, request)

            async def connected() -> bool:
                return (await gateway_counts(client))["connections"] == 1

            await until(connected, what="the slow client registered")
            events = EventLog(Redis.from_url(settings.redis_url))
            big = "x" * 200_000
            for seq in range(2, 80):  # ~16 MB the client never reads
                await events.publish(user_id, progress(job_id, seq, big))

            async def dropped() -> bool:
                return (await gateway_counts(client))["connections"] == 0

            await until(dropped, what="the stalled client dropped by the send timeout")
            sock.close()
            await events.redis.aclose()


async def test_parked_clients_are_served_by_their_lane_and_the_rest_the_usual_way(settings: Settings) -> None:
    """A lane serves a parked group in one call; whom it cannot serve leaves the group and gets the event buffered,
    keepalives go to the lane in slices, and leaving removes every trace."""
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    gateway = Gateway(redis, ping_seconds=0.3)
    await gateway.start()
    events = EventLog(redis)
    calls: list[tuple[int | None, int]] = []
    served: dict[int, list[int | None]] = {}

    sockets_busy = [False]  # from the event on: while the 600 subscribe, a keepalive round (0.3 s) must unpark none

    def lane(event: Event | None, members: dict[Any, Subscriber]) -> list[Any]:
        calls.append((None if event is None else event.seq, len(members)))
        for m in members:
            served.setdefault(m, []).append(None if event is None else event.seq)
        return [m for m in members if m % 10 == 0] if sockets_busy[0] else []  # these "sockets are busy"

    job = f"lane-{time.monotonic_ns()}"
    try:
        subs = {}
        for i in range(600):
            sub = subs[i] = Subscriber("lane-user", {job})
            await gateway.subscribe(sub)
            while not gateway.park(sub, job, i, lane, gateway.fast.sse_lane):
                # A keepalive round (every 0.3 s) came while it subscribed: as its writer would, take the ping,
                # then park. Nothing else may refuse it.
                assert sub.ping_due and not sub.buffer and not sub.resync and sub.parked is None
                assert not await sub.wait(0)
        assert gateway.parked == 600 and gateway.connections == 600
        assert not gateway.park(subs[1], job, 1, lane, gateway.fast.sse_lane), "already parked"
        sockets_busy[0] = True
        await events.publish("lane-user", progress(job, 2))

        async def received() -> bool:
            return gateway.received >= 1

        await until(received, what="the event")
        first = calls.index((2, 600))  # one call for the whole group (a keepalive round may have come before)
        busy = [i for i in subs if i % 10 == 0]
        assert [e.seq for e in subs[10].buffer] == [2] and subs[10].parked is None, "a busy one takes the usual way"
        assert not subs[11].buffer and subs[11].parked == (job, 11), "a served one stays parked, nothing buffered"
        assert gateway.parked == 600 - len(busy)

        async def pinged() -> bool:  # the unparked ones come after the parked groups in a round
            return subs[10].ping_due

        await until(pinged, what="a keepalive round reaching an unparked client")
        assert calls[first + 1 :] == [], "the round after an event skips the group: it is not idle"

        async def pinged_parked() -> bool:
            return sum(n for seq, n in calls[first:] if seq is None) >= 600 - len(busy)

        await until(pinged_parked, what="a keepalive round reaching the idle parked group")
        assert max(n for seq, n in calls if seq is None) <= 256, "keepalives go out in slices"

        for sub in subs.values():
            await gateway.unsubscribe(sub)
        assert gateway.parked == 0 and gateway.connections == 0 and gateway.channels == 0
        assert not gateway._parked and not gateway._loose, "no empty group nor set left behind"
    finally:
        await gateway.stop()
        await redis.aclose()


async def test_resume_while_an_event_is_between_store_and_stream_gets_the_event_not_a_gap(settings: Settings) -> None:
    """A worker commits an event to the store, then publishes it. A watcher resuming in between finds the store a
    step ahead of an empty Stream: it must wait for the event, not replace it with a `gap` snapshot (whose text
    would stand in for the streamed deltas)."""
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    store = open_store(settings)
    await store.open()
    events = EventLog(redis)
    jobs = JobService(
        store=store,
        queue=JobQueue(redis, queue_name=settings.queue_name),
        events=events,
        registry=default_registry(),
        max_attempts=3,
    )
    try:
        job = await store.create(Job(id=f"tween-{time.monotonic_ns()}", user_id="tween-user", type="titles", input={}))
        await store.db.execute("UPDATE jobs SET seq = 2 WHERE id = ?", (job.id,))  # counted, not yet published
        pending = Event(job_id=job.id, seq=2, kind=EventKind.DELTA, data={"text": "1. "})

        class Landing:
            """The store, with the event landing in the Stream while the watcher looks at the store."""

            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

            async def get(self, job_id: str) -> Job | None:
                if not published:
                    published.append(await events.publish("tween-user", pending))
                return await store.get(job_id)

        published: list[bool] = []
        watch = JobWatch(job_id=job.id, user_id="tween-user", store=Landing(), events=events, jobs=jobs)  # type: ignore[arg-type]
        got = await watch.catch_up(1)
        assert published == [True]
        assert [(e.kind, e.seq, e.data) for e in got] == [(EventKind.DELTA, 2, {"text": "1. "})], "the event, no gap"
    finally:
        await store.close()
        await redis.aclose()
