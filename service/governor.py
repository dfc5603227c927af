"""Upstream limits shared by every worker through Redis: how long a job has waited for a provider's rate limit.

A 429 is not a failed attempt: the provider said "not now", not "no". The job goes back to the queue (no
attempt spent) and waits there, not in a worker slot, until the provider's budget allows it; what bounds that
wait is the time since the provider first refused it, kept here in Redis (one key per job, `since` in epoch
seconds), so every worker that picks the job up sees the same clock. Losing the key only restarts the clock:
the job waits longer, it is never lost.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis

from .config import Settings
from .providers.errors import RateLimited
from .redis_silence import RedisSilent
from .script_batch import ScriptBatch

log = logging.getLogger("aijobs.governor")

WAIT_PREFIX = "aijobs:ratewait:"

# The time of the first refusal: set once, read by every later refusal. KEYS[1]: the job's key.
# ARGV: now (epoch seconds), ttl (s).
_SINCE_LUA = """
local since = redis.call('GET', KEYS[1])
if since then return since end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""


class RateLimitWaits:
    """When each job was first refused by a provider's rate limit, shared by every worker."""

    def __init__(self, redis: Redis, *, max_wait: float) -> None:
        self.redis = redis
        self.max_wait = max_wait
        self._since = redis.register_script(_SINCE_LUA)

    async def since(self, job_id: str, now: float | None = None) -> float:
        """When the provider first refused this job (now, if this is the first refusal or Redis cannot say)."""
        now = time.time() if now is None else now
        try:
            raw = await self._since(keys=[WAIT_PREFIX + job_id], args=[repr(now), int(self.max_wait * 2) + 60])
            return float(raw)
        except Exception:
            return now

    async def clear(self, job_id: str) -> None:
        """The provider took a call of this job: a later refusal starts a new wait."""
        try:
            await self.redis.delete(WAIT_PREFIX + job_id)
        except Exception:
            return None


def rate_limit_delay(waited: float, retry_after: float | None, *, base: float, cap: float) -> float:
    """How long a refused job stays in the queue before it is offered again.

    The provider's Retry-After when it gave one, stretched by up to half again so that the jobs refused together
    do not all come back in the same instant; without one, a back-off that grows with the time already waited
    (base, then about the wait so far, at most `cap`), jittered over its upper half.
    """
    if retry_after is not None and retry_after > 0:
        return float(retry_after) * random.uniform(1.0, 1.5)
    ceiling = min(cap, max(base, waited))
    return random.uniform(ceiling / 2, ceiling)


# --- the governor: budgets per provider, model and key --------------------------------------------------------

GOV_PREFIX = "aijobs:gov:"
RESERVED_PREFIX = "aijobs:gov-slot:"
DEFAULT_OUTPUT_TOKENS = 256  # a call without max_tokens is counted as this many output tokens until it settles
# A probe not answered by then (a long streamed call, or its worker died) lets one more call probe: at worst a
# trickle of one call per PROBE_SECONDS until the first answer, never a burst, and never a scope held for long.
PROBE_SECONDS = 5.0
BUSY_RETRY_SECONDS = 0.25  # every concurrent-call slot taken: offered again this soon (slots free unpredictably)

# GCRA, one theoretical arrival time (TAT) per limit: a limit of L per period P spaces calls T = P / L apart and
# lets a full bucket go at once (TAT up to P ahead of now), which is how OpenAI-style providers enforce RPM and
# TPM; one call's worth short of L (of TPM: the call's tokens, at most 1 % of it), a margin for the provider's
# bucket having started a little later than ours (the first call's latency) that costs nothing at a sustained pace.
# A call that does not fit now is not refused: it takes the next free slot (the TAT moves on), the slot is kept
# for the job under RESERVED_PREFIX, and the job waits in the queue until then. Jobs that cannot go now therefore
# line up one slot each, exactly spaced, instead of all coming back at the same moment.
# Fair share: each user may hold booked slots only `horizon` seconds' worth of calls ahead; that user's further jobs
# wait in the queue without one and ask again when its next booked slot comes due. So one user's backlog books at
# most a horizon of the budget, and another user's job meets at most one horizon of booked slots per user with a
# backlog before its own: with one user flooding, a light user's call goes within GOVERNOR_HORIZON.
#
# KEYS: 1 the scope's hash (rpm, tpm learned limits; rtat, ttat; seen: an answer came back; hold: no call before
#       this time, after a 429), 2 its concurrent
#       calls (ZSET holder -> until ms), 3 the job's reserved slot, 4 the scope's probe (the one call in flight
#       while nothing is known of its limits, so that a cold start is not a burst of 429s), 5 the slots booked by
#       the job's user (ZSET job -> slot time).
# ARGV: 1 rpm, 2 tpm, 3 concurrent (configured; 0: none), 4 period s, 5 tokens, 6 holder, 7 call ttl ms,
#       8 the wait to answer when every concurrent-call slot is taken, 9 the horizon (s): slots are kept only
#       this far ahead per user, 10 '1' to book (before a claim: a slot due now is kept for the call, not used),
#       11 how long a probe may stay out (ms) before another call probes (its worker may have died).
# Returns the seconds to wait, as a string ('0': admitted, the call may go now; 'u<seconds>': the user already
# holds a horizon's worth of booked slots, none kept for this job: ask again then, when the user's next one is due).
_ADMIT_LUA = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local period = tonumber(ARGV[4])
local function limit(configured, learned)
  configured = tonumber(configured) or 0
  learned = tonumber(learned) or 0
  if configured > 0 and learned > 0 then return math.min(configured, learned) end
  return math.max(configured, learned)
end
local conc = tonumber(ARGV[3])
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now * 1000)
  if redis.call('ZCARD', KEYS[2]) >= conc and not redis.call('ZSCORE', KEYS[2], ARGV[6]) then
    return ARGV[8]
  end
end
local slot = tonumber(redis.call('GET', KEYS[3]))
if not slot then
  local h = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'rtat', 'ttat', 'seen', 'hold')
  local rpm, tpm = limit(ARGV[1], h[1]), limit(ARGV[2], h[2])
  local hold = tonumber(h[6]) or 0
  if rpm == 0 and tpm == 0 and not h[5] then
    -- nothing known of this scope's limits yet: one call goes first and its answer's headers teach them
    if not redis.call('SET', KEYS[4], ARGV[6], 'NX', 'PX', ARGV[11]) then return ARGV[8] end
  end
  slot = math.max(now, hold)
  local rtat, ttat
  local step = 0
  if rpm > 0 then
    step = period / rpm
    rtat = math.max(tonumber(h[3]) or 0, now) + step
    slot = math.max(slot, rtat - period + step)
  end
  if tpm > 0 then
    local tokens = math.min(tonumber(ARGV[5]), tpm)
    step = math.max(step, tokens * period / tpm)
    ttat = math.max(tonumber(h[4]) or 0, now) + tokens * period / tpm
    slot = math.max(slot, ttat - period + math.min(tokens * period / tpm, period / 100))
  end
  if slot > now + 0.001 and step > 0 then
    -- a booked slot ahead: each user may hold at most a horizon's worth of them (in calls at this pace)
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    local booked = redis.call('ZCARD', KEYS[5])
    if booked >= math.max(1, math.floor(tonumber(ARGV[9]) / step)) then
      local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
      return 'u' .. tostring(math.max(0, tonumber(first[2]) - now))
    end
    redis.call('ZADD', KEYS[5], slot, ARGV[6])
    redis.call('EXPIRE', KEYS[5], math.ceil(slot - now) + 60)
  end
  if rtat then redis.call('HSET', KEYS[1], 'rtat', tostring(rtat)) end
  if ttat then redis.call('HSET', KEYS[1], 'ttat', tostring(ttat)) end
  redis.call('EXPIRE', KEYS[1], math.ceil(period * 2) + 3600)
  if slot > now + 0.001 then
    redis.call('SET', KEYS[3], tostring(slot), 'EX', math.ceil(slot - now) + 600)
  end
end
if slot > now + 0.001 then return tostring(slot - now) end
if ARGV[10] == '1' then
  -- booking before the job is claimed: keep the slot (due now) for the call the claimed job is about to make
  redis.call('SET', KEYS[3], tostring(slot), 'EX', 600)
  return '0'
end
redis.call('DEL', KEYS[3])
if conc > 0 then
  redis.call('ZADD', KEYS[2], now * 1000 + tonumber(ARGV[7]), ARGV[6])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[7]) + 1000)
end
return '0'
"""

# After a call: the concurrent-call slot back, the token estimate settled with what the call really used, and what
# the provider's headers say learned. A header's limit becomes the scope's learned limit; `remaining` R of a limit
# L means the provider's bucket is L - R calls (tokens) down, so the TAT is moved to at least now + (L - R) × T
# (never back: calls we let go since the provider counted are already in ours). A refusal also holds every call
# back until its Retry-After (or, without one, the reset of the exhausted limit).
# KEYS: 1 scope hash, 2 concurrent calls, 3 probe. ARGV: 1 period, 2 holder, 3 token correction (actual - estimated),
#   4 limit-requests, 5 remaining-requests, 6 limit-tokens, 7 remaining-tokens, 8 hold-back seconds ('' if none),
#   9 configured rpm, 10 configured tpm, 11 '1' if the provider answered (headers or not: the probe is over).
_SETTLE_LUA = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local period = tonumber(ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
if ARGV[11] == '1' then redis.call('HSET', KEYS[1], 'seen', '1') end
local h = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'rtat', 'ttat')
local function limit(configured, learned)
  configured = tonumber(configured) or 0
  learned = tonumber(learned) or 0
  if configured > 0 and learned > 0 then return math.min(configured, learned) end
  return math.max(configured, learned)
end
local function learn(field, tatfield, lim, rem, configured, old, tat)
  lim = tonumber(lim)
  if lim and lim > 0 then redis.call('HSET', KEYS[1], field, lim) end
  local eff = limit(configured, lim or old)
  rem = tonumber(rem)
  if eff > 0 and rem and lim and lim > 0 then
    local floor = now + math.max(0, lim - rem) * period / eff
    if floor > (tonumber(tat) or 0) then
      redis.call('HSET', KEYS[1], tatfield, tostring(floor))
      return floor
    end
  end
  return tonumber(tat) or 0
end
local rtat = learn('rpm', 'rtat', ARGV[4], ARGV[5], ARGV[9], h[1], h[3])
local ttat = learn('tpm', 'ttat', ARGV[6], ARGV[7], ARGV[10], h[2], h[4])
local fix = tonumber(ARGV[3]) or 0
local tpm = limit(ARGV[10], redis.call('HGET', KEYS[1], 'tpm'))
if fix ~= 0 and tpm > 0 and ttat > 0 then
  redis.call('HSET', KEYS[1], 'ttat', tostring(math.max(now, ttat + fix * period / tpm)))
end
local hold = tonumber(ARGV[8])
if hold and hold > 0 and now + hold > (tonumber(redis.call('HGET', KEYS[1], 'hold')) or 0) then
  redis.call('HSET', KEYS[1], 'hold', tostring(now + hold))  -- no call goes before then (only ever extended)
end
redis.call('EXPIRE', KEYS[1], math.ceil(period * 2) + 3600)
return 1
"""


@dataclass(frozen=True, slots=True)
class Budget:
    """Configured limits of one provider/model (0: none configured; a provider's headers may still teach one)."""

    rpm: float = 0.0
    tpm: float = 0.0
    concurrent: int = 0


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What a provider's `x-ratelimit-*` headers said (None: the header was absent or unreadable)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders | None:
        def number(name: str) -> int | None:
            try:
                return int(float(headers[name]))
            except (KeyError, ValueError):
                return None

        def reset(name: str) -> float | None:
            return parse_duration(headers.get(name, ""))

        found = cls(
            number("x-ratelimit-limit-requests"),
            number("x-ratelimit-remaining-requests"),
            reset("x-ratelimit-reset-requests"),
            number("x-ratelimit-limit-tokens"),
            number("x-ratelimit-remaining-tokens"),
            reset("x-ratelimit-reset-tokens"),
        )
        return None if found == cls() else found

    def exhausted_reset(self) -> float | None:
        """Seconds until an exhausted limit has room again (for a 429 that came without Retry-After)."""
        waits = [
            reset
            for remaining, reset in (
                (self.remaining_requests, self.reset_requests),
                (self.remaining_tokens, self.reset_tokens),
            )
            if remaining == 0 and reset is not None
        ]
        return max(waits) if waits else None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """OpenAI's `x-ratelimit-reset-*` durations (`20ms`, `1.5s`, `6m0s`, `1h2m`), or plain seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def key_scope(api_key: str | None, server: str = "server") -> str:
    """A user's own key has its own budget, named by a hash of the key (never the key); else the server key's
    (`server`: the provider's own name for it, also a hash)."""
    if not api_key:
        return server
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class NotAdmitted(RateLimited):
    """The governor has no room for this call yet: nothing was sent; the job waits in the queue for its slot
    (`reserved`), or without one until a slot would be within the horizon."""

    def __init__(
        self, message: str, *, retry_after: float, reserved: bool, scope: tuple[str, str, int] = ("", "", 0)
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reserved = reserved
        self.scope, self.model, self.tokens = scope  # what to ask the governor again before the next claim


@dataclass
class Governor:
    """Budgets per (provider, model, key), shared by every worker through Redis (see the scripts above)."""

    redis: Redis
    budgets: dict[str, Budget] = field(default_factory=dict)  # by model; "" for any model
    period: float = 60.0
    horizon: float = 5.0  # seconds ahead that slots are booked (a later job meets at most this much booked before it)
    call_ttl: float = 600.0  # a concurrent-call slot of a worker that died is freed after this long

    def __post_init__(self) -> None:
        # the calls of every slot at about the same time share a round trip; none waits on a silent Redis (it fails
        # open at once: service/redis_silence.py)
        self._batch = ScriptBatch(self.redis, skip_when_silent=True)
        self._admit = self._batch.register(_ADMIT_LUA)
        self._settle = self._batch.register(_SETTLE_LUA)

    def budget(self, model: str) -> Budget:
        return self.budgets.get(model) or self.budgets.get("") or Budget()

    @staticmethod
    def scope(provider: str, model: str, api_key: str | None, server: str = "server") -> str:
        return f"{provider}:{model}:{key_scope(api_key, server)}"

    def _keys(self, scope: str) -> list[str]:
        return [GOV_PREFIX + scope, GOV_PREFIX + scope + ":calls", GOV_PREFIX + scope + ":probe"]

    async def admit(
        self, scope: str, model: str, tokens: int, holder: str, *, user: str = "", book: bool = False
    ) -> tuple[float, bool]:
        """(0, True) when the call may go now; else (seconds to wait, whether a slot is kept for it then).

        `book`: asked before the job is claimed, so a slot due now is kept for its call rather than used."""
        budget = self.budget(model)
        try:
            answer = await self._batch.call(
                self._admit,
                [
                    *self._keys(scope)[:2],
                    RESERVED_PREFIX + holder,
                    self._keys(scope)[2],
                    GOV_PREFIX + scope + ":user:" + user,
                ],
                [
                    budget.rpm,
                    budget.tpm,
                    budget.concurrent,
                    self.period,
                    tokens,
                    holder,
                    int(self.call_ttl * 1000),
                    BUSY_RETRY_SECONDS,
                    self.horizon,
                    "1" if book else "0",
                    int(PROBE_SECONDS * 1000),
                ],
            )
        except Exception as exc:  # Redis trouble: let the call decide (a 429 still waits in the queue)
            if not isinstance(exc, RedisSilent):  # a silent Redis is said once, by service/redis_silence.py
                log.warning("governor unavailable, call admitted", extra={"error": repr(exc)})
            return 0.0, True
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        if text.startswith("u"):
            return max(0.0, float(text[1:])), False
        return max(0.0, float(text)), True

    async def settle(
        self,
        scope: str,
        model: str,
        holder: str,
        *,
        correction: int = 0,
        headers: RateHeaders | None = None,
        hold: float | None = None,
        answered: bool = True,
    ) -> None:
        """After a call: free its slot, correct its token estimate, learn from the headers, hold back on a 429."""
        budget = self.budget(model)
        h = headers or RateHeaders()
        args = [
            self.period,
            holder,
            correction,
            *(
                "" if v is None else v
                for v in (h.limit_requests, h.remaining_requests, h.limit_tokens, h.remaining_tokens)
            ),
            "" if hold is None else hold,
            budget.rpm,
            budget.tpm,
            "1" if answered else "0",
        ]
        try:
            await self._batch.call(self._settle, self._keys(scope), args)
        except Exception as exc:
            if not isinstance(exc, RedisSilent):
                log.warning("governor could not settle a call", extra={"error": repr(exc)})


def build_governor(redis: Redis, settings: Settings) -> Governor | None:
    """The worker's governor, or None with GOVERNOR=false (then only a 429 slows calls down)."""
    if not settings.governor:
        return None
    budgets = {"": Budget(rpm=settings.ai_rpm, tpm=settings.ai_tpm, concurrent=settings.ai_concurrent_calls)}
    for model, (rpm, tpm, concurrent) in settings.model_limits.items():  # AI_LIMITS: a model's own configured limits
        budgets[model] = Budget(rpm=rpm, tpm=tpm, concurrent=concurrent)
    return Governor(redis, budgets=budgets, period=settings.rate_limit_period, horizon=settings.governor_horizon)
