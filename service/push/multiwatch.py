"""One client watching many jobs at once: a set of job ids, or every job of its user ("mine").

Used by `GET /api/events` and `WS /api/ws`. It holds one gateway `Subscriber` for the client and a
`JobWatch` per job, which keeps that job's events in seq order with no duplicate and catches up from
the job's Stream whenever the live path may have missed something (late start, buffer overflow,
re-made Redis subscription). Finished jobs are forgotten so a long-lived connection stays small.

`mine_events` is the SSE stream of `GET /api/events` (ws.py serves the WebSocket). Its cursor: with many jobs on one
stream no single seq can be the event id, so each event's `id:` is the resume point of every job still running on
that stream, `<job_id>:<seq>` joined by commas (a finished job drops out once its terminal event is sent). A browser
sends it back as `Last-Event-ID`; the server replays each job's Stream after its seq (gap-free per job), and starts
any other active job of the user from a snapshot.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from ..events import EventLog
from ..jobs import JobService
from ..models import TERMINAL_STATUSES, Event, EventKind
from ..store.base import JobStore
from .frames import PING_CHUNK, PING_FRAME, sse_body, sse_ended_frame
from .gateway import Gateway, Subscriber
from .state import PushState
from .watch import RETRY_MS, JobWatch
from .wire import SseWire, chunk

MAX_JOBS_PER_CLIENT = 1000
# A `GET /api/events` cursor (`Last-Event-ID` / `?cursor=`): `<job_id>:<seq>` joined by commas, or empty, at most
# CURSOR_MAX_CHARS. The OpenAPI contract states this same pattern and length.
_PART = "[A-Za-z0-9_-]{1,64}:[0-9]{1,12}"
CURSOR = f"^({_PART}(,{_PART})*)?$"
CURSOR_MAX_CHARS = 16384  # ~350 running jobs; past it a URL nears what servers take
_DONE_MEMORY = 1000


class MultiWatch:
    __slots__ = (
        "user_id",
        "store",
        "events",
        "jobs",
        "gateway",
        "sub",
        "watches",
        "mine",
        "_done",
        "_started",
        "lock",
    )  # one per WebSocket and GET /api/events stream: no __dict__ each

    def __init__(
        self,
        *,
        user_id: str,
        store: JobStore,
        events: EventLog,
        jobs: JobService,
        gateway: Gateway,
        session: str | None = None,
    ) -> None:
        self.user_id = user_id
        self.store = store
        self.events = events
        self.jobs = jobs
        self.gateway = gateway
        self.sub = Subscriber(user_id, set(), session=session)
        self.sub.watched = self.queued  # a bound method: lighter per connection than a closure
        self.watches: dict[str, JobWatch] = {}
        self.mine = False
        self._done: dict[str, None] = {}  # recently finished (oldest first): a stray late event is ignored
        self._started = False
        # A WebSocket adds jobs from its reader while its writer sends: both hold this around work + send,
        # so a catch-up and live events of the same job never interleave out of order.
        self.lock = asyncio.Lock()

    def queued(self) -> list[str]:
        """The gateway's `Subscriber.watched`: this client's jobs that are queued (for position updates)."""
        return [j for j, w in self.watches.items() if w.queued and not w.done]

    async def start(self) -> None:
        await self.gateway.subscribe(self.sub)
        self._started = True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self.gateway.unsubscribe(self.sub)

    def _new_watch(self, job_id: str) -> JobWatch:
        watch = JobWatch(job_id=job_id, user_id=self.user_id, store=self.store, events=self.events, jobs=self.jobs)
        self.watches[job_id] = watch
        self._done.pop(job_id, None)
        return watch

    def _retire_done(self) -> None:
        for job_id in [j for j, w in self.watches.items() if w.done]:
            del self.watches[job_id]
            if self.sub.job_ids is not None:
                self.sub.job_ids.discard(job_id)
            self._done[job_id] = None
            if len(self._done) > _DONE_MEMORY:
                del self._done[next(iter(self._done))]

    async def add_job(self, job_id: str, after: int | None) -> list[Event]:
        """Watch one job (already authorized by the caller) from `after` (None: from a snapshot)."""
        watch = self.watches.get(job_id) or self._new_watch(job_id)
        if self.sub.job_ids is not None:
            self.sub.job_ids.add(job_id)
        if after is not None and after < watch.last:
            after = watch.last  # never send twice what this connection already sent
        out = await watch.catch_up(after if after is not None or watch.last == 0 else watch.last)
        self._retire_done()
        return out

    def remove_job(self, job_id: str) -> bool:
        known = self.watches.pop(job_id, None) is not None
        if self.sub.job_ids is not None:
            known = job_id in self.sub.job_ids or known
            self.sub.job_ids.discard(job_id)
        return known

    async def add_mine(self, cursor: dict[str, int] | None = None) -> list[Event]:
        """Watch every job of the user: active ones now (from the store), and any that appears later.

        `cursor` holds resume points (job id → last seq seen); jobs in it are replayed after that seq,
        other active jobs start from a snapshot.
        """
        self.mine = True
        self.sub.job_ids = None
        active = await self.store.active_for_user(self.user_id)
        out: list[Event] = []
        for job_id, seq in (cursor or {}).items():
            job = await self.store.get_owned(job_id, self.user_id)
            if job is not None:  # others' ids are ignored; a point ahead of the job restarts from a snapshot
                ok = await self.events.resumable(job_id, seq, job.seq)
                out += await self.add_job(job_id, seq if ok else None)
        for job in active:
            if job.id not in self.watches and job.id not in self._done:
                out += await self.add_job(job.id, None)
        return out

    def wanted(self) -> bool:
        return self.mine or bool(self.watches)

    async def next_batch(self, timeout: float | None = None) -> list[Event] | None:
        """The next events to send, in per-job seq order; None when a keepalive is due (or on timeout)."""
        if not await self.sub.wait(timeout):
            return None
        return await self.take()

    async def take(self) -> list[Event]:
        """What the subscriber buffered, checked against each job's position (callers serialize with `lock`)."""
        out: list[Event] = []
        if self.sub.resync:
            self.sub.resync = False
            self.sub.drain()
            for watch in list(self.watches.values()):
                if not watch.done:
                    out += await watch.catch_up(watch.last)
            self._retire_done()
            return out
        for event in self.sub.drain():
            found = self.watches.get(event.job_id)
            if found is None:
                if event.kind is EventKind.POSITION:
                    continue
                if not self.mine or event.job_id in self._done or len(self.watches) >= MAX_JOBS_PER_CLIENT:
                    continue
                # A job this client has not seen yet: its whole story from the log, then live.
                out += await self._new_watch(event.job_id).catch_up(0)
                continue
            out += found.live([event])
        self._retire_done()
        return out


def parse_cursor(raw: str | None) -> dict[str, int] | None:
    """Read a cursor made by `MultiWatch.cursor`; None for no resume point, ValueError for a malformed one."""
    if not raw:
        return None
    if len(raw) > CURSOR_MAX_CHARS or not re.fullmatch(CURSOR, raw):
        raise ValueError(raw[:80])
    out: dict[str, int] = {}
    for part in raw.split(","):
        job_id, _, seq = part.rpartition(":")
        out[job_id] = int(seq)
        if len(out) == MAX_JOBS_PER_CLIENT:
            break  # any job past these starts from a snapshot, as one missing from the cursor does
    return out


def ends_job(event: Event) -> bool:
    return event.terminal or (
        event.kind is EventKind.SNAPSHOT and event.data.get("job", {}).get("status") in TERMINAL_STATUSES
    )


def multi_watch(state: PushState, user: str, session: str | None = None) -> MultiWatch:
    return MultiWatch(
        user_id=user, store=state.store, events=state.events, jobs=state.jobs, gateway=state.gateway, session=session
    )


def cursor_id(positions: dict[str, int]) -> bytes:
    """The `id:` line of a `GET /api/events` event: every running job's resume point on this stream."""
    return b"id: " + ",".join(f"{j}:{s}" for j, s in positions.items()).encode() + b"\n"


class MineDirect:
    """A `GET /api/events` stream's live events written from the gateway's dispatch while its task idles (wire.py),
    as `WsSession.fast` does for a WebSocket: no task wake-up per event. Its frames differ per client only by the
    `id:` line (this stream's cursor), so the event's `event:`/`data:` lines are the one encoding every client shares,
    and the cursor is joined per write. Only live events of jobs this stream already follows, never one that ends a
    job (the task retires it and moves the cursor) nor a job new to it (the task catches it up from its Stream)."""

    __slots__ = ("mw", "positions", "wire")

    def __init__(self, mw: MultiWatch, positions: dict[str, int], wire: SseWire) -> None:
        self.mw = mw
        self.positions = positions  # the stream's cursor, shared with `mine_events`
        self.wire = wire

    def __call__(self, event: Event | None) -> bool:
        """The gateway's `Subscriber.fast`: True once written (or known sent), False to take the normal path. An
        error reaches `Subscriber.offer`, which turns `sse_direct` off and sends the event the normal way: so the
        watch and the cursor move only once the chunk is written."""
        wire = self.wire
        if not wire.ready():
            return False
        if event is None:
            wire.write(PING_CHUNK)
            return True
        if ends_job(event):
            return False
        watch = self.mw.watches.get(event.job_id)
        if watch is None:
            return False
        if event.kind is EventKind.POSITION:
            if watch.live([event]):
                wire.write(chunk(sse_body(event)))  # ephemeral: no id, the cursor does not move
            return True
        if event.seq <= watch.last:
            return True  # sent already
        positions = self.positions
        before = positions.get(event.job_id)
        positions[event.job_id] = event.seq
        try:
            wire.write(mine_chunk(event, positions))
        except BaseException:
            if before is None:
                del positions[event.job_id]
            else:
                positions[event.job_id] = before
            raise
        watch._accept(event)
        return True


def mine_chunk(event: Event, positions: dict[str, int]) -> bytes:
    """The HTTP chunk of `event` behind the cursor `positions` (`cursor_id`). Streams that follow the same jobs share a
    cursor, so the last one made is kept on the event with a copy of its cursor: a fan-out to thousands of such
    streams makes it once, and compares a small dict per client instead of joining and encoding one."""
    cache = event.encoded
    if cache is None:
        cache = event.encoded = {}
    if cache.get("mine_at") == positions:
        made = cache.get("mine")
        if isinstance(made, bytes):
            return made
    data = chunk(cursor_id(positions) + sse_body(event))
    cache["mine_at"] = dict(positions)
    cache["mine"] = data
    return data


async def mine_events(
    mw: MultiWatch, cursor: dict[str, int] | None, ping: float, wire: SseWire | None = None
) -> AsyncGenerator[bytes, None]:
    positions: dict[str, int] = dict(cursor or {})

    def frame(event: Event) -> bytes:
        if event.kind is EventKind.POSITION:
            return sse_body(event)  # ephemeral: the cursor does not move
        if ends_job(event):
            positions.pop(event.job_id, None)
        else:
            positions[event.job_id] = event.seq
        return cursor_id(positions) + sse_body(event)

    sub = mw.sub
    direct = MineDirect(mw, positions, wire) if wire is not None else None
    sub.fast_path = path = mw.gateway.fast.sse_direct
    await mw.start()
    try:
        batch: list[Event] | None = await mw.add_mine(cursor)
        for job_id in [j for j in positions if j not in mw.watches]:
            del positions[job_id]  # not the caller's, unknown or already over: never echoed back in an id
        # The first chunk comes only now, subscribed and with the active jobs listed, and SseResponse sends the
        # headers with it: a client that has the headers is told every job it makes after, from its first event.
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            if batch is None:
                yield PING_FRAME
            else:
                for chunk in [frame(event) for event in batch]:
                    yield chunk
            batch = None  # hold no event while idle
            if direct is not None and path.on:
                sub.fast = direct  # idle: live events go straight to the socket (MineDirect)
            try:
                woke = await sub.wait()
            finally:
                # Off before `take`, as the WebSocket writer does: a job new to this stream is caught up from its
                # Stream inside `take` (an await), and a live event of it written directly meanwhile moved the
                # watch past the events the catch-up then returned, so they were dropped (a fast worker's
                # `processing` overtook the job's `queued`).
                sub.fast = None
            batch = await mw.take() if woke else None
            if mw.sub.ended:
                yield sse_ended_frame(mw.sub.ended)
                return
    finally:
        await mw.close()
