"""Enqueue wakes an idle worker (service/arq_worker.py) instead of leaving the job until its next poll."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import httpx
from arq.connections import RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from service.config import Settings
from service.queue import JobQueue, json_deserializer, json_serializer

from .conftest import run_worker, until, wait_for_status


async def test_idle_worker_with_a_long_poll_starts_a_job_when_woken(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    slow = dataclasses.replace(settings, poll_delay=60.0)  # without a wake-up the job would wait a minute
    async with run_worker(slow) as worker:
        idle = asyncio.Event()
        wait_idle = worker._idle  # type: ignore[attr-defined]

        async def idling(seconds: float) -> None:
            idle.set()
            await wait_idle(seconds)

        worker._idle = idling  # type: ignore[attr-defined]  # set before the worker task first runs
        await asyncio.wait_for(idle.wait(), 10)  # its first poll found nothing: it is now idle in its wait
        r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "Wake me up"}})
        assert r.status_code == 202, r.text
        body = await wait_for_status(client, r.json()["job_id"], {"completed"})
        assert body["result"]["titles"]


async def test_enqueueing_the_same_attempt_twice_is_refused(settings: Settings) -> None:
    assert settings.redis_url
    redis = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    try:
        queue = JobQueue(redis, queue_name=settings.queue_name)
        assert await queue.enqueue("job-1", ticket=0, priority=5) is True
        assert await queue.enqueue("job-1", ticket=0, priority=5) is False
        assert await queue.enqueue("job-1", ticket=1, priority=5) is True
        assert await queue.depth() == 2
        assert await queue.holds("job-1", 0)
    finally:
        await redis.aclose()


async def test_a_job_not_run_inline_goes_through_arqs_run_job_with_its_try_counted_once(settings: Settings) -> None:
    """The take script counts every job's try; a cron job (max_tries 1) that arq's run_job runs must not see 2."""
    assert settings.redis_url
    redis = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    try:
        async with run_worker(settings) as worker:
            await redis.enqueue_job("aijobs:cleanup", _job_id="cron-by-hand", _queue_name=settings.queue_name)

            async def gone() -> bool:
                return not await redis.exists(job_key_prefix + "cron-by-hand")

            await until(gone, what="the cron job to finish")
            assert worker.jobs_complete >= 1
            assert worker.jobs_failed == 0  # a try counted twice would be "max 1 retries exceeded"
            assert await redis.zscore(settings.queue_name, "cron-by-hand") is None
    finally:
        await redis.aclose()


async def test_a_queue_entry_whose_job_data_is_gone_is_dropped(settings: Settings) -> None:
    assert settings.redis_url
    redis = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    try:
        async with run_worker(settings) as worker:
            await redis.zadd(settings.queue_name, {"no-such-job.1": 0})

            async def dropped() -> bool:
                return await redis.zscore(settings.queue_name, "no-such-job.1") is None

            await until(dropped, what="the orphan entry to be dropped")
            assert worker.jobs_failed == 1  # arq's "job expired"
            assert not await redis.exists(in_progress_key_prefix + "no-such-job.1", retry_key_prefix + "no-such-job.1")
    finally:
        await redis.aclose()


async def test_a_cancel_that_comes_with_a_wake_up_still_stops_the_worker(settings: Settings) -> None:
    """Stopping a worker cancels its main task; if a wake-up lands in the same turn of the loop, the cancel must not
    be lost (asyncio.wait_for on Python 3.11 returns normally then, and the worker polled on: a teardown hung)."""
    from service.worker import build_worker

    assert settings.redis_url
    slow = dataclasses.replace(settings, poll_delay=60.0)
    worker = build_worker(slow, redis_url=settings.redis_url, handle_signals=False)
    idle = asyncio.Event()
    wait_idle = worker._idle  # type: ignore[attr-defined]

    async def idling(seconds: float) -> None:
        idle.set()
        await wait_idle(seconds)

    worker._idle = idling  # type: ignore[attr-defined]
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(idle.wait(), 10)  # in its wait for a wake-up (or the next poll, a minute away)
        await asyncio.sleep(0.05)
        worker._wake.set()  # type: ignore[attr-defined]
        task.cancel()  # in the same turn of the loop
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "the cancel was lost: the worker polls on"
        assert task.cancelled()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()
