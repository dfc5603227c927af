"""GET /api/stats: the queue as a whole (seed 002's shape, in snake_case), live workers, and the caller's totals."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..coordination import live_workers
from ..models import JobStatus
from ..store.queries import HistoryFilter, TypeTiming
from .accounts import accounts
from .auth import current_user
from .history import usage_totals
from .state import app_state


def _weighted(timings: list[TypeTiming], attr: str, weight: str) -> float | None:
    pairs = [(getattr(t, attr), getattr(t, weight)) for t in timings if getattr(t, attr) is not None]
    total = sum(w for _, w in pairs)
    return round(sum(v * w for v, w in pairs) / total, 3) if total else None


def estimate_wait(queued: int, processing: int, capacity: int, avg_run: float) -> float | None:
    """Seconds a job submitted now would wait: free slots take it at once, otherwise it waits whole rounds."""
    if capacity <= 0:
        return None
    free = capacity - processing
    if queued < free:
        return 0.0
    return round(((queued - max(free, 0)) // capacity + 1) * avg_run, 1)


async def stats(request: Request) -> Response:
    state = app_state(request)
    acc = accounts(request)
    user_id = current_user(request)
    counts = await acc.queries.counts_by_status()
    window = acc.settings.stats_window_seconds
    timings = await acc.queries.timings(time.time() - window)
    workers = await live_workers(state.redis, acc.settings.queue_name)
    capacity = sum(int(w.get("concurrency", 0)) for w in workers)
    avg_run = _weighted(timings, "avg_run", "finished")
    if avg_run is None:
        specs = list(state.jobs.registry)
        avg_run = sum(s.typical_seconds for s in specs) / len(specs) if specs else 5.0
    mine = await acc.queries.counts_by_status(user_id)
    body: dict[str, Any] = {f"total_{s.value}": counts.get(s.value, 0) for s in JobStatus}
    body.update(
        average_wait_time=_weighted(timings, "avg_wait", "started"),
        average_run_time=_weighted(timings, "avg_run", "finished"),
        estimated_wait_time=estimate_wait(counts.get("queued", 0), counts.get("processing", 0), capacity, avg_run),
        window_seconds=window,
        by_type=[
            {
                "type": t.type,
                "started": t.started,
                "completed": t.finished,
                "average_wait_time": None if t.avg_wait is None else round(t.avg_wait, 3),
                "average_run_time": None if t.avg_run is None else round(t.avg_run, 3),
            }
            for t in timings
        ],
        workers={"live": len(workers), "capacity": capacity},
        user={
            "by_status": {s.value: mine.get(s.value, 0) for s in JobStatus},
            "active": mine.get("queued", 0) + mine.get("processing", 0),
            **await usage_totals(acc, HistoryFilter(user_id=user_id)),
        },
    )
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
