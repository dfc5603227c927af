"""Goodput: N AI-call jobs against an upstream that enforces an RPM limit per key, governor on vs off.

The upstream is the simulated provider with an `UpstreamLimit` (a token bucket per key, as OpenAI enforces one:
429 with Retry-After and the `x-ratelimit-*` headers). The bucket starts empty, as for a key already in use,
so the whole run is sustained: the ideal is exactly the limit. The time scale is shortened (the limit counts
over `period` seconds instead of 60, the governor told the same with RATE_LIMIT_PERIOD), so 600 jobs at 300
"per minute" take about half a minute per run; figures are given per (shortened) minute.

One worker process's machinery runs in this process (build_worker, 50 slots, the real runner, store and Redis),
the jobs seeded through JobService as POST /api/jobs does. A light user's single job is submitted a third of the
way into the heavy user's flood: its wait (submitted → completed) is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any

from .drain import aijobs_settings
from .harness import Bench, Stat
from .report import Row

SEED_BATCH = 200


@dataclass
class GoodputResult:
    jobs: int
    seconds: float
    calls: int
    refused: int
    attempts: float
    failed: int
    light_wait: float
    events: float  # events per job in its Stream: each wait for the limit adds a processing and a queued one

    def per_minute(self, period: float) -> float:
        return self.jobs / self.seconds * period if self.seconds > 0 else 0.0


async def _submit(jobs: Any, user: str, n: int) -> list[str]:
    ids: list[str] = []
    body = {"type": "ai_call", "input": {}}
    for start in range(0, n, SEED_BATCH):
        batch = await asyncio.gather(*(jobs.submit(user, body) for _ in range(min(SEED_BATCH, n - start))))
        ids += [job.id for job in batch]
    return ids


async def _run(bench: Bench, *, governor: bool, n: int, rpm: int, period: float, sim_delay: float) -> GoodputResult:
    from arq.connections import RedisSettings, create_pool

    from service.events import EventLog
    from service.jobs import JobService
    from service.providers.simulated import SimulatedProvider
    from service.providers.upstream_limit import UpstreamLimit
    from service.queue import JobQueue
    from service.store import open_store
    from service.worker import build_worker, json_deserializer, json_serializer

    from .tasks import bench_registry

    queue = bench.fresh_queue("goodput")
    settings = replace(
        aijobs_settings(bench, queue, 50),
        governor=governor,
        rate_limit_period=period,
        governor_horizon=5.0 * period / 60,  # the default 5 s, on the same shortened scale
        max_attempts=3,
        rate_limit_max_wait=3600,
        poll_delay=0.02,
    )
    limit = UpstreamLimit(requests=rpm, period=period, full=False)
    provider = SimulatedProvider(delay=sim_delay, limit=limit)
    redis = await create_pool(
        RedisSettings.from_dsn(bench.redis_url), job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    store = open_store(settings)
    await store.open()
    registry = bench_registry()
    jobs = JobService(
        store=store, queue=JobQueue(redis, queue_name=queue), events=EventLog(redis), registry=registry, max_attempts=3
    )
    worker = build_worker(
        settings, redis_url=bench.redis_url, registry=registry, provider=provider, handle_signals=False
    )
    task = asyncio.create_task(worker.async_run())
    try:
        started = time.time()
        heavy = await _submit(jobs, "heavy", n)
        await asyncio.sleep(n / rpm * period / 3)  # a third of the way into the flood
        (light,) = await _submit(jobs, "light", 1)
        ids = [*heavy, light]
        while True:
            await asyncio.sleep(0.25)
            rows = await _finished(bench, ids)
            if len(rows) == len(ids):
                break
        ended = max(row[1] for row in rows.values())
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.xlen(f"aijobs:events:{job_id}")
            lengths = await pipe.execute()
        return GoodputResult(
            jobs=len(ids),
            seconds=ended - started,
            calls=limit.answered + limit.refused,
            refused=limit.refused,
            attempts=sum(row[2] for row in rows.values()) / len(rows),
            failed=sum(1 for row in rows.values() if row[0] != "completed"),
            light_wait=rows[light][1] - rows[light][3],
            events=sum(lengths) / len(lengths),
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()
        await store.close()
        await redis.aclose()


async def _finished(bench: Bench, ids: list[str]) -> dict[str, tuple[str, float, int, float]]:
    """status, completed_at, attempts, created_at of every job of `ids` that has ended."""

    def read() -> dict[str, tuple[str, float, int, float]]:
        with contextlib.closing(sqlite3.connect(bench.db_path, timeout=30)) as db:
            out = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in db.execute(
                    f"SELECT id, status, completed_at, attempts, created_at FROM jobs WHERE id IN ({marks}) "
                    "AND status IN ('completed', 'failed', 'cancelled', 'expired')",
                    chunk,
                ):
                    out[row[0]] = (row[1], row[2], row[3], row[4])
            return out

    return await asyncio.to_thread(read)


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    n, rpm, period, delay = sizes.goodput_jobs, sizes.goodput_rpm, sizes.goodput_period, sizes.goodput_call_seconds
    results: dict[str, list[GoodputResult]] = {"on": [], "off": []}
    for r in range(sizes.goodput_rounds):
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            result = asyncio.run(_run(bench, governor=mode == "on", n=n, rpm=rpm, period=period, sim_delay=delay))
            results[mode].append(result)
            bench.flush()
            bench.log(
                f"goodput round {r + 1} governor {mode}: {result.per_minute(period):.0f} jobs/min of {rpm} "
                f"({result.seconds:.1f} s), {result.refused}/{result.calls} calls answered 429, "
                f"{result.attempts:.2f} attempts/job, {result.failed} failed, light job {result.light_wait:.1f} s, "
                f"{result.events:.1f} events/job"
            )

    def stat(mode: str, value: Any) -> Stat:
        return Stat.of([value(x) for x in results[mode]])

    off = "governor off (a 429 waits in the queue, no attempt spent)"
    scale = f"{n:,} jobs, {rpm} RPM per key, minute = {period:g} s"
    return [
        Row(
            "goodput",
            f"{scale}: jobs/min ÷ limit",
            stat("on", lambda x: x.per_minute(period) / rpm),
            {off: stat("off", lambda x: x.per_minute(period) / rpm)},
            True,
            "≥ 0.95",
        ),
        Row(
            "goodput",
            "share of upstream calls answered 429 (%)",
            stat("on", lambda x: 100 * x.refused / max(1, x.calls)),
            {off: stat("off", lambda x: 100 * x.refused / max(1, x.calls))},
            False,
            "< 1 %",
            "upstream calls: on "
            + ", ".join(str(x.calls) for x in results["on"])
            + "; off "
            + ", ".join(str(x.calls) for x in results["off"]),
        ),
        Row(
            "goodput",
            "attempts per job (failed jobs)",
            stat("on", lambda x: x.attempts),
            {off: stat("off", lambda x: x.attempts)},
            False,
            "1.0, none failed",
            "failed: on "
            + ", ".join(str(x.failed) for x in results["on"])
            + "; off "
            + ", ".join(str(x.failed) for x in results["off"]),
        ),
        Row(
            "goodput",
            "events per job (3: queued, processing, completed; +2 per wait in the queue)",
            stat("on", lambda x: x.events),
            {off: stat("off", lambda x: x.events)},
            False,
        ),
        Row(
            "goodput",
            "a light user's one job, submitted ⅓ into the flood: wait s",
            stat("on", lambda x: x.light_wait),
            {off: stat("off", lambda x: x.light_wait)},
            False,
            "",
            "the backlog books slots only GOVERNOR_HORIZON ahead (5 s, here 1 s): the light job waits behind that",
        ),
    ]
