"""Enqueue wakes an idle worker (service/arq_worker.py) instead of leaving the job until its next poll."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import httpx
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from service.arq_worker import _TAKE_LUA
from service.config import Settings
from service.queue import JobQueue, wake_channel

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


async def test_enqueueing_the_same_attempt_twice_is_refused(settings: Settings, arq_redis: ArqRedis) -> None:
    queue = JobQueue(arq_redis, queue_name=settings.queue_name)
    assert await queue.enqueue("job-1", ticket=0, priority=5) is True
    assert await queue.enqueue("job-1", ticket=0, priority=5) is False
    assert await queue.enqueue("job-1", ticket=1, priority=5) is True
    assert await queue.depth() == 2
    assert await queue.holds("job-1", 0)


async def test_a_job_not_run_inline_goes_through_arqs_run_job_with_its_try_counted_once(
    settings: Settings, arq_redis: ArqRedis
) -> None:
    """The take script counts every job's try; a cron job (max_tries 1) that arq's run_job runs must not see 2."""
    async with run_worker(settings) as worker:
        await arq_redis.enqueue_job("aijobs:cleanup", _job_id="cron-by-hand", _queue_name=settings.queue_name)

        async def gone() -> bool:
            return not await arq_redis.exists(job_key_prefix + "cron-by-hand")

        await until(gone, what="the cron job to finish")
        assert worker.jobs_complete >= 1
        assert worker.jobs_failed == 0  # a try counted twice would be "max 1 retries exceeded"
        assert await arq_redis.zscore(settings.queue_name, "cron-by-hand") is None


async def test_a_queue_entry_whose_job_data_is_gone_is_dropped(settings: Settings, arq_redis: ArqRedis) -> None:
    async with run_worker(settings) as worker:
        await arq_redis.zadd(settings.queue_name, {"no-such-job.1": 0})

        async def dropped() -> bool:
            return await arq_redis.zscore(settings.queue_name, "no-such-job.1") is None

        await until(dropped, what="the orphan entry to be dropped")
        assert worker.jobs_failed == 1  # arq's "job expired"
        assert not await arq_redis.exists(in_progress_key_prefix + "no-such-job.1", retry_key_prefix + "no-such-job.1")


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


async def _blocked_waiters(redis: Redis) -> list[dict[str, Any]]:
    return [c for c in await redis.client_list() if c.get("cmd") == "blpop"]


async def test_an_idle_worker_waits_in_redis_and_the_take_behind_the_wait_starts_the_job(
    settings: Settings, arq_redis: ArqRedis
) -> None:
    """Idle, the worker blocks on the wake list with its take queued behind; one enqueue's token starts the job
    (a minute's poll delay: only the token can), and no token is left over."""
    slow = dataclasses.replace(settings, poll_delay=60.0)
    async with run_worker(slow) as worker:

        async def waiting() -> bool:
            return len(await _blocked_waiters(arq_redis)) == 1

        await until(waiting, what="the worker to wait on its wake list")
        queue = JobQueue(arq_redis, queue_name=settings.queue_name)
        assert await queue.enqueue("no-such-job", ticket=3, priority=5)  # not in the store: the claim skips it

        async def finished() -> bool:
            return await arq_redis.zscore(settings.queue_name, "no-such-job.3") is None

        await until(finished, what="the woken worker to take and finish the job")
        assert worker.jobs_complete == 1
        assert await arq_redis.llen(wake_channel(settings.queue_name)) == 0  # the worker's pop took the token
        await until(waiting, what="the worker to wait again")


async def test_a_job_enqueued_without_a_token_is_taken_when_the_wait_times_out(
    settings: Settings, arq_redis: ArqRedis
) -> None:
    """A lost wake-up (arq's own enqueue pushes none; a Redis restart drops one) costs at most a poll delay:
    the take behind the wait runs when the BLPOP times out."""
    quick = dataclasses.replace(settings, poll_delay=0.2)
    async with run_worker(quick) as worker:
        await until(lambda: _one_waiter(arq_redis), what="the worker to wait on its wake list")
        await arq_redis.enqueue_job("aijobs:cleanup", _job_id="no-token", _queue_name=settings.queue_name)
        assert await arq_redis.llen(wake_channel(settings.queue_name)) == 0
        await until(lambda: _gone(arq_redis, "no-token"), 5, "the job to be found by the timed-out wait's take")
        assert worker.jobs_complete >= 1


async def _gone(redis: Redis, job_id: str) -> bool:
    """arq dropped the job's key: it ran and finished."""
    return not await redis.exists(job_key_prefix + job_id)


async def _one_waiter(redis: Redis) -> bool:
    return len(await _blocked_waiters(redis)) == 1


async def test_a_killed_wait_connection_is_replaced_and_jobs_still_start(
    settings: Settings, arq_redis: ArqRedis
) -> None:
    """Redis drops the waiting connection: the worker counts the error, polls on its timer meanwhile, then waits
    in Redis again on a new connection; a job enqueued meanwhile still starts."""
    quick = dataclasses.replace(settings, poll_delay=0.2)
    async with run_worker(quick) as worker:
        await until(lambda: _one_waiter(arq_redis), what="the worker to wait on its wake list")
        (waiter,) = await _blocked_waiters(arq_redis)
        await arq_redis.client_kill_filter(_id=waiter["id"])
        await arq_redis.enqueue_job("aijobs:cleanup", _job_id="after-kill", _queue_name=settings.queue_name)
        await until(lambda: _gone(arq_redis, "after-kill"), 5, "the job to start with the wait connection gone")
        assert worker.jobs_complete >= 1

        async def new_waiter() -> bool:
            waiters = await _blocked_waiters(arq_redis)
            return len(waiters) == 1 and waiters[0]["id"] != waiter["id"]

        await until(new_waiter, 5, "a new wait connection")


async def test_the_take_behind_a_wait_is_due_by_redis_time_but_never_past_the_wait(settings: Settings) -> None:
    """The take's `now` was read before the wait: it moves on by Redis's clock, bounded by the wait's length, so
    a deferred job is neither missed for a whole extra poll nor taken early; due jobs left without a slot put a
    token back for another worker."""
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    queue, wake = "take-lua-test", wake_channel("take-lua-test")
    try:
        await redis.delete(queue, wake)
        seconds, _ = await redis.time()
        now = seconds * 1000
        await redis.zadd(queue, {"due": now - 10_000, "soon": now - 2_000, "later": now + 60_000, "also": now - 20})
        take = redis.register_script(_TAKE_LUA)
        prefixes = [in_progress_key_prefix + "t:", job_key_prefix + "t:", retry_key_prefix + "t:"]
        # read 5 s ago, waited at most 1 s: due by then are only the jobs due 4 s ago
        taken, rest = await take(keys=[queue, wake], args=[now - 5_000, 1000, *prefixes, 10, 100, 1_000])
        assert [taken[i] for i in range(0, len(taken), 4)] == [b"due"]
        assert rest == [] and await redis.llen(wake) == 0
        # read now, may have waited 2 minutes: Redis's clock says `later` is not due yet; one slot for two due jobs
        taken, rest = await take(keys=[queue, wake], args=[now, 1000, *prefixes, 1, 100, 120_000])
        assert [taken[i] for i in range(0, len(taken), 4)] == [b"soon"]
        assert rest == [b"also"]
        assert await redis.llen(wake) == 1  # a token for another idle worker
    finally:
        await redis.delete(queue, wake, *(await redis.keys("arq:*t:*")))
        await redis.aclose()
