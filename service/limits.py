"""Per-user limits, so no one user can exhaust a shared deployment (or its AI bill).

A refusal costs nothing and nothing already accepted is ever dropped. Submissions per minute is a sliding window
in Redis (shared by all web processes), spent before the job is stored and given back if the store then refuses
it; active jobs are counted in the store (the truth), by the insert itself, so concurrent submissions can't slip
past the cap; open streams are counted per web process, in memory, so a crashed process leaks nothing.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from typing import Any

from redis.asyncio import Redis

from .config import Settings
from .errors import LimitExceeded
from .models import dumps
from .script_batch import ScriptBatch

# Drop entries older than the window, then admit (and record) the submission if under the limit; otherwise
# answer how many ms until the oldest entry leaves the window.
_SLIDING_WINDOW = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('PEXPIRE', key, window)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

WINDOW_MS = 60_000
# A window entry only has to be unique within its user's key: this process's random prefix (new in a forked
# child) and a counter, with no system call per submission as uuid4 or os.urandom would make.
_entry_prefix = os.urandom(8).hex()
_ENTRY_COUNT = itertools.count()


def _new_entry_prefix() -> None:
    global _entry_prefix
    _entry_prefix = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_entry_prefix)


class SubmissionLimits:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.byte_caps = dict(settings.input_byte_caps)  # parsed once, by Settings
        self._batch = ScriptBatch(redis)  # concurrent submissions share one round trip
        self._window = self._batch.register(_SLIDING_WINDOW)

    def check_input_size(self, job_type: str, job_input: Any) -> None:
        cap = self.byte_caps.get(job_type)
        if cap is None:
            return
        size = len(dumps(job_input).encode())
        if size > cap:
            raise LimitExceeded(
                413, "input_too_large", f"A {job_type} job's input may be at most {cap} bytes of JSON (got {size})."
            )

    def too_many_active(self, active: int) -> LimitExceeded:
        """The refusal for a user at the active-jobs cap (the store's insert checks the cap itself, atomically)."""
        limit = self.settings.max_active_jobs
        return LimitExceeded(
            429,
            "too_many_active_jobs",
            f"You already have {max(active, limit)} jobs queued or running (the limit is {limit}); "
            "wait for one to finish, then submit again.",
            retry_after=5,
        )

    async def take_submission(self, user_id: str) -> str:
        """Count this submission against the user's per-minute budget, or refuse it with a Retry-After.

        Returns the entry it made, for give_back() if the submission is refused later on.
        """
        limit = self.settings.submissions_per_minute
        entry = f"{_entry_prefix}:{next(_ENTRY_COUNT)}"
        wait_ms = int(
            await self._batch.call(
                self._window, [_rate_key(user_id)], [int(time.time() * 1000), WINDOW_MS, limit, entry]
            )
        )
        if wait_ms > 0:
            seconds = max(1, math.ceil(wait_ms / 1000))
            raise LimitExceeded(
                429,
                "rate_limited",
                f"You may submit {limit} jobs per minute; try again in {seconds} s.",
                retry_after=seconds,
            )
        return entry

    async def give_back(self, user_id: str, entry: str) -> None:
        """Undo take_submission for a submission refused afterwards: a refusal costs nothing."""
        await self.redis.zrem(_rate_key(user_id), entry)


def _rate_key(user_id: str) -> str:
    return f"aijobs:rate:submit:{user_id}"


class StreamSlot:
    """One open stream; release() is idempotent so every exit path may call it."""

    __slots__ = ("_slots", "user_id", "kind", "_held")

    def __init__(self, slots: StreamSlots, user_id: str, kind: str) -> None:
        self._slots = slots
        self.user_id = user_id
        self.kind = kind
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self.user_id, self.kind)


class StreamSlots:
    """Open SSE/WebSocket streams per user on this web process. Handlers call acquire() and release the slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self.by_kind: dict[str, int] = {"sse": 0, "ws": 0}  # open streams of each transport (the metrics)

    def acquire(self, user_id: str, kind: str = "sse") -> StreamSlot:
        """`kind`: "sse" or "ws"."""
        held = self._open.get(user_id, 0)
        if held >= self.limit:
            raise LimitExceeded(
                429,
                "too_many_streams",
                f"You already have {held} live streams open (the limit is {self.limit}); close one, or poll "
                "GET /api/jobs/{id} instead.",
                retry_after=5,
            )
        self._open[user_id] = held + 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        return StreamSlot(self, user_id, kind)

    def _release(self, user_id: str, kind: str) -> None:
        self.by_kind[kind] -= 1
        left = self._open.get(user_id, 0) - 1
        if left > 0:
            self._open[user_id] = left
        else:
            self._open.pop(user_id, None)

    def held(self, user_id: str) -> int:
        return self._open.get(user_id, 0)
