"""Server-Sent Events: a job's story, resumable with Last-Event-ID, ending on its terminal event.

A new watcher gets one `snapshot` event (the whole job, id = its seq), then every event after it. A watcher
that reconnects with `Last-Event-ID: N` gets the events after N from the job's Redis Stream, then live
ones: no gap, no duplicate. If the Stream cannot cover the gap (trimmed, or Redis lost its data), it gets a
`snapshot` with reason `gap` from the store instead of a silent hole. The stream closes after the
terminal event, so nobody waits on a job that is already done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from ..events import EventLog
from ..gateway import Gateway, Subscriber
from ..jobs import JobService
from ..models import TERMINAL_STATUSES, Event, EventKind
from ..store.base import JobStore
from .auth import current_user
from .errors import ApiError, not_found
from .frames import PING_CHUNK, PING_FRAME, sse_chunk, sse_frame
from .sse import SseResponse
from .state import app_state
from .submit_rules import acquire_stream_slot
from .wire import SseWire, sse_wire

RETRY_MS = 2000


def parse_resume_point(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be the id of an event from this job.")
    return int(raw)


class JobWatch:
    """Delivers one job's events to one client in seq order, catching up from the Stream when needed."""

    __slots__ = ("job_id", "user_id", "store", "events", "jobs", "last", "done", "queued", "sub", "wire")

    def __init__(self, *, job_id: str, user_id: str, store: JobStore, events: EventLog, jobs: JobService) -> None:
        self.job_id = job_id
        self.user_id = user_id
        self.store = store
        self.events = events
        self.jobs = jobs
        self.last = 0
        self.done = False
        self.queued = False  # as of the last event sent: only then do position updates concern this client
        self.sub: Subscriber | None = None  # set by watch_events, for `fast`
        self.wire: SseWire | None = None

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

    async def snapshot(self, reason: str) -> list[Event]:
        job = await self.store.get(self.job_id)
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
        replay = await self.events.read_after(self.job_id, self.last)
        if not replay or replay[0].seq != self.last + 1:
            job = await self.store.get(self.job_id)
            if job is not None and job.seq > self.last:
                out += await self.snapshot("gap")
        out += [e for e in replay if self._accept(e)]
        return out

    def live(self, batch: list[Event]) -> list[Event]:
        return [e for e in batch if self._current(e) if e.kind is EventKind.POSITION or self._accept(e)]

    def _current(self, event: Event) -> bool:
        """A position update counts only while the job is where this client saw it last (queued, at that seq);
        it never moves the resume point."""
        return event.kind is not EventKind.POSITION or (event.seq == self.last and not self.done)

    def watching(self) -> tuple[str, ...]:
        """The gateway's `Subscriber.watched`: this job while it is queued (for position updates)."""
        return (self.job_id,) if self.queued and not self.done else ()

    def fast(self, event: Event | None) -> bool:
        """Live event (None: keepalive) while idle: written from the dispatch itself, no task wake-up (wire.py).

        Methods rather than closures in `watch_events`: one object per stream instead of functions and cells."""
        wire = self.wire
        if wire is None or not wire.ready():
            return False
        if event is None:
            wire.write(PING_CHUNK)
        elif self.live([event]):
            wire.write(sse_chunk(event))
            if self.done and self.sub is not None:
                self.sub.wake()  # the task ends the stream
        return True


async def watch_events(
    watch: JobWatch, gateway: Gateway, after: int | None, wire: SseWire | None = None
) -> AsyncIterator[bytes]:
    sub = watch.sub = Subscriber(watch.user_id, {watch.job_id})
    sub.watched = watch.watching
    watch.wire = wire
    fast = watch.fast
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
            sub.fast = fast
            try:
                woke = await sub.wait()  # the gateway's ticker wakes it for keepalives
            finally:
                sub.fast = None
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
        watch.sub = watch.wire = None  # no cycle (watch -> sub -> watch.watching) left for the GC to find
        await gateway.unsubscribe(sub)


async def job_events(request: Request) -> Response:
    state = app_state(request)
    user = current_user(request)
    job_id = request.path_params["job_id"]
    job = await state.store.get_owned(job_id, user)
    if job is None:
        raise not_found()
    after = parse_resume_point(request.headers.get("last-event-id") or request.query_params.get("after"))
    if after is not None and after > job.seq:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID is ahead of this job's events.")
    watch = JobWatch(job_id=job_id, user_id=user, store=state.store, events=state.events, jobs=state.jobs)
    slot = acquire_stream_slot(request, user)
    return SseResponse(
        watch_events(watch, state.gateway, after, sse_wire(request.scope)),
        send_timeout=state.settings.push_send_timeout,
        on_close=slot.release,
    )
