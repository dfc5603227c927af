"""Job types that exist only in the bench: a no-op, a start marker and a simulated 1 s AI call (and the real chat).

They are registered in a bench-only registry handed to both `create_app` and `build_worker`, so the real
service never learns about them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.tasks import TaskRegistry, chat
from service.tasks.context import TaskContext

MARK_LIST_PREFIX = "bench:mark:"
_redis: Redis | None = None


@dataclass(frozen=True)
class Empty:
    """No input at all."""


@dataclass(frozen=True)
class Marked:
    """Where to report the moment the task function started."""

    tag: str = ""


def mark_redis() -> Redis:
    """One client per process for reporting start times (the bench's own channel, not the job's)."""
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _redis


async def report_start(tag: str, started: float) -> None:
    await mark_redis().rpush(MARK_LIST_PREFIX + tag, repr(started))


async def noop(ctx: TaskContext, data: Empty) -> None:
    """Do nothing: what is left is the cost of the machinery."""
    return None


async def mark(ctx: TaskContext, data: Marked) -> dict[str, Any]:
    """Note when the function started, return it, and tell the bench if it listens."""
    started = time.time()
    if data.tag:
        await report_start(data.tag, started)
    return {"started": started}


async def ai_call(ctx: TaskContext, data: Empty) -> dict[str, Any]:
    """One simulated AI call (the worker's SimulatedProvider decides how long it takes)."""
    reply = await ctx.ai.chat([{"role": "user", "content": "Say hello."}])
    return {"chars": len(reply.text)}


def bench_registry() -> TaskRegistry:
    from service.tasks import titles

    registry = TaskRegistry()
    titles.register(registry)  # the e2e figure's instant job: the real type, on a 0 s simulated provider
    registry.task("noop", input=Empty, timeout=60, max_attempts=1, poll_interval=1.0, typical_seconds=0.01)(noop)
    registry.task("mark", input=Marked, timeout=60, max_attempts=1, poll_interval=1.0, typical_seconds=0.01)(mark)
    registry.task("ai_call", input=Empty, timeout=60, max_attempts=1, poll_interval=1.0, typical_seconds=1.0)(ai_call)
    chat.register(registry)  # the real chat type: the streaming figure's jobs
    return registry
