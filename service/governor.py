"""Upstream limits shared by every worker through Redis: how long a job has waited for a provider's rate limit.

A 429 is not a failed attempt: the provider said "not now", not "no". The job goes back to the queue (no
attempt spent) and waits there, not in a worker slot, until the provider's budget allows it; what bounds that
wait is the time since the provider first refused it, kept here in Redis (one key per job, `since` in epoch
seconds), so every worker that picks the job up sees the same clock. Losing the key only restarts the clock:
the job waits longer, it is never lost.
"""

from __future__ import annotations

import random
import time

from redis.asyncio import Redis

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
