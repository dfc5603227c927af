"""The queue estimate's greedy fill, in O(slots): the same answers as a heap step per job ahead."""

from __future__ import annotations

import asyncio
import heapq
import random

from service.estimates import QueueEstimator, _fill
from service.models import Job, JobStatus, now
from service.tasks import TaskRegistry


def _stepped(free_in: list[float], ahead: int, typical: float) -> float:
    slots = list(free_in)
    heapq.heapify(slots)
    for _ in range(ahead):
        heapq.heappush(slots, heapq.heappop(slots) + typical)
    return slots[0]


def test_fill_matches_a_heap_step_per_job() -> None:
    rng = random.Random(17)
    for _ in range(3000):
        typical = rng.choice([0.01, 1.0, 4.0, rng.uniform(0.001, 5.0)])
        # idle slots, slots within a run of free, and slots far behind (a long job of another type)
        free_in = [rng.choice([0.0, rng.uniform(0, 1), rng.uniform(0, 100)]) for _ in range(rng.randint(1, 8))]
        ahead = rng.randint(0, 300)
        assert abs(_fill(free_in, ahead, typical) - _stepped(free_in, ahead, typical)) < 1e-6 * (1 + ahead * typical)


def test_fill_of_many_jobs_on_idle_slots() -> None:
    assert _fill([0.0] * 50, 10_000, 2.0) == 400.0  # 200 full rounds of 50 slots, 2 s each
    assert _fill([0.0, 0.0], 3, 1.0) == 1.0
    assert _fill([], 5, 1.0) == 0.0


class _Running:
    """The two reads free_slots makes of a store: the running jobs, and each type's recent run times."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.duration_reads: list[str] = []
        self.running_reads = 0

    async def running(self) -> list[Job]:
        self.running_reads += 1
        await asyncio.sleep(0)  # a read takes a while: other requests find the cache stale meanwhile
        return self.jobs

    async def recent_durations(self, job_type: str) -> list[float]:
        self.duration_reads.append(job_type)
        await asyncio.sleep(0)
        return {"slow": [10.0, 30.0], "quick": [2.0]}[job_type]


async def test_free_slots_of_running_jobs_of_two_types() -> None:
    t = now()
    jobs = [
        Job(id=f"j{i}", user_id="u", type=kind, input={}, status=JobStatus.PROCESSING, started_at=t - ago)
        for i, (kind, ago) in enumerate([("slow", 5.0), ("quick", 1.0), ("slow", 25.0), ("quick", 3.0)])
    ]
    store = _Running(jobs)
    estimator = QueueEstimator(store, None)  # type: ignore[arg-type]  # capacity is noted, never read from Redis
    estimator.note_capacity(6)
    capacity, free_in = await estimator.free_slots(TaskRegistry())
    assert capacity == 6
    # slow: 20 s on average (15 s and 0 s left), quick: 2 s (1 s and 0 s left), sorted, then the two idle slots
    assert [round(x, 1) for x in free_in] == [0.0, 0.0, 1.0, 15.0, 0.0, 0.0]
    assert sorted(store.duration_reads) == ["quick", "slow"]  # each type's average read once
    estimator.note_capacity(2)
    assert [round(x, 1) for x in (await estimator.free_slots(TaskRegistry()))[1]] == [0.0, 0.0]  # the soonest two


async def test_requests_that_find_the_cache_stale_together_share_one_read() -> None:
    store = _Running([Job(id="j", user_id="u", type="slow", input={}, status=JobStatus.PROCESSING, started_at=now())])
    estimator = QueueEstimator(store, None, cache_seconds=60)  # type: ignore[arg-type]
    estimator.note_capacity(2)
    answers = await asyncio.gather(*(estimator.free_slots(TaskRegistry()) for _ in range(20)))
    assert store.running_reads == 1 and store.duration_reads == ["slow"]
    assert all(capacity == 2 and 19 < free_in[0] <= 20 and free_in[1] == 0.0 for capacity, free_in in answers)
    await estimator.free_slots(TaskRegistry())  # fresh: no read at all
    assert store.running_reads == 1
    estimator._running, estimator._durations = None, {}  # as if both expired: read again
    await estimator.free_slots(TaskRegistry())
    assert store.running_reads == 2 and store.duration_reads == ["slow", "slow"]
