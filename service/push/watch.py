"""One client following one job: `JobWatch`, the one-job lanes, and the SSE stream of `GET /api/jobs/{id}/events`.

The stream is a job's story, resumable with Last-Event-ID, ending on its terminal event.

A new watcher gets one `snapshot` event (the whole job, id = its seq), then every event after it. A watcher
that reconnects with `Last-Event-ID: N` gets the events after N from the job's Redis Stream, then live
ones: no gap, no duplicate. If the Stream cannot cover the gap (trimmed, or Redis lost its data), it gets a
`snapshot` with reason `gap` from the store instead of a silent hole. The stream closes after the
terminal event, so nobody waits on a job that is already done.

A WebSocket follows each of its jobs with a `JobWatch` too (multiwatch.py). `sse_lane` and `ws_lane` are the
gateway lanes for clients that follow one job: while such a client idles, the gateway's dispatch writes each
live event straight to its socket (wire.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from redis.exceptions import RedisError

from ..events import EventLog
from ..jobs import JobService
from ..models import TERMINAL_STATUSES, Event, EventKind, Job
from ..store.base import JobStore
from .fastpath import FastPath
from .frames import PING_CHUNK, PING_FRAME, WS_PING_FRAME, sse_chunk, sse_ended_frame, sse_frame, ws_frame
from .gateway import Gateway, Lane, Subscriber
from .wire import SseWire, WsWire

RETRY_MS = 2000

log = logging.getLogger("aijobs.push")


class JobWatch:
    """Delivers one job's events to one client in seq order, catching up from the Stream when needed."""

    __slots__ = ("job_id", "user_id", "store", "events", "jobs", "last", "done", "queued", "transport")

    def __init__(self, *, job_id: str, user_id: str, store: JobStore, events: EventLog, jobs: JobService) -> None:
        self.job_id = job_id
        self.user_id = user_id
        self.store = store
        self.events = events
        self.jobs = jobs
        self.last = 0
        self.done = False
        self.queued = False  # as of the last event sent: only then do position updates concern this client
        self.transport: Any = None  # the client's socket, written by a lane while the client is parked

    def _accept(self, event: Event) -> bool:
        if event.seq <= self.last:
            return False
        self.last = event.seq
        self.done = event.terminal or (
            event.kind is EventKind.SNAPSHOT and event.data["job"]["status"] in TERMINAL_STATUSES
        )
        if event.kind is EventKind.SNAPSHOT:
            self.queued = event.data["job"]["status"] == "queued"
        elif event.kind is EventKind.STATUS:
            self.queued = event.data.get("status") == "queued"
        return True

    async def snapshot(self, reason: str, job: Job | None = None) -> list[Event]:
        """The job as it stands (`job`: just read by the caller, so not read again)."""
        job = job or await self.store.get(self.job_id)
        if job is None:
            self.done = True
            return []
        estimate = await self.jobs.estimates.estimate(job, self.jobs.registry)
        event = self.jobs.snapshot_event(job, reason=reason, estimate=estimate)
        return [event] if self._accept(event) else []

    async def catch_up(self, after: int | None) -> list[Event]:
        """Everything after `after` (None: a new watcher, who starts from a snapshot)."""
        if after is None:
            out = await self.snapshot("initial")
        else:
            self.last = after
            out = []
        if self.done:
            return out
        try:
            replay = await self.events.read_after(self.job_id, self.last)
        except (RedisError, OSError) as exc:
            return out + await self._without_stream(exc)
        # A worker commits an event to the store, then publishes it: for that moment the store is ahead of the Stream.
        # An empty read while the store is ahead is read again a few times (up to ~0.1 s) before it counts as a gap,
        # so a watcher resuming right then gets the event itself, not a `gap` snapshot in its place. A Stream that
        # starts past `last` is a gap at once (trimmed, or lost with Redis).
        for pause in (0.015, 0.03, 0.045, None):
            if replay and replay[0].seq == self.last + 1:
                break
            job = await self.store.get(self.job_id)
            if job is None or job.seq <= self.last:
                break  # nothing is missing
            if replay or pause is None:
                out += await self.snapshot("gap", job)
                break
            await asyncio.sleep(pause)
            try:
                replay = await self.events.read_after(self.job_id, self.last)
            except (RedisError, OSError) as exc:
                return out + await self._without_stream(exc)
        out += [e for e in replay if self._accept(e)]
        return out

    async def _without_stream(self, exc: Exception) -> list[Event]:
        """The Stream cannot be read (Redis lost, a Sentinel failover under way): the store is the truth, so a `gap`
        snapshot if it is ahead of this client, and the stream stays open. The gateway has every watcher catch up
        again once it has subscribed anew (a lost subscription is a lost connection too)."""
        log.info("event stream unreadable; answering from the store", extra={"job_id": self.job_id, "error": repr(exc)})
        job = await self.store.get(self.job_id)
        if job is None or job.seq <= self.last:
            return []
        return await self.snapshot("gap", job)

    def live(self, batch: list[Event]) -> list[Event]:
        return [e for e in batch if self._current(e) if e.kind is EventKind.POSITION or self._accept(e)]

    def _current(self, event: Event) -> bool:
        """A position update counts only while the job is where this client saw it last (queued, at that seq);
        it never moves the resume point."""
        return event.kind is not EventKind.POSITION or (event.seq == self.last and not self.done)

    def watching(self) -> tuple[str, ...]:
        """The gateway's `Subscriber.watched`: this job while it is queued (for position updates)."""
        return (self.job_id,) if self.queued and not self.done else ()


def _lane(encode: Callable[[Event], bytes], ping: bytes) -> Lane:
    """A gateway `Lane` for clients that each follow one job: the event's one encoding (`ping` for a keepalive)
    written straight to every parked client's socket (wire.py), with `JobWatch.live`'s rules inlined.

    This loop is the per-client cost of a fan-out, so it touches only the watch and its transport. A client
    whose socket still holds unsent bytes is returned (it gets the event the usual way, behind them), and so
    is every client for an event that ends the job: its own task sends that and closes or retires the job.
    """

    def lane(event: Event | None, watches: dict[JobWatch, Subscriber]) -> list[JobWatch]:
        missed: list[JobWatch] = []
        if event is None or event.kind is EventKind.POSITION:
            # A keepalive, or a queue position: only for a client still at that seq. Neither moves the resume point.
            data, at = (ping, None) if event is None else (encode(event), event.seq)
            for w in watches:
                if at is not None and (w.last != at or w.done):
                    continue
                t = w.transport
                if t.get_write_buffer_size() or t.is_closing():
                    missed.append(w)
                else:
                    t.write(data)
            return missed
        kind, seq = event.kind, event.seq
        if kind is EventKind.PROGRESS or kind is EventKind.DELTA:
            queued = None
        elif kind is EventKind.STATUS and not event.terminal:
            queued = event.data.get("status") == "queued"
        else:
            return list(watches)
        data = encode(event)
        for w in watches:
            if w.last >= seq:
                continue  # sent already (a catch-up got there first)
            t = w.transport
            if t.get_write_buffer_size() or t.is_closing():
                missed.append(w)
                continue
            t.write(data)
            w.last = seq  # after the write: a write that raises leaves the event to the normal path
            if queued is not None:
                w.queued = queued
        return missed

    return lane


sse_lane = _lane(sse_chunk, PING_CHUNK)  # one-job SSE streams
ws_lane = _lane(ws_frame, WS_PING_FRAME)  # WebSockets that follow one job


def _ready(wire: SseWire | WsWire, path: FastPath) -> bool:
    """`wire.ready()`, isolated: an error turns `path` off (the caller keeps the normal path)."""
    try:
        return wire.ready()
    except Exception as exc:
        path.fail(exc)
        return False


async def watch_events(
    watch: JobWatch, gateway: Gateway, after: int | None, wire: SseWire | None = None, *, session: str | None = None
) -> AsyncGenerator[bytes, None]:
    sub = Subscriber(watch.user_id, {watch.job_id}, session=session)
    sub.watched = watch.watching
    path = gateway.fast.sse_lane
    if wire is not None:
        try:
            watch.transport = wire.transport  # read by sse_lane only while the stream is parked
        except Exception as exc:
            path.fail(exc)
            wire = None
    await gateway.subscribe(sub)
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        batch = await watch.catch_up(after)
        while True:
            for frame in [sse_frame(event) for event in batch]:
                yield frame
            batch, frame = [], b""  # hold no event nor frame (a snapshot is big) while idle
            if watch.done:
                break
            # Idle with everything sent: park, so live events are written from the dispatch (no task wake-up).
            if wire is not None and path.on and _ready(wire, path):
                gateway.park(sub, watch.job_id, watch, sse_lane, path)
            try:
                woke = await sub.wait()  # the gateway's ticker wakes it for keepalives
            finally:
                gateway.unpark(sub)
            if sub.ended:
                yield sse_ended_frame(sub.ended)
                break
            if watch.done:
                break
            if not woke:
                yield PING_FRAME
                continue
            if sub.resync:
                sub.resync = False
                sub.drain()
                batch = await watch.catch_up(watch.last)
            else:
                batch = watch.live(sub.drain())
    finally:
        watch.transport = None  # no cycle (watch -> transport -> protocol -> this task) left for the GC
        await gateway.unsubscribe(sub)
