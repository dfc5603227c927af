"""Many workers sweeping (issue 16, point 7): one sweep per interval across all of them, and even two passes at
once (the turn's key lost, Redis down) take each lapsed lease over once and enqueue each job once.

Runs on the suite's store (SQLite, or PostgreSQL with AIJOBS_TEST_STORE=postgres) and its real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from arq.connections import RedisSettings, create_pool

from service.config import Settings
from service.events import EventLog
from service.lifecycle import Maintenance
from service.models import Job, JobStatus, now
from service.queue import JobQueue
from service.store import JobStore, open_store

Sweepers = Callable[[str], Maintenance]


@pytest.fixture
async def sweepers(settings: Settings) -> AsyncIterator[tuple[JobStore, Sweepers]]:
    """The store, and a Maintenance per named worker on it and on one Redis (as workers on different hosts)."""
    s = replace(settings, sweep_seconds=30)
    assert s.redis_url
    redis = await create_pool(RedisSettings.from_dsn(s.redis_url))
    store = open_store(s)
    await store.open()

    def make(worker_id: str) -> Maintenance:
        queue = JobQueue(redis, queue_name=s.queue_name)
        return Maintenance(store=store, queue=queue, events=EventLog(redis), settings=s, worker_id=worker_id)

    try:
        yield store, make
    finally:
        await store.close()
        await redis.aclose()


async def lapsed_and_lost(store: JobStore, n: int) -> tuple[list[str], list[str]]:
    """n jobs whose worker died (lease lapsed) and n queued jobs Redis never got (the reconciler's)."""
    lapsed, lost = [], []
    run = uuid.uuid4().hex[:8]  # arq's job keys are not per queue: ids of their own, as real (uuid) job ids are
    for i in range(n):
        job = await store.create(Job(id=f"lapsed{i}-{run}", user_id="u", type="summary", input={}, max_attempts=3))
        assert await store.claim(job.id, worker_id="dead", token=f"t{i}", ticket=job.seq, lease_seconds=0.01)
        lapsed.append(job.id)
        old = Job(id=f"lost{i}-{run}", user_id="u", type="summary", input={})
        old.created_at = old.updated_at = old.ready_at = now() - 60  # past the reconciler's grace
        old.expires_at = now() + 600
        await store.create(old)
        lost.append(old.id)
    await asyncio.sleep(0.05)
    return lapsed, lost


async def on_queue(m: Maintenance, job_id: str) -> list[str]:
    members = await m.queue.redis.zrange(m.settings.queue_name, 0, -1)
    return [x.decode() for x in members if x.decode().rpartition(".")[0] == job_id]


async def test_two_workers_sweeping_at_once_enqueue_each_job_once(sweepers: tuple[JobStore, Sweepers]) -> None:
    """No turn taken (as when Redis lost the key): both passes run in full, side by side."""
    store, make = sweepers
    a, b = make("host-a:1"), make("host-b:1")
    lapsed, lost = await lapsed_and_lost(store, 8)
    await asyncio.gather(a.tick(), b.tick(), a.tick(), b.tick())
    for job_id in [*lapsed, *lost]:
        job = await store.get(job_id)
        assert job is not None and job.status is JobStatus.QUEUED, job
        assert await on_queue(a, job_id) == [f"{job_id}.{job.seq}"]  # once, with the ticket the store holds
    for job_id in lapsed:
        job = await store.get(job_id)
        assert job is not None
        assert [h["error"] for h in job.history or []] == ["worker_lost"], job.history  # taken over once


async def test_one_sweep_per_interval_across_workers(sweepers: tuple[JobStore, Sweepers]) -> None:
    store, make = sweepers
    workers = [make(f"host-{i}:1") for i in range(4)]
    lapsed, lost = await lapsed_and_lost(store, 3)
    swept = await asyncio.gather(*(w.sweep_if_my_turn() for w in workers))
    assert sorted(swept) == [False, False, False, True]
    assert not any(await asyncio.gather(*(w.sweep_if_my_turn() for w in workers)))  # the same interval: nobody
    for job_id in [*lapsed, *lost]:
        assert len(await on_queue(workers[0], job_id)) == 1


class FailingPass(Maintenance):
    async def tick(self) -> None:
        raise RuntimeError("the store went away mid-pass")


async def test_a_failed_pass_gives_the_turn_back(sweepers: tuple[JobStore, Sweepers]) -> None:
    store, make = sweepers
    good = make("host-b:1")
    broken = FailingPass(store=good.store, queue=good.queue, events=good.events, settings=good.settings, worker_id="a")
    with pytest.raises(RuntimeError):
        await broken.sweep_if_my_turn()
    assert await good.sweep_if_my_turn()  # not locked out for the interval by a worker that could not sweep


async def test_a_finished_job_whose_end_event_was_lost_is_announced_once(
    sweepers: tuple[JobStore, Sweepers],
) -> None:
    """A worker that died between the store's terminal write and the publish (the end event is queued, not awaited)
    left the job `completed` with no end in its Stream: the next pass announces it from the store, once; a job
    whose end did reach the Stream is left alone."""
    store, make = sweepers
    m = make("w1")
    run = uuid.uuid4().hex[:8]
    lost, told = f"lost-end-{run}", f"told-end-{run}"
    for job_id in (lost, told):
        await store.create(Job(id=job_id, user_id="u", type="summary", input={}))
        claimed = await store.claim(job_id, worker_id="w", token="t", ticket=1)
        assert claimed is not None
        await m.events.announce(claimed)  # `processing` reached the Stream for both
    lost_done = await store.finish(lost, "t", status=JobStatus.COMPLETED, result={"ok": 1})
    told_done = await store.finish(told, "t", status=JobStatus.COMPLETED, result={"ok": 2})
    assert lost_done is not None and told_done is not None
    await m.events.announce(told_done)  # only this one's end was published
    assert await m.events.newest_seqs([lost, told]) == [lost_done.seq - 1, told_done.seq]

    assert await m.reannounce() == 0, "within the grace the worker's queued event may still be on its way"
    later = now() + 6  # past REANNOUNCE_GRACE
    assert await m.reannounce(at=later) == 1
    assert await m.events.newest_seqs([lost, told]) == [lost_done.seq, told_done.seq]
    (end,) = await m.events.read_after(lost, lost_done.seq - 1)
    assert end.terminal and end.data["status"] == "completed"
    assert await m.reannounce(at=later) == 0, "told once"
