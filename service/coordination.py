"""State workers share through Redis, none of it the truth (the store is): cancel messages, provider
back-off, and which workers are alive with how many slots.

Each piece is an optimisation with a fallback: a lost cancel message is caught by the heartbeat (which reads
`cancel_requested` from the store), a lost back-off only means a few extra 429s, a lost worker list only
makes an ETA unknown for one sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger("aijobs.coordination")

CONTROL_CHANNEL = "aijobs:control"
AUTH_CHANNEL = "aijobs:auth"
BACKOFF_PREFIX = "aijobs:backoff:"
WORKERS_PREFIX = "aijobs:workers:"

# Extend a pause, never shorten it: a later, shorter Retry-After must not lift an earlier, longer one.
# KEYS[2] is the marker "some provider/model is paused", kept the same way.
_PAUSE_LUA = """
for i = 1, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  if left < tonumber(ARGV[1]) then redis.call('SET', KEYS[i], '1', 'PX', ARGV[1]) end
end
return 1
"""
ANY_PAUSE_KEY = "aijobs:backoff-any"  # set (and extended) with every pause
ANY_PAUSE_CACHE_SECONDS = 0.25  # how stale a worker's "nothing is paused" may be


async def publish_cancel(redis: Redis, job_id: str) -> None:
    """Tell every worker to stop this job now; the one running it does, fenced by its token."""
    await redis.publish(CONTROL_CHANNEL, json.dumps({"cancel": job_id}))


async def follow_channel(
    redis: Redis,
    channel: str,
    on_message: Callable[[dict[str, Any]], None],
    *,
    on_subscribed: Callable[[], None] | None = None,
    retry: float = 1.0,
) -> None:
    """Follow a JSON control channel until cancelled, resubscribing after any Redis error.

    `on_subscribed` runs after each (re)subscribe: pub/sub is at-most-once, so whatever was published while this
    process was not listening is lost, and the caller may need to assume the worst.
    """
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            if on_subscribed is not None:
                on_subscribed()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    on_message(json.loads(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("control channel lost, resubscribing", extra={"channel": channel, "error": repr(exc)})
            await asyncio.sleep(retry)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


async def listen_for_cancels(redis: Redis, on_cancel: Callable[[str], None], *, retry: float = 1.0) -> None:
    await follow_channel(redis, CONTROL_CHANNEL, lambda data: on_cancel(str(data["cancel"])), retry=retry)


async def publish_revoked(redis: Redis, user_id: str) -> None:
    """Tell every web process to forget the tokens it remembers for this user (their cache lasts 30 s at most)."""
    await redis.publish(AUTH_CHANNEL, json.dumps({"revoked": user_id}))


async def publish_signed_out(redis: Redis, session_id: str, user_id: str | None = None) -> None:
    """Tell every web process that this browser session was signed out (the store has the record)."""
    await redis.publish(AUTH_CHANNEL, json.dumps({"signed_out": session_id, "user": user_id}))


async def listen_for_revocations(
    redis: Redis,
    forget: Callable[[str | None], None],
    *,
    signed_out: Callable[[str, str | None], None] | None = None,
    revoked: Callable[[str], None] | None = None,
    retry: float = 1.0,
) -> None:
    """Revoked tokens (`forget` the user, then `revoked`) and signed-out sessions (`signed_out(session, user)`).
    After each (re)subscribe forget everything: a revocation or sign-out may have been published while not
    listening."""

    def on_message(data: dict[str, Any]) -> None:
        if "revoked" in data:
            forget(str(data["revoked"]))
            if revoked is not None:
                revoked(str(data["revoked"]))
        elif "signed_out" in data and signed_out is not None:
            user = data.get("user")
            signed_out(str(data["signed_out"]), str(user) if user is not None else None)

    await follow_channel(redis, AUTH_CHANNEL, on_message, on_subscribed=lambda: forget(None), retry=retry)


class ProviderBackoff:
    """A provider/model pause every worker honours: one 429 with Retry-After holds back the whole burst."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(_PAUSE_LUA)
        self._nothing_until = 0.0  # monotonic time until which "nothing is paused" holds
        self._refreshing: asyncio.Task[bool] | None = None

    @staticmethod
    def key(provider: str, model: str) -> str:
        return f"{BACKOFF_PREFIX}{provider}:{model}"

    async def pause(self, provider: str, model: str, seconds: float) -> None:
        if seconds > 0:
            self._nothing_until = 0.0
            await self._script(keys=[self.key(provider, model), ANY_PAUSE_KEY], args=[int(seconds * 1000)])

    async def maybe_paused(self) -> bool:
        """Whether any provider/model may be paused: lets a job skip the per-model check (and the store read it
        needs) when nothing is. A pause another worker set is seen within ANY_PAUSE_CACHE_SECONDS (plus a round
        trip): a fresh "nothing paused" answers at once, a just-stale one answers too while it is refreshed."""
        clock = time.monotonic()
        if self._nothing_until > clock:
            return False
        if self._nothing_until and self._nothing_until + ANY_PAUSE_CACHE_SECONDS > clock:
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.create_task(self._refresh(), context=contextvars.Context())  # shared
            return False
        return await self._refresh()

    async def _refresh(self) -> bool:
        try:
            paused = bool(await self.redis.exists(ANY_PAUSE_KEY))
        except Exception:
            return False  # Redis trouble means no pause, as in remaining()
        self._nothing_until = 0.0 if paused else time.monotonic() + ANY_PAUSE_CACHE_SECONDS
        return paused

    async def remaining(self, provider: str, model: str) -> float:
        """Seconds the pause still lasts (0: go ahead). Redis trouble means no pause: the call decides."""
        try:
            ms = await self.redis.pttl(self.key(provider, model))
        except Exception:
            return 0.0
        return max(0.0, ms / 1000) if ms and ms > 0 else 0.0


async def paused_providers(redis: Redis, *, limit: int = 200) -> list[dict[str, Any]]:
    """Every provider/model pause in force, longest first: `{"provider", "model", "seconds_left"}`. Found with SCAN
    (never KEYS), for the operator page; at most `limit` of them."""
    keys: list[str] = []
    async for key in redis.scan_iter(match=f"{BACKOFF_PREFIX}*", count=500):
        keys.append(key.decode() if isinstance(key, bytes) else str(key))
        if len(keys) >= limit:
            break
    if not keys:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
        left = await pipe.execute()
    out = []
    for key, ms in zip(keys, left, strict=True):
        if ms is None or ms <= 0:  # gone meanwhile (-2) or, against the rules, without an expiry (-1)
            continue
        provider, _, model = key.removeprefix(BACKOFF_PREFIX).partition(":")
        out.append({"provider": provider, "model": model, "seconds_left": round(ms / 1000, 1)})
    return sorted(out, key=lambda p: (-p["seconds_left"], p["provider"], p["model"]))


async def register_worker(redis: Redis, queue_name: str, worker_id: str, capacity: int, ttl: float) -> None:
    """Say this worker is alive with `capacity` slots for the next `ttl` seconds."""
    key = workers_key(queue_name)
    now_ms = time.time() * 1000
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, "-inf", now_ms)
        pipe.zadd(key, {f"{worker_id}|{capacity}": now_ms + ttl * 1000})
        pipe.pexpire(key, int(ttl * 1000) + 1000)
        await pipe.execute()


async def unregister_worker(redis: Redis, queue_name: str, worker_id: str, capacity: int) -> None:
    await redis.zrem(workers_key(queue_name), f"{worker_id}|{capacity}")


def workers_key(queue_name: str) -> str:
    """The ZSET of `<worker id>|<slots>` members scored by the time (ms) each stays alive until."""
    return WORKERS_PREFIX + queue_name


def _parse_member(member: Any) -> tuple[str, int] | None:
    raw = member.decode() if isinstance(member, bytes) else str(member)
    worker_id, _, capacity = raw.rpartition("|")
    try:
        return worker_id, int(capacity)
    except ValueError:
        return None


async def live_workers(redis: Redis, queue_name: str) -> list[dict[str, Any]]:
    """Every worker that said it was alive recently: `{"id", "concurrency", "alive_until"}`, by id."""
    members = await redis.zrangebyscore(workers_key(queue_name), time.time() * 1000, "+inf", withscores=True)
    out = []
    for member, score in members:
        parsed = _parse_member(member)
        if parsed is not None:
            out.append({"id": parsed[0], "concurrency": parsed[1], "alive_until": round(score / 1000, 3)})
    return sorted(out, key=lambda w: w["id"])


def capacity_of(members: list[Any]) -> int:
    """Job slots of the live workers' ZSET members (as a script that read them returns them)."""
    return sum(parsed[1] for parsed in map(_parse_member, members) if parsed is not None)


async def live_capacity(redis: Redis, queue_name: str) -> int:
    """Job slots of every worker that said it was alive recently."""
    return capacity_of(await redis.zrangebyscore(workers_key(queue_name), time.time() * 1000, "+inf"))
