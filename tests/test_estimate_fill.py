"""The queue estimate's greedy fill, in O(slots): the same answers as a heap step per job ahead."""

from __future__ import annotations

import heapq
import random

from service.estimates import _fill


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
