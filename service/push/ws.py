"""One WebSocket session of `WS /api/ws`: its messages checked, rate-limited, and answered; events written.

WebSocket: client messages are JSON objects: `{"type":"subscribe","job_id":ID,"after":N?}`,
`{"type":"subscribe","scope":"mine","cursor":C?}` (C: the SSE cursor format, `<job_id>:<seq>,…`, resumes those
jobs after their seq), `{"type":"unsubscribe","job_id":ID}` (or `"scope":"mine"`), `{"type":"ping"}`; any other
field is refused, naming it. Server messages are the same event JSON the SSE `data:` lines carry (they have
`kind`), or control messages with a `type`: `subscribed`, `unsubscribed`, `pong`, `error` (`code`, `message`,
maybe `job_id` or `field`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..models import Event, EventKind, dumps
from .frames import WS_PING_FRAME, ended_error, event_json, ws_frame
from .multiwatch import MAX_JOBS_PER_CLIENT, multi_watch, parse_cursor
from .state import PushState
from .watch import ws_lane
from .wire import WsWire


class RateLimit:
    """A token bucket: `rate` messages per second sustained, bursts up to `burst`."""

    __slots__ = ("rate", "burst", "tokens", "at")  # one per WebSocket: no __dict__ each

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# The fields each client message may carry, by its type and what it names (a job, or the scope "mine").
_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    ("ping", ""): frozenset({"type"}),
    ("subscribe", "job"): frozenset({"type", "job_id", "after"}),
    ("subscribe", "mine"): frozenset({"type", "scope", "cursor"}),
    ("unsubscribe", "job"): frozenset({"type", "job_id"}),
    ("unsubscribe", "mine"): frozenset({"type", "scope"}),
}
_WHY_NOT = {  # a field that belongs to the other form of the message: say which one to use
    ("mine", "after"): "a \"mine\" subscription resumes from 'cursor' (<job_id>:<seq>,…), not 'after'",
    ("mine", "job_id"): "send either 'job_id' or 'scope', not both",
    ("job", "cursor"): "'cursor' resumes a \"mine\" subscription; one job resumes from 'after'",
}


def unknown_field(msg: dict[str, Any]) -> tuple[str, str] | None:
    """(field, why) for the first field this message may not carry, or None."""
    kind = msg.get("type")
    target = "" if kind == "ping" else ("mine" if "scope" in msg else "job")
    allowed = _FIELDS.get((kind, target)) if isinstance(kind, str) else None
    if allowed is None:
        return None  # an unknown type: refused as such
    extra = sorted(set(msg) - allowed)
    if not extra:
        return None
    return extra[0], _WHY_NOT.get((target, extra[0]), f"a {kind} message takes only {', '.join(sorted(allowed))}")


class WsSession:
    """One WebSocket: reads client messages and writes events, one task each, sharing one MultiWatch."""

    __slots__ = ("ws", "wire", "state", "user", "mw", "send_lock", "idle", "direct", "limit")

    def __init__(
        self, ws: WebSocket, state: PushState, user: str, wire: WsWire | None = None, *, session: str | None = None
    ) -> None:
        self.ws = ws
        self.wire = wire
        self.state = state
        self.user = user
        self.mw = multi_watch(state, user, session)
        self.send_lock = asyncio.Lock()
        self.idle = False  # the writer waits for events (only then may the fan-out write to this socket)
        self.direct = state.gateway.fast.ws_direct  # the switch of `fast`
        self.limit = RateLimit(state.settings.ws_max_messages_per_second, 2 * state.settings.ws_max_messages_per_second)

    async def send(self, text: str) -> None:
        async with self.send_lock, asyncio.timeout(self.state.settings.push_send_timeout):
            await self.ws.send_text(text)

    async def control(self, kind: str, **fields: Any) -> None:
        await self.send(dumps({"type": kind, **fields}))

    async def error(self, code: str, message: str, **fields: Any) -> None:
        await self.control("error", code=code, message=message, **fields)

    async def send_events(self, events: list[Event]) -> None:
        for event in events:
            await self.send(event_json(event))

    def park(self) -> None:
        """With the writer idle and one job followed, park it on that job's `ws_lane`: the fan-out writes frames
        straight to this socket. The reader unparks it while it handles a message, and parks it again after."""
        mw, wire, path = self.mw, self.wire, self.state.gateway.fast.ws_lane
        if wire is None or not self.idle or not path.on:
            return
        if mw.mine or len(mw.watches) != 1 or mw.lock.locked() or self.send_lock.locked():
            return
        try:
            if not wire.ready():
                return
            transport = wire.transport
        except Exception as exc:  # the wire no longer fits the server: no more parking, the normal path serves
            path.fail(exc)
            return
        watch = next(iter(mw.watches.values()))
        watch.transport = transport  # read by ws_lane only while parked
        self.state.gateway.park(mw.sub, watch.job_id, watch, ws_lane, path)

    def unpark(self) -> None:
        self.state.gateway.unpark(self.mw.sub)

    async def handle(self, raw: str) -> None:
        if len(raw.encode()) > self.state.settings.ws_max_message_bytes:
            await self.error(
                "message_too_large", f"Messages are at most {self.state.settings.ws_max_message_bytes} bytes."
            )
            return
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError:
            await self.error("invalid_json", "Send one JSON object per message.")
            return
        if not isinstance(msg, dict):
            await self.error("invalid_message", "Send one JSON object per message.")
            return
        kind = msg.get("type")
        refused = unknown_field(msg)
        if refused is not None:
            await self.error("invalid_message", f"Unknown field {refused[0]!r}: {refused[1]}.", field=refused[0])
            return
        if "scope" in msg and msg["scope"] != "mine":
            await self.error("invalid_message", 'scope must be "mine".', field="scope")
            return
        if kind != "ping":
            self.unpark()  # the writer stays idle; it parks again after its next wake-up
        if kind == "ping":
            await self.control("pong")
        elif kind == "subscribe" and msg.get("scope") == "mine":
            await self.subscribe_mine(msg.get("cursor"))
        elif kind == "subscribe":
            await self.subscribe(msg.get("job_id"), msg.get("after"))
        elif kind == "unsubscribe":
            job_id = msg.get("job_id")
            if msg.get("scope") == "mine":
                self.mw.mine = False
                self.mw.sub.job_ids = set(self.mw.watches)
                await self.control("unsubscribed", scope="mine")
            elif isinstance(job_id, str) and self.mw.remove_job(job_id):
                await self.control("unsubscribed", job_id=job_id)
            else:
                await self.error("not_subscribed", "Not subscribed to that job.", job_id=job_id)
        else:
            await self.error("invalid_message", "type must be subscribe, unsubscribe or ping.")

    async def subscribe_mine(self, raw: Any) -> None:
        """Every job of the user; with `cursor` (as GET /api/events reads Last-Event-ID), those jobs resume after
        their seq, others start from a snapshot."""
        try:
            if raw is not None and not isinstance(raw, str):
                raise ValueError(raw)
            cursor = parse_cursor(raw)
        except ValueError:
            await self.error(
                "invalid_cursor",
                "cursor must be <job_id>:<seq> pairs joined by commas (an /api/events id, or built from the events "
                "you got).",
                field="cursor",
            )
            return
        async with self.mw.lock:
            await self.control("subscribed", scope="mine")
            await self.send_events(await self.mw.add_mine(cursor))

    async def subscribe(self, job_id: Any, after: Any) -> None:
        if not isinstance(job_id, str) or not job_id or len(job_id) > 64:
            await self.error("invalid_message", "subscribe needs a job_id (or scope: mine).")
            return
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            await self.error(
                "invalid_after", "after must be a non-negative integer (the last seq you got).", job_id=job_id
            )
            return
        job = await self.state.store.get_owned(job_id, self.user)
        if job is None:  # the same answer for a missing job and someone else's
            await self.error("job_not_found", "No job with that id.", job_id=job_id)
            return
        if after is not None and not await self.state.events.resumable(job_id, after, job.seq):
            await self.error("invalid_after", "after is ahead of this job's events.", job_id=job_id)
            return
        if job_id not in self.mw.watches and len(self.mw.watches) >= MAX_JOBS_PER_CLIENT:
            await self.error("too_many_subscriptions", "Too many jobs on one connection.", job_id=job_id)
            return
        async with self.mw.lock:
            await self.control("subscribed", job_id=job_id)
            await self.send_events(await self.mw.add_job(job_id, after))

    def fast(self, event: Event | None) -> bool:
        """Live event (None: keepalive) while the writer is idle: written from the gateway's dispatch (wire.py).

        Only for a job this connection already follows, and not its last event (the writer retires the job);
        never while a subscribe is catching up or another send is under way, so order is kept. An error here is
        caught by the gateway (`Subscriber.offer`), which turns `ws_direct` off and sends the event the usual way:
        so the watch moves only once the frame is written.
        """
        wire = self.wire
        if wire is None or self.mw.lock.locked() or self.send_lock.locked() or not self.direct.on:
            return False
        if not wire.ready():
            return False
        if event is None:
            wire.write(WS_PING_FRAME)
            return True
        if event.terminal:
            return False
        watch = self.mw.watches.get(event.job_id)
        if watch is None:
            return False
        if event.kind is EventKind.POSITION:
            if watch.live([event]):
                wire.write(ws_frame(event))
            return True
        if event.seq <= watch.last:
            return True  # sent already
        frame = ws_frame(event)
        wire.write(frame)
        watch.live([event])
        return True

    async def writer(self) -> None:
        sub = self.mw.sub
        sub.fast_path = self.direct
        while True:
            if sub.fast_path.on:
                sub.fast = self.fast
            self.idle = True
            self.park()
            try:
                woke = await sub.wait()
            finally:
                self.idle = False
                sub.fast = None
                self.unpark()
            if sub.ended:  # the credential lapsed: say so, close as a refused handshake would (policy violation)
                with contextlib.suppress(Exception):
                    await self.error(**ended_error(sub.ended))
                    await self.ws.close(code=1008, reason=sub.ended)
                return
            if not woke:
                await self.control("ping")  # keepalive: proxies close idle connections
                continue
            async with self.mw.lock:
                await self.send_events(await self.mw.take())

    async def run(self) -> None:
        """The reader runs in the connection's own task, the writer in one more (not a task each plus a waiter:
        every task per connection costs memory at thousands of connections). A writer that ends stops the reader."""
        await self.mw.start()
        me = asyncio.current_task()
        assert me is not None
        writer = asyncio.create_task(self.writer())

        def writer_ended(_: asyncio.Task[None]) -> None:
            me.cancel()

        writer.add_done_callback(writer_ended)
        try:  # the reader, inline: a coroutine frame less per idle connection
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if not self.limit.take():
                    await self.error("rate_limited", "Too many messages; slow down.")
                    continue
                text = message.get("text")
                if text is None:
                    await self.error("invalid_message", "Send JSON text messages.")
                    continue
                await self.handle(text)
                self.park()
        except asyncio.CancelledError:
            if not writer.done():
                raise  # cancelled from outside, not by the writer
            me.uncancel()
            exc = None if writer.cancelled() else writer.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect | TimeoutError | OSError):
                raise exc from None
        except (WebSocketDisconnect, TimeoutError, OSError):
            pass
        finally:
            writer.remove_done_callback(writer_ended)
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            for watch in self.mw.watches.values():
                watch.transport = None  # no cycle through the socket left for the GC
            await self.mw.close()
