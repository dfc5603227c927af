"""The push gateway: one Redis subscription per web process, fanned out in-process to SSE and WebSocket clients.

Each watching client is a `Subscriber` with a small bounded buffer. Progress events for a job are
coalesced (latest wins) and consecutive text deltas are merged, so a slow client costs little; status
events are never dropped. If a buffer still overflows, or the Redis subscription had to be re-made
(pub/sub is at-most-once), the subscriber is flagged `resync` and its owner re-reads the job's Stream from
the last seq it delivered: nothing is lost, it only arrives by the slower path.

A client with nothing pending may *park* in its job's group, with a `Lane`: a function that serves a whole
group in one tight loop (for SSE: the same pre-made HTTP chunk written to each ready socket). An event then
costs each parked client a few attribute reads and one `transport.write`, not a chain of calls through its
subscriber; the members the lane cannot serve right now (a socket with unsent data) leave the group and get the
event the usual way.

Fail safe: the fast paths (lanes, a subscriber's `fast`) reach into the server's private objects, so every call to
one is isolated. Its first error turns that fast path off for this process (fastpath.py), its clients leave
their groups and get the event that hit the fault the usual way, as they do every event after it. The subscription
task is watched: if it ends for any reason but `stop`, it is logged and started again, and every watcher re-reads
its Stream from its last seq, as after a lost Redis connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine, Iterable
from time import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..events import USER_CHANNEL_PREFIX, user_channel
from ..metrics import LagHistogram
from ..models import Event, EventKind
from .fastpath import FastPath, FastPaths

log = logging.getLogger("aijobs.gateway")

# A client that stopped reading while text streams: past this much merged text it re-reads from the Stream.
MAX_MERGED_DELTA_CHARS = 65_536
# Keepalives sent per turn of the event loop.
PING_SLICE = 256
# Longest wait between two tries to subscribe again after losing Redis: a Sentinel failover takes a few seconds, and
# every watcher of this process waits for it (one connection attempt a second per process costs nothing).
RESUBSCRIBE_MAX_SECONDS = 1.0

# Serves a parked group: called with an event (None: a keepalive) and the group's members (member → its
# subscriber); returns the members it could not serve now, which then take the usual path.
Lane = Callable[[Event | None, dict[Any, "Subscriber"]], list[Any]]


class _Parked:
    """The clients of one job parked on one lane."""

    __slots__ = ("lane", "path", "members", "fresh")

    def __init__(self, lane: Lane, path: FastPath) -> None:
        self.lane = lane
        self.path = path  # the lane's switch: turned off by the lane's first error
        self.members: dict[Any, Subscriber] = {}
        # An event went to the group since the last keepalive round: its members are not idle, so the round skips
        # them (and a streaming job's fan-out never shares the loop with a round of pings).
        self.fresh = False


class Subscriber:
    """One client's view of the live events of one user's jobs (all of them, or a set of ids)."""

    __slots__ = (
        "user_id",
        "job_ids",
        "maxsize",
        "buffer",
        "resync",
        "ping_due",
        "fast",
        "fast_path",
        "_waiter",
        "watched",
        "parked",
        "session",
        "ended",
    )

    def __init__(
        self, user_id: str, job_ids: set[str] | None = None, *, maxsize: int = 256, session: str | None = None
    ) -> None:
        self.user_id = user_id
        self.session = session  # the browser session it was opened with (None: a Bearer token)
        self.ended: str | None = None  # why the server ends this stream ("signed_out", "revoked"); None while open
        self.job_ids = job_ids  # None: every job of the user
        self.maxsize = maxsize
        self.buffer: list[Event] = []  # small; a list costs far less memory per idle client than a deque
        self.resync = False
        self.ping_due = False
        # Set by an idle client that can write straight from the dispatch (no task wake-up): called with an
        # event, or None for a keepalive; returns False when it cannot take it now, which then goes the
        # usual way (buffer and wake-up).
        self.fast: Callable[[Event | None], bool] | None = None
        self.fast_path: FastPath | None = None  # the switch `fast` belongs to: its first error turns it off
        self._waiter: asyncio.Future[None] | None = None  # a bare future: lighter than an asyncio.Event
        self.watched: Callable[[], Iterable[str]] | None = None  # set by the owner: its jobs that are queued
        self.parked: tuple[str, Any] | None = None  # (job id, member) while parked (Gateway.park)

    def watching(self) -> Iterable[str]:
        """The queued jobs this client follows, as its owner last saw them (none unless the owner says)."""
        return self.watched() if self.watched is not None else ()

    def offer(self, event: Event) -> None:
        fast = self.fast
        if fast is not None and not self.buffer and not self.resync:
            try:
                if fast(event):
                    return
            except Exception as exc:  # the event goes the usual way below
                self._fast_failed(exc)
        if event.kind is EventKind.PROGRESS or event.kind is EventKind.POSITION:
            for i, old in enumerate(self.buffer):
                if old.kind is event.kind and old.job_id == event.job_id:
                    del self.buffer[i]  # keep order by seq: drop the stale one, append the new one
                    break
        elif event.kind is EventKind.DELTA and self.buffer:
            last = self.buffer[-1]
            if last.kind is EventKind.DELTA and last.job_id == event.job_id:
                if len(last.data.get("text", "")) > MAX_MERGED_DELTA_CHARS:
                    self.buffer.clear()
                    self.mark_resync()
                    return
                merged = Event(
                    job_id=event.job_id,
                    seq=event.seq,
                    kind=EventKind.DELTA,
                    data={**event.data, "text": last.data.get("text", "") + event.data.get("text", "")},
                    ts=event.ts,
                )
                self.buffer[-1] = merged
                self._notify()
                return
        if len(self.buffer) >= self.maxsize:
            self.buffer.clear()
            self.resync = True
        else:
            self.buffer.append(event)
        self._notify()

    def _fast_failed(self, exc: Exception) -> None:
        """`fast` raised: never call it again, and turn its fast path off (the owner sets no `fast` then)."""
        self.fast = None
        if self.fast_path is not None:
            self.fast_path.fail(exc)
        else:
            log.error("a subscriber's fast write failed; it takes the normal path from now on", exc_info=exc)

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def mark_resync(self) -> None:
        self.resync = True
        self._notify()

    def ping(self) -> None:
        """Keepalive due (called by the gateway's ticker): written directly if the client can, else a wake-up."""
        fast = self.fast
        if fast is not None and not self.buffer and not self.resync:
            try:
                if fast(None):
                    return
            except Exception as exc:
                self._fast_failed(exc)
        self.wake()

    def end(self, reason: str) -> None:
        """The credential this stream was opened with no longer holds: its writer stops at its next wake-up."""
        self.ended = reason
        self.fast = None
        self._notify()

    def wake(self) -> None:
        """Wake the client's writer with nothing to send (`wait` returns False)."""
        self.ping_due = True
        self._notify()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until there is something to deliver (or a resync); False when a keepalive is due or on timeout.

        With no timeout, no timer is armed per client: the gateway's one ticker wakes every client for its
        keepalive, which keeps thousands of idle connections free of per-client timers.
        """
        if self.buffer or self.resync or self.ended:
            return True
        if self.ping_due:
            self.ping_due = False
            return False
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await waiter
            else:
                async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for on 3.11
                    await waiter
        except TimeoutError:
            return False
        finally:
            self._waiter = None
        if self.buffer or self.resync or self.ended:
            return True
        self.ping_due = False
        return False

    def drain(self) -> list[Event]:
        out = list(self.buffer)
        self.buffer.clear()
        return out


class Gateway:
    def __init__(self, redis: Redis, *, ping_seconds: float = 15.0) -> None:
        self.redis = redis
        self.ping_seconds = ping_seconds
        self._ticker: asyncio.Task[None] | None = None
        self._subs: dict[str, set[Subscriber]] = {}  # every subscriber, by user
        self._loose: dict[str, set[Subscriber]] = {}  # those not parked: each is offered every event of its user
        self._parked: dict[str, _Parked] = {}  # parked ones, by job
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._pubsub = redis.pubsub(ignore_subscribe_messages=False)
        self._lock = asyncio.Lock()
        self.received = 0
        # Seconds from an event's making (its `ts`, on the publisher's clock) to its dispatch here: the fan-out lag
        self.lag = LagHistogram()
        self.fast = FastPaths()
        self.restarts = 0  # times the subscription task ended unasked and was started again
        self.resubscribed = 0  # times the subscription was made again on a new connection (Redis lost, a failover)
        self._crashes = 0  # restarts since the last message the task handled (for the restart backoff)
        self._stopping = False

    @property
    def connections(self) -> int:
        return sum(len(s) for s in self._subs.values())

    @property
    def channels(self) -> int:
        return len(self._subs)

    @property
    def parked(self) -> int:
        """Clients served straight from the dispatch right now (idle, on a lane)."""
        return sum(len(g.members) for g in self._parked.values())

    async def start(self) -> None:
        # A channel nobody publishes on keeps the connection in subscribed mode even with no clients.
        await self._pubsub.subscribe(USER_CHANNEL_PREFIX + "-gateway")
        self._start_listener(self._listen())
        self._ticker = asyncio.create_task(self._tick(), name="aijobs-gateway-keepalive")

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()

    async def subscribe(self, sub: Subscriber, timeout: float = 5.0) -> None:
        """Register a client; returns once Redis confirmed the user's channel, so nothing published later is missed."""
        channel = user_channel(sub.user_id)
        async with self._lock:
            self._subs.setdefault(sub.user_id, set()).add(sub)
            self._loose.setdefault(sub.user_id, set()).add(sub)
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = self._confirmed[channel] = asyncio.Event()
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:  # Redis lost (a failover under way): the caller answers 503, nothing is kept
                    self._forget(sub)
                    raise
        try:
            await asyncio.wait_for(confirmed.wait(), timeout)
        except BaseException:
            await self.unsubscribe(sub)
            raise

    async def unsubscribe(self, sub: Subscriber) -> None:
        async with self._lock:
            if self._forget(sub):
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                    await self._pubsub.unsubscribe(user_channel(sub.user_id))

    def _forget(self, sub: Subscriber) -> bool:
        """Drop a subscriber (under the lock); True if it was its user's last, whose channel is then not needed."""
        subs = self._subs.get(sub.user_id)
        if subs is None:
            return False
        self.unpark(sub)
        subs.discard(sub)
        self._loose[sub.user_id].discard(sub)
        if subs:
            return False
        del self._subs[sub.user_id]
        del self._loose[sub.user_id]
        self._confirmed.pop(user_channel(sub.user_id), None)
        return True

    async def _tick(self) -> None:
        """One timer for every client's keepalive, instead of one timer per client.

        Thousands of pings are written in slices, letting the loop run between them, so a live event
        never waits behind the whole round.
        """
        while True:
            await asyncio.sleep(self.ping_seconds)
            for group in list(self._parked.values()):
                if group.fresh:
                    group.fresh = False
                    continue
                members = list(group.members.items())
                for start in range(0, len(members), PING_SLICE):
                    # those still parked in this group (one may have left, or left and come back, meanwhile)
                    part = {m: sub for m, sub in members[start : start + PING_SLICE] if group.members.get(m) is sub}
                    self._serve(group, None, part)
                    await asyncio.sleep(0)
            everyone = [sub for subs in self._loose.values() for sub in subs]
            for start in range(0, len(everyone), PING_SLICE):
                for sub in everyone[start : start + PING_SLICE]:
                    sub.ping()
                await asyncio.sleep(0)

    def park(self, sub: Subscriber, job_id: str, member: Any, lane: Lane, path: FastPath) -> bool:
        """Move an idle subscriber of one job into that job's group on `lane` (see the module docstring), whose
        switch is `path` (one of `self.fast`).

        False (and nothing changes) if the lane is off, it has something pending, is not subscribed, or the
        job's group is on another lane. The owner calls `unpark` when it wakes; the gateway unparks it itself
        before any event goes to it the usual way.
        """
        if not path.on:
            return False
        loose = self._loose.get(sub.user_id)
        if sub.buffer or sub.resync or sub.ping_due or sub.parked is not None or loose is None or sub not in loose:
            return False
        group = self._parked.get(job_id)
        if group is None:
            group = self._parked[job_id] = _Parked(lane, path)
        elif group.lane is not lane:
            return False
        group.members[member] = sub
        loose.discard(sub)
        sub.parked = (job_id, member)
        return True

    def end_streams(self, reason: str, *, user_id: str | None = None, session: str | None = None) -> int:
        """End the open streams of a user (a revoked token: all of them) or of one browser session (signed out; its
        user, when known, narrows the search). Each writer sends its last word and closes; returns how many."""
        if user_id is not None:
            subs = list(self._subs.get(user_id, ()))
        else:
            subs = [sub for group in self._subs.values() for sub in group]
        ended = 0
        for sub in subs:
            if session is not None and sub.session != session:
                continue
            self.unpark(sub)  # the fan-out writes no more to it
            sub.end(reason)
            ended += 1
        return ended

    def unpark(self, sub: Subscriber) -> None:
        parked = sub.parked
        if parked is None:
            return
        sub.parked = None
        job_id, member = parked
        group = self._parked.get(job_id)
        if group is not None:
            group.members.pop(member, None)
            if not group.members:
                del self._parked[job_id]
        loose = self._loose.get(sub.user_id)
        if loose is not None:
            loose.add(sub)

    def _serve(self, group: _Parked, event: Event | None, members: dict[Any, Subscriber] | None = None) -> None:
        """One event (None: a keepalive) to a parked group, or to `members` of it; who the lane could not serve
        gets it the usual way."""
        if event is not None and event.kind is not EventKind.POSITION:
            group.fresh = True
        if members is None:
            members = group.members
        try:
            missed = group.lane(event, members)
        except Exception as exc:
            self._lane_failed(group, event, members, exc)
            return
        for member in missed:
            sub = group.members.get(member)
            if sub is None:
                continue
            self.unpark(sub)
            if event is None:
                sub.wake()
            else:
                sub.offer(event)

    def _lane_failed(self, group: _Parked, event: Event | None, members: dict[Any, Subscriber], exc: Exception) -> None:
        """A lane raised while serving `members`: its fast path goes off, every client parked on it leaves its
        group, and `members` get this event the usual way (a client's own seq check drops it where the lane had
        already written it, so each gets it once)."""
        hit = list(members.values())
        group.path.fail(exc)
        for other in [g for g in self._parked.values() if g.path is group.path]:
            for sub in list(other.members.values()):
                self.unpark(sub)
        for sub in hit:
            if sub.user_id not in self._subs or sub not in self._subs[sub.user_id]:
                continue  # left meanwhile
            if event is None:
                sub.wake()
            else:
                sub.offer(event)

    def watched_queued(self) -> dict[str, set[str]]:
        """Queued jobs followed by this process's clients, by user: what a position ticker has to refresh."""
        out: dict[str, set[str]] = {}
        for user_id, subs in self._loose.items():
            ids: set[str] = set()
            for sub in subs:
                ids.update(sub.watching())
            if ids:
                out[user_id] = ids
        for job_id, group in self._parked.items():  # a job's watchers agree: the first that says queued will do
            for sub in group.members.values():
                if job_id in sub.watching():
                    out.setdefault(sub.user_id, set()).add(job_id)
                    break
        return out

    def offer_local(self, user_id: str, event: Event) -> None:
        """Hand an ephemeral event (not logged, not published) to this process's clients of the user's job."""
        if user_id in self._subs:
            self._deliver(user_id, event)

    def _deliver(self, user_id: str, event: Event) -> None:
        job_id = event.job_id
        for sub in self._loose.get(user_id, ()):  # offer never adds nor removes a subscriber
            ids = sub.job_ids
            if ids is None or job_id in ids:
                sub.offer(event)
        group = self._parked.get(job_id)
        if group is not None:
            self._serve(group, event)

    def _dispatch(self, channel: str, payload: bytes | str) -> None:
        user_id = channel[len(USER_CHANNEL_PREFIX) :]
        if user_id not in self._subs:
            return
        try:
            event = Event.from_dict(json.loads(payload))
        except (ValueError, KeyError):
            log.warning("undecodable event dropped", extra={"channel": channel})
            return
        # The published text is the event's own JSON (EventLog publishes Event.to_json): every client's frame is
        # made from it, not from encoding the decoded event again (a fifth of a web process's CPU under streaming).
        event.encoded = {"json": payload if isinstance(payload, str) else payload.decode()}
        self.lag.observe(time() - event.ts)
        self._deliver(user_id, event)

    def _start_listener(self, body: Coroutine[Any, Any, None]) -> None:
        self._task = task = asyncio.create_task(body, name="aijobs-gateway")
        task.add_done_callback(self._listener_ended)

    def _listener_ended(self, task: asyncio.Task[None]) -> None:
        """The subscription task ended without `stop`: no client would get another live event, so start it again."""
        if self._stopping or task is not self._task or task.get_loop().is_closed():
            return
        exc = None if task.cancelled() else task.exception()
        self.restarts += 1
        self._crashes += 1
        log.error(
            "gateway subscription task ended (%s); restarting it, and every watcher re-reads its stream",
            "cancelled" if task.cancelled() else "error" if exc is not None else "returned",
            exc_info=exc,
        )
        self._start_listener(self._restart(min(0.05 * 2 ** (self._crashes - 1), 5.0)))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)  # one that dies again at once is not restarted in a tight loop
        await self._resubscribe()
        await self._listen()

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
                backoff = 0.1
            except (RedisConnectionError, RedisTimeoutError, OSError, RuntimeError) as exc:
                log.warning("gateway lost its Redis subscription; resubscribing", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESUBSCRIBE_MAX_SECONDS)
                await self._resubscribe()
                continue
            if msg is None:
                continue
            kind = msg["type"]
            channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
            if kind == "message":
                self.received += 1
                self._dispatch(channel, msg["data"])
                self._crashes = 0
            elif kind == "subscribe":
                event = self._confirmed.get(channel)
                if event is not None:
                    event.set()

    async def _resubscribe(self) -> None:
        """A fresh connection and subscriptions; everyone re-reads their streams for what was missed."""
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        try:
            channels = [USER_CHANNEL_PREFIX + "-gateway", *(user_channel(u) for u in self._subs)]
            await self._pubsub.subscribe(*channels)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return  # the listen loop will try again
        self.resubscribed += 1
        log.info("gateway subscribed again", extra={"channels": len(channels)})
        for subs in self._subs.values():
            for sub in subs:
                self.unpark(sub)
                sub.mark_resync()
