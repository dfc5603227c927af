"""Worker processes for the bench, one per run: aijobs (build_worker), bare arq, SAQ, Procrastinate, PgQueuer.

    python -m bench.workers KIND --queue Q [--burst] [--max-jobs N] [--poll S] [--sim-delay S] [--batch N]
        [--count-writes]

Procrastinate and PgQueuer read their database from BENCH_PG_URL and run only no-op jobs (the drain baselines);
their pool is POOL_SIZE connections, the size of an aijobs process's own (DATABASE_POOL_SIZE's default).

Each prints one JSON line when it stops: the first job start and the last job end it saw (wall clock),
and how many jobs ended, so the bench measures every queue the same way, from inside the worker.
With --burst the worker exits once its queue is empty; without it, it runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from .tasks import report_start


class Clock:
    """First start and last end of any job in this process."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.ended = 0
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.writes: dict[str, int] | None = None  # --count-writes: the worker's store writes by method

    async def started(self, *_: Any) -> None:
        if self.first is None:
            self.first = time.time()
            self.cpu_first = time.process_time()

    async def ended_one(self, *_: Any) -> None:
        self.last = time.time()
        self.cpu_last = time.process_time()
        self.ended += 1

    def report(self) -> None:
        cpu = self.cpu_last - self.cpu_first  # every thread of this process, while jobs ran
        report: dict[str, Any] = {"first": self.first, "last": self.last, "ended": self.ended, "cpu": cpu}
        if self.writes is not None:
            report["writes"] = dict(self.writes)
        print(json.dumps(report), flush=True)


def ready() -> None:
    print(json.dumps({"ready": time.time()}), flush=True)


async def run_aijobs(args: argparse.Namespace, clock: Clock) -> None:
    from service.config import Settings
    from service.providers.simulated import SimulatedProvider
    from service.worker import build_worker, tune_gc

    from .tasks import bench_registry

    settings = Settings.from_env(worker_concurrency=args.max_jobs, poll_delay=args.poll, queue_name=args.queue)
    assert settings.redis_url
    if args.count_writes:
        import collections

        import service.worker

        from .store_writes import CountingStore

        counts: collections.Counter[str] = collections.Counter()
        clock.writes = counts  # type: ignore[assignment]
        real_open = service.worker.open_store
        service.worker.open_store = lambda s: CountingStore(real_open(s), counts)  # type: ignore[assignment]
    worker = build_worker(
        settings,
        redis_url=settings.redis_url,
        registry=bench_registry(),
        provider=SimulatedProvider(delay=args.sim_delay),
        burst=args.burst,
        handle_signals=False,
    )
    worker.on_job_start = clock.started
    worker.after_job_end = clock.ended_one
    original_startup = worker.on_startup

    async def startup(ctx: dict[str, Any]) -> None:
        assert original_startup is not None
        await original_startup(ctx)
        ready()

    worker.on_startup = startup
    tune_gc()  # as `aijobs worker` does
    await _run_arq(worker)


async def run_arq(args: argparse.Namespace, clock: Clock) -> None:
    from arq import Worker, func
    from arq.connections import RedisSettings

    from service.providers.base import ChatMessage
    from service.providers.simulated import SimulatedProvider
    from service.tasks.titles import parse_titles

    async def noop(ctx: dict[str, Any]) -> None:
        return None

    async def mark(ctx: dict[str, Any], tag: str) -> None:
        await report_start(tag, time.time())

    async def ai_call(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(args.sim_delay)

    provider = SimulatedProvider(delay=args.sim_delay)

    async def titles(ctx: dict[str, Any], data: dict[str, Any]) -> dict[str, list[str]]:
        """The e2e figure's instant job: the titles task's own work (the simulated call, the parse) without aijobs."""
        count = int(data.get("count", 5))
        system = f"Reply with exactly {count} titles, one per line, numbered. FORMAT:titles:{count}"
        messages: list[ChatMessage] = [{"role": "system", "content": system}, {"role": "user", "content": data["text"]}]
        reply = await provider.chat(messages)
        return {"titles": parse_titles(reply.text, count)}

    async def startup(ctx: dict[str, Any]) -> None:
        ready()

    worker = Worker(
        functions=[
            func(noop, name="noop"),
            func(mark, name="mark"),
            func(ai_call, name="ai_call"),
            func(titles, name="titles"),
        ],
        queue_name=args.queue,
        redis_settings=RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"]),
        max_jobs=args.max_jobs,
        poll_delay=args.poll,
        burst=args.burst,
        handle_signals=False,
        on_startup=startup,
        on_job_start=clock.started,
        after_job_end=clock.ended_one,
        keep_result=0,
    )
    await _run_arq(worker)


async def _run_arq(worker: Any) -> None:
    task = asyncio.create_task(worker.async_run())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
    waiter.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await worker.close()


async def run_saq(args: argparse.Namespace, clock: Clock) -> None:
    from saq import Queue, Worker

    async def noop(ctx: dict[str, Any]) -> None:
        return None

    async def mark(ctx: dict[str, Any], *, tag: str) -> None:
        await report_start(tag, time.time())

    async def ai_call(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(args.sim_delay)

    async def before(ctx: dict[str, Any]) -> None:
        await clock.started()

    async def after(ctx: dict[str, Any]) -> None:
        await clock.ended_one()

    async def startup(ctx: dict[str, Any]) -> None:
        ready()

    queue = Queue.from_url(os.environ["BENCH_REDIS_URL"], name=args.queue)
    await queue.connect()
    worker = Worker(
        queue,
        functions=[("noop", noop), ("mark", mark), ("ai_call", ai_call)],
        concurrency=args.max_jobs,
        startup=startup,
        before_process=before,
        after_process=after,
        burst=args.burst,
        # burst: SAQ stops at the first dequeue that times out empty; on a loaded machine a 0.5 s one ended a burst
        # with jobs still queued (the figure is timed first start to last end, so the final wait is not counted)
        dequeue_timeout=2.0 if args.burst else 0.0,
    )
    worker.SIGNALS = [signal.SIGTERM]
    await worker.start()
    await queue.disconnect()


POOL_SIZE = 10


async def run_procrastinate(args: argparse.Namespace, clock: Clock) -> None:
    """Procrastinate's worker at `--max-jobs` concurrency; with --burst, `wait=False` (exit once none is left)."""
    import logging

    from procrastinate import App, PsycopgConnector

    # It warns that an App made in __main__ cannot be found by import path: this one runs its own task in-process.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_PG_URL"], min_size=2, max_size=POOL_SIZE))

    @app.task(name="noop", queue=args.queue)
    async def noop() -> None:
        await clock.started()
        await clock.ended_one()

    async with app.open_async():
        ready()
        await app.run_worker_async(
            queues=[args.queue],
            concurrency=args.max_jobs,
            wait=not args.burst,
            fetch_job_polling_interval=args.poll or 5.0,
            install_signal_handlers=False,
        )


async def run_pgqueuer(args: argparse.Namespace, clock: Clock) -> None:
    """PgQueuer's QueueManager on asyncpg (its fastest driver, statement cache on), dequeuing `--batch` jobs a
    statement; with --burst, drain mode (exit once the queue is empty)."""
    from datetime import timedelta

    import asyncpg
    from pgqueuer import AsyncpgPoolDriver, Job, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    pool = await asyncpg.create_pool(os.environ["BENCH_PG_URL"], min_size=2, max_size=POOL_SIZE)
    qm = QueueManager(Queries(AsyncpgPoolDriver(pool)))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        await clock.started()
        await clock.ended_one()

    ready()
    try:
        await qm.run(
            batch_size=args.batch,
            mode=QueueExecutionMode.drain if args.burst else QueueExecutionMode.continuous,
            dequeue_timeout=timedelta(seconds=args.poll or 30.0),
        )
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    parser.add_argument("kind", choices=["aijobs", "arq", "saq", "procrastinate", "pgqueuer"])
    parser.add_argument("--queue", required=True)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--max-jobs", type=int, default=50)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--sim-delay", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=10, help="PgQueuer: jobs dequeued per statement")
    parser.add_argument("--count-writes", action="store_true", help="aijobs: report its store writes by method")
    args = parser.parse_args(argv)
    clock = Clock()
    runner = {
        "aijobs": run_aijobs,
        "arq": run_arq,
        "saq": run_saq,
        "procrastinate": run_procrastinate,
        "pgqueuer": run_pgqueuer,
    }[args.kind]
    try:
        asyncio.run(runner(args, clock))
    finally:
        clock.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
