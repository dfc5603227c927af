"""The cleanup cron runs once a minute across all workers (issue 16, point 7): arq's unique cron gives every
worker the same job id for a minute; a worker that enqueues it late, after the first run ended, must not start it
again."""

from __future__ import annotations

import time

from arq.connections import ArqRedis

from service.config import Settings
from service.worker import CLEANUP_CRON, build_worker


async def test_a_late_enqueue_of_the_minutes_cleanup_is_a_no_op(settings: Settings, arq_redis: ArqRedis) -> None:
    assert settings.redis_url
    minute_id = f"{CLEANUP_CRON}:{int(time.time() // 60 * 60_000)}"  # as arq names a unique cron's run
    first = await arq_redis.enqueue_job(CLEANUP_CRON, _job_id=minute_id, _queue_name=settings.queue_name)
    assert first is not None
    worker = build_worker(settings, redis_url=settings.redis_url, burst=True, handle_signals=False)
    await worker.async_run()  # the first worker runs it, to the end
    assert worker.jobs_complete == 1
    late = await arq_redis.enqueue_job(CLEANUP_CRON, _job_id=minute_id, _queue_name=settings.queue_name)
    assert late is None  # the second worker's enqueue of the same minute: nothing to run
    await worker.close()
