"""Identical provider calls in flight share one upstream call; an optional cache serves them after it.

Shared by every worker on every host through Redis, per request fingerprint (see `fingerprint`):
- the first job to ask becomes the leader (`SET NX` of the lock with its own token, a lease renewed while its
  call runs) and makes the call; the others follow: they poll (from POLL_SECONDS, backing off to POLL_MAX_SECONDS,
  one Lua round trip each) for the result the leader leaves under its token, and never call while a live leader
  holds the lock;
- a leader whose call fails, or that is cancelled, gives the lock up at once; one that dies loses it when its
  lease runs out: either way the next follower to ask becomes the leader and calls (a follower never fails
  because its leader did: at most one extra call per lost leader);
- a follower waits no longer than its own attempt's timeout (the caller's `asyncio.timeout` cancels the wait),
  and cancelling a follower touches nothing of the leader's;
- with a cache TTL, the leader also stores the result under the fingerprint for that long, and an identical
  call within it is answered without a call.
The result crosses Redis as JSON (text, model, finish reason, usage): never pickle.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from .providers.base import ChatResult, Usage
from .redis_silence import RedisSilent
from .script_batch import BatchedScript, ScriptBatch

log = logging.getLogger("aijobs.coalesce")

PREFIX = "aijobs:coal:"
POLL_SECONDS = 0.05  # how soon a follower first asks again for its leader's result (one small Lua call)
POLL_MAX_SECONDS = 0.5  # ... backing off to this: a long call's many followers cost Redis little
HANDOFF_SECONDS = 60  # how long a leader's result waits for its followers to pick it up (not a cache)

# One step of a waiting call. KEYS: 1 the cache, 2 the lock, 3 the result of the leader last seen ('' if none).
# ARGV: 1 our token, 2 lease ms, 3 '1' if the cache is on for this call.
# Returns {'cache'|'result', json} | {'leader', ''} | {'wait', the current leader's token or ''}.
_STEP_LUA = """
if ARGV[3] == '1' then
  local c = redis.call('GET', KEYS[1])
  if c then return {'cache', c} end
end
if KEYS[3] ~= '' then
  local r = redis.call('GET', KEYS[3])
  if r then return {'result', r} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'leader', ''} end
return {'wait', redis.call('GET', KEYS[2]) or ''}
"""

# The leader is done. KEYS: 1 the lock, 2 its result, 3 the cache. ARGV: 1 token, 2 result json ('' on failure),
# 3 hand-off s, 4 cache ttl s (0: none).
_DONE_LUA = """
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  if tonumber(ARGV[4]) > 0 then redis.call('SET', KEYS[3], ARGV[2], 'PX', math.floor(tonumber(ARGV[4]) * 1000)) end
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def fingerprint(provider: str, key_id: str, request: dict[str, Any]) -> str:
    """sha256 of the provider's name, its server key's id (a hash, never the key) and the normalized request
    (model, messages, parameters): equal exactly when the calls are interchangeable."""
    text = json.dumps({"provider": provider, "key": key_id, "request": request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _dump(result: ChatResult) -> str:
    usage = result.usage  # by hand: dataclasses.asdict copies recursively, at twice the cost of the whole dump
    return json.dumps(
        {
            "text": result.text,
            "model": result.model,
            "finish_reason": result.finish_reason,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "estimated": usage.estimated,
            },
        }
    )


def _load(raw: bytes | str) -> ChatResult:
    data = json.loads(raw)
    usage = data.get("usage") or {}
    return ChatResult(
        text=str(data["text"]),
        model=str(data["model"]),
        usage=Usage(
            int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), bool(usage.get("estimated"))
        ),
        finish_reason=data.get("finish_reason"),
    )


def _ignored(future: asyncio.Future[Any]) -> None:
    """A lead's end that failed: its lock lapses with its lease (retrieved, so asyncio does not report it)."""
    if not future.cancelled():
        future.exception()


class Coalescer:
    """Leader/follower per request fingerprint, through Redis (see the module's docstring)."""

    def __init__(
        self, redis: Redis, *, lease: float = 30.0, poll: float = POLL_SECONDS, batch: ScriptBatch | None = None
    ) -> None:
        self.redis = redis
        self.lease = lease  # a dead leader's lock is taken over after this long; a live one renews it every third
        self.poll = poll
        # Each call once per led job: the cheaper path (BatchedScript). The worker gives its event log's batch, so a
        # job's steps share round trips with its events (the lead's end goes out with the job's last text).
        batch = batch if batch is not None else ScriptBatch(redis)
        self._step = BatchedScript(batch, _STEP_LUA)
        self._done = BatchedScript(batch, _DONE_LUA)
        self._renew = BatchedScript(batch, _RENEW_LUA)
        # The locks this process leads (lock key -> token), renewed together by one loop while any is held: a
        # renewal task per call cost more CPU than the rest of a short call's coalescing.
        self._held: dict[str, str] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def run(
        self, fp: str, call: Callable[[], Awaitable[ChatResult]], *, cache_ttl: float = 0.0
    ) -> tuple[ChatResult, str | None]:
        """The call's result, and how it was had: None (this job called), "call" (another job's call in flight),
        "cache" (a cached result). Redis trouble: the job calls on its own (coalescing only ever saves calls)."""
        token = os.urandom(12).hex()
        lock, cache = PREFIX + "lock:" + fp, PREFIX + "cache:" + fp
        seen = ""
        pause = self.poll
        while True:
            try:
                kind, value = await self._step(
                    keys=[cache, lock, PREFIX + "res:" + fp + ":" + seen if seen else ""],
                    args=[token, int(self.lease * 1000), "1" if cache_ttl > 0 else "0"],
                )
            except RedisSilent:  # Redis's path is silent (said once, by service/redis_silence.py): no wait for it
                return await call(), None
            except Exception as exc:
                log.warning("coalescing unavailable, calling alone", extra={"error": repr(exc)})
                return await call(), None
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind in ("cache", "result"):
                try:
                    return _load(value), "cache" if kind == "cache" else "call"
                except (ValueError, KeyError, TypeError):
                    log.warning("unreadable shared result, calling alone", extra={"fingerprint": fp})
                    return await call(), None
            if kind == "leader":
                return await self._lead(fp, token, lock, cache, call, cache_ttl), None
            current = value.decode() if isinstance(value, bytes) else str(value)
            if current:
                seen = current  # that leader's result is where we look next; its failure frees the lock for us
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, POLL_MAX_SECONDS)

    async def _lead(
        self,
        fp: str,
        token: str,
        lock: str,
        cache: str,
        call: Callable[[], Awaitable[ChatResult]],
        cache_ttl: float,
    ) -> ChatResult:
        self._held[lock] = token
        renewer = self._renewer
        if renewer is None or renewer.done() or renewer.get_loop() is not asyncio.get_running_loop():
            # serves every lead of this process: not in this caller's context (its log fields, its span)
            self._renewer = asyncio.create_task(self._keep(), context=contextvars.Context())
        payload = ""
        try:
            result = await call()
            payload = _dump(result)
            return result
        finally:
            if self._held.get(lock) == token:
                del self._held[lock]
            # Queued, not awaited: the lock is freed (and the result handed off) in the batch's next round trip, with
            # whatever the job sends next, and a cancelled leader frees it as surely, so that a follower calls without
            # waiting out the lease. Whatever this process asks Redis afterwards goes after it (the batch keeps order).
            # Should it fail, the lock lapses with its lease, as a dead leader's does.
            self._done(
                keys=[lock, PREFIX + "res:" + fp + ":" + token, cache],
                args=[token, payload, HANDOFF_SECONDS, cache_ttl if payload else 0],
            ).add_done_callback(_ignored)

    async def _keep(self) -> None:
        """Renew the lease of every lock this process leads, every third of a lease, while it leads any (a dead
        process stops renewing: its leases lapse). A lock taken between two rounds is renewed at the next, within a
        third of its lease; one freed meanwhile is not (its lead ended). Ends when no lead is left."""
        while self._held:
            await asyncio.sleep(self.lease / 3)
            held = list(self._held.items())
            renewals = [self._renew(keys=[lock], args=[token, int(self.lease * 1000)]) for lock, token in held]
            for outcome in await asyncio.gather(*renewals, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.warning("could not renew a coalescing lease", extra={"error": repr(outcome)})
