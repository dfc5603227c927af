"""Job events in Redis: a per-job Stream (the replayable log) plus a PUBLISH (the live wake-up).

The stream entry id is `0-<seq>`, so the id *is* the job's sequence number: replay after N is
`XRANGE key (0-N +`, and Redis itself refuses an entry older than the newest one, which keeps a
late writer from slipping a stale event into the log. Live fan-out goes on one channel per user, so
a web process needs one subscription per watching user, not one per job.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from .models import Event, EventKind

STREAM_PREFIX = "aijobs:events:"
USER_CHANNEL_PREFIX = "aijobs:user:"
STREAM_TTL_MS = 7 * 24 * 3600 * 1000

# XADD may be refused (an equal or newer entry exists): then nothing is published either.
_PUBLISH_LUA = """
local ok = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], ARGV[1], 'e', ARGV[2])
if type(ok) == 'table' and ok.err then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
"""


def stream_key(job_id: str) -> str:
    return STREAM_PREFIX + job_id


def user_channel(user_id: str) -> str:
    return USER_CHANNEL_PREFIX + user_id


class EventLog:
    """Publish events and read them back; used by the API, the worker and the gateway."""

    def __init__(self, redis: Redis, *, maxlen: int = 2000) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self._script = redis.register_script(_PUBLISH_LUA)

    async def publish(self, user_id: str, event: Event) -> bool:
        """Append then publish; False when the log already holds this seq or a newer one."""
        payload = event.to_json()
        added = await self._script(
            keys=[stream_key(event.job_id)],
            args=[f"0-{event.seq}", payload, self.maxlen, user_channel(user_id), STREAM_TTL_MS],
        )
        return bool(added)

    async def read_after(self, job_id: str, after_seq: int, *, count: int | None = None) -> list[Event]:
        entries = await self.redis.xrange(stream_key(job_id), min=f"(0-{after_seq}", max="+", count=count)
        return [decode_entry(fields) for _id, fields in entries]


def decode_entry(fields: dict[Any, Any]) -> Event:
    raw = fields.get(b"e") if b"e" in fields else fields.get("e")
    if isinstance(raw, bytes):
        raw = raw.decode()
    return Event.from_dict(json.loads(raw))


def status_event(job_id: str, seq: int, data: dict[str, Any]) -> Event:
    return Event(job_id=job_id, seq=seq, kind=EventKind.STATUS, data=data)
