"""Start latency on an idle worker: how long until the task function runs, and until the browser hears it.

aijobs, at the queue: enqueue (JobQueue, in-process, store row already written) → the task function starts.
aijobs, end to end: POST /api/jobs → the function starts, and → the first worker event (status processing)
reaches an SSE client that opened the job's stream right after the 202, as a page would.
Baselines: arq enqueue_job → start at its default 0.5 s poll and at a 10 ms poll; SAQ enqueue → start.
Before each job the bench waits a random part of the worker's poll interval, so a polling worker is met at a
random point of its sleep, as real traffic would.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from typing import Any

import httpx

from service.config import Settings

from .harness import Bench, Stat, percentile
from .report import Row
from .tasks import MARK_LIST_PREFIX

SETTLE = 0.005  # let the previous job's bookkeeping finish: the worker is idle when the next job arrives


async def wait_mark(redis: Any, tag: str, timeout: float = 10.0) -> float:
    got = await redis.blpop([MARK_LIST_PREFIX + tag], timeout=timeout)
    if got is None:
        raise TimeoutError(f"no start mark for {tag} within {timeout} s")
    return float(got[1])


async def sse_until_started(client: httpx.AsyncClient, job_id: str) -> tuple[float, float]:
    """(when the first event saying 'processing or later' arrived, when the function started)."""
    seen: float | None = None
    event = ""
    async with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                status = data["job"]["status"] if event == "snapshot" else data.get("status")
                if status and status != "queued" and seen is None:
                    seen = time.time()
                if status == "completed":
                    result = data["job"]["result"] if event == "snapshot" else data["result"]
                    assert seen is not None
                    return seen, float(result["started"])
                if status in {"failed", "cancelled", "expired"}:
                    raise RuntimeError(f"mark job {job_id} ended {status}: {data}")
    raise RuntimeError(f"SSE for {job_id} closed before the job completed")


class Systems:
    """Connections to each system, open for the whole figure."""

    def __init__(self, bench: Bench, queues: dict[str, str]) -> None:
        self.bench = bench
        self.queues = queues

    async def __aenter__(self) -> Systems:
        from arq.connections import RedisSettings, create_pool
        from redis.asyncio import Redis
        from saq import Queue

        from service.events import EventLog
        from service.queue import JobQueue, json_deserializer, json_serializer
        from service.store import open_store

        url = self.bench.redis_url
        self.marks = Redis.from_url(url)
        self.arq = await create_pool(RedisSettings.from_dsn(url))
        self.aijobs_pool = await create_pool(
            RedisSettings.from_dsn(url), job_serializer=json_serializer, job_deserializer=json_deserializer
        )
        self.aijobs_queue = JobQueue(self.aijobs_pool, queue_name=self.bench.queue)
        self.events = EventLog(self.aijobs_pool)
        self.store = open_store(Settings(database_url=f"sqlite:///{self.bench.db_path}"))
        await self.store.open()
        self.saq = Queue.from_url(url, name=self.queues["saq"])
        await self.saq.connect()
        self.http = httpx.AsyncClient(base_url=self.bench.servers.aijobs.url, timeout=10, headers=self.bench.auth)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.saq.disconnect()
        await self.store.close()
        await self.aijobs_pool.aclose()
        await self.arq.aclose()
        await self.marks.aclose()

    async def aijobs_at_queue(self) -> float:
        from service.models import Job

        tag = uuid.uuid4().hex
        job = Job(id=str(uuid.uuid4()), user_id="bench", type="mark", input={"tag": tag}, max_attempts=1)
        await self.store.create(job)
        t0 = time.time()
        await self.aijobs_queue.enqueue(job.id, ticket=job.seq, priority=job.priority)
        return await wait_mark(self.marks, tag) - t0

    async def aijobs_http(self) -> tuple[float, float, float]:
        t0 = time.time()
        r = await self.http.post("/api/jobs", json={"type": "mark", "input": {}})
        accepted = time.time()
        r.raise_for_status()
        seen, started = await sse_until_started(self.http, r.json()["job_id"])
        return started - t0, seen - t0, accepted - t0

    async def arq_start(self, queue: str) -> float:
        tag = uuid.uuid4().hex
        t0 = time.time()
        await self.arq.enqueue_job("mark", tag, _queue_name=queue)
        return await wait_mark(self.marks, tag) - t0

    async def saq_start(self) -> float:
        tag = uuid.uuid4().hex
        t0 = time.time()
        await self.saq.enqueue("mark", tag=tag)
        return await wait_mark(self.marks, tag) - t0


def run(bench: Bench) -> list[Row]:
    aijobs_poll = Settings().poll_delay
    queues = {
        "arq-default": bench.fresh_queue("arq05"),
        "arq-10ms": bench.fresh_queue("arq10"),
        "saq": bench.fresh_queue("saq"),
    }
    _ = bench.servers.aijobs  # the web process, on bench.queue
    _ = bench.auth  # made with asyncio.run: not from inside _measure's loop (when no figure before made it)
    workers = [
        bench.worker("aijobs", bench.queue, burst=False, poll=aijobs_poll),
        bench.worker("arq", queues["arq-default"], burst=False, poll=0.5),
        bench.worker("arq", queues["arq-10ms"], burst=False, poll=0.01),
        bench.worker("saq", queues["saq"], burst=False, max_jobs=10),
    ]
    for w in workers:
        w.wait_ready()
    try:
        samples = asyncio.run(_measure(bench, queues, aijobs_poll))
    finally:
        for w in workers:
            w.stop()
        bench.flush()
    return rows(samples)


async def _measure(bench: Bench, queues: dict[str, str], aijobs_poll: float) -> dict[str, list[list[float]]]:
    sizes = bench.sizes
    rounds = sizes.rounds
    per_round = max(1, sizes.latency_jobs // rounds)
    slow_per_round = max(1, sizes.latency_jobs_slow_poll // rounds)
    keys = ["aijobs queue", "aijobs POST→202", "aijobs POST→start", "aijobs POST→SSE", "arq-default", "arq-10ms", "saq"]
    samples: dict[str, list[list[float]]] = {k: [] for k in keys}
    async with Systems(bench, queues) as s:

        async def idle(poll: float) -> None:
            await asyncio.sleep(SETTLE + random.uniform(0, poll))

        async def aijobs_queue_round() -> None:
            out = []
            for _ in range(per_round):
                await idle(aijobs_poll)
                out.append(await s.aijobs_at_queue())
            samples["aijobs queue"].append(out)

        async def aijobs_http_round() -> None:
            start, sse, accepted = [], [], []
            for _ in range(per_round):
                await idle(aijobs_poll)
                a, b, c = await s.aijobs_http()
                start.append(a)
                sse.append(b)
                accepted.append(c)
            samples["aijobs POST→202"].append(accepted)
            samples["aijobs POST→start"].append(start)
            samples["aijobs POST→SSE"].append(sse)

        async def arq_round(key: str, poll: float, count: int) -> None:
            out = []
            for _ in range(count):
                await idle(poll)
                out.append(await s.arq_start(queues[key]))
            samples[key].append(out)

        async def saq_round() -> None:
            out = []
            for _ in range(per_round):
                await idle(0.01)
                out.append(await s.saq_start())
            samples["saq"].append(out)

        steps = [
            aijobs_queue_round,
            lambda: arq_round("arq-10ms", 0.01, per_round),
            aijobs_http_round,
            saq_round,
            lambda: arq_round("arq-default", 0.5, slow_per_round),
        ]
        await s.http.get("/healthz")
        for r in range(rounds):
            order = steps[r % len(steps) :] + steps[: r % len(steps)]
            for step in order:
                await step()
            bench.log(
                f"latency round {r + 1}: "
                + ", ".join(f"{k} p50 {percentile(v[-1], 50) * 1000:.1f} ms" for k, v in samples.items() if v)
            )
    return samples


def _stat(rounds: list[list[float]], q: float) -> Stat:
    """Percentile over all samples as the median; the per-round percentiles give the min-max."""
    pooled = [x * 1000 for r in rounds for x in r]
    per_round = [percentile([x * 1000 for x in r], q) for r in rounds]
    stat = Stat.of(per_round)
    stat.median = percentile(pooled, q)
    return stat


def rows(samples: dict[str, list[list[float]]]) -> list[Row]:
    arq_base = {
        "arq, 10 ms poll": samples["arq-10ms"],
        "arq, default 0.5 s poll": samples["arq-default"],
        "SAQ": samples["saq"],
    }
    out = []
    for q in (50, 99):
        base = {k: _stat(v, q) for k, v in arq_base.items()}
        out.append(
            Row(
                "start latency",
                f"enqueue → start p{q} ms",
                _stat(samples["aijobs queue"], q),
                base,
                False,
                "p50 ≤ 2 ms" if q == 50 else "",
            )
        )
        out.append(Row("start latency", f"POST → 202 p{q} ms", _stat(samples["aijobs POST→202"], q), {}, False))
        out.append(Row("start latency", f"POST → start p{q} ms", _stat(samples["aijobs POST→start"], q), {}, False))
        out.append(
            Row(
                "start latency",
                f"POST → first SSE event p{q} ms",
                _stat(samples["aijobs POST→SSE"], q),
                {},
                False,
                "p50 ≤ 20 ms" if q == 50 else "",
            )
        )
    return out
