"""What every figure needs: one Redis, a temp dir, uvicorn and worker subprocesses, and the statistics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from redis import Redis as SyncRedis

from service.embedded import EmbeddedRedis, die_with_parent, free_port

if TYPE_CHECKING:
    from .pg import BenchPostgres

ROOT = Path(__file__).resolve().parent.parent
UVICORN_ARGS = [
    "--host",
    "127.0.0.1",
    "--no-access-log",
    "--log-level",
    "warning",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
]


@dataclass
class Sizes:
    """How much work each figure does: the default run, or --quick."""

    rounds: int = 3
    heavy_rounds: int = 2  # drain and I/O: each round is a 10,000-job drain per system, so fewer fit in 5 minutes
    load_seconds: float = 2.0
    latency_jobs: int = 200  # per system, split over the rounds
    latency_jobs_slow_poll: int = 15  # arq at its default 0.5 s poll costs ~0.5 s a job
    drain_jobs: int = 10_000
    e2e_jobs: int = 3_000  # per round and system: POSTed, then run to completed
    drain_max_jobs: int = 50
    io_jobs: int = 2_000
    io_max_jobs: int = 1_000
    io_seconds: float = 1.0
    saq_concurrency: tuple[int, ...] = (10, 50, 200)
    procrastinate_concurrency: tuple[int, ...] = (10, 50, 200)  # pgstore: the baselines' best, found in the run
    pgqueuer_batch: tuple[int, ...] = (10, 50, 200)
    writes_jobs: int = 20  # pgstore: streamed chat jobs whose store writes and WAL are counted
    writes_seconds: int = 3  # ... each streaming this long (the README's checkpoint table: 3 s)
    push_subscribers: int = 1_000  # per transport, on one web process (scripts/bench-push runs 100/1,000/5,000)
    push_events: int = 0  # events each subscriber gets, 250 ms apart (0: scripts/bench-push's own 20, --quick 10)
    goodput_jobs: int = 600
    goodput_rpm: int = 300  # the upstream's limit per key, per (shortened) minute
    goodput_period: float = 12.0  # seconds in the bench's minute: 5 × faster than real time
    goodput_call_seconds: float = 0.2
    goodput_rounds: int = 1
    # streaming: cases of "JOBS" (a worker process per 1,000 jobs) or "JOBSxWORKERS", each job streaming
    # stream_rate tokens a second for stream_seconds to its own SSE watcher
    stream_jobs: tuple[str, ...] = ("1000", "2000x1", "2000x2", "5000x5")
    stream_seconds: float = 20.0
    stream_rate: float = 50.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            rounds=1,
            heavy_rounds=1,
            load_seconds=1.0,
            latency_jobs=30,
            latency_jobs_slow_poll=4,
            drain_jobs=1_000,
            e2e_jobs=1_000,
            io_jobs=400,
            io_max_jobs=200,
            saq_concurrency=(50,),
            procrastinate_concurrency=(50,),
            pgqueuer_batch=(50,),
            writes_jobs=10,
            goodput_jobs=300,
            goodput_period=6.0,
            stream_jobs=("200",),
            stream_seconds=5.0,
        )

    @classmethod
    def smoke(cls) -> Sizes:
        """Just enough to show every figure runs (the test suite's smoke test); the numbers mean nothing."""
        return cls(
            rounds=1,
            heavy_rounds=1,
            load_seconds=1.0,  # a loaded machine may answer no request at all in a shorter window
            latency_jobs=5,
            latency_jobs_slow_poll=1,
            drain_jobs=200,
            e2e_jobs=100,
            io_jobs=100,
            io_max_jobs=100,
            io_seconds=0.2,
            saq_concurrency=(50,),
            procrastinate_concurrency=(50,),
            pgqueuer_batch=(50,),
            writes_jobs=3,
            writes_seconds=1,
            push_subscribers=20,
            push_events=3,
            goodput_jobs=40,
            goodput_rpm=20,
            goodput_period=2.0,
            goodput_call_seconds=0.05,
            stream_jobs=("20",),
            stream_seconds=2.0,
            stream_rate=25.0,
        )


@dataclass
class Proc:
    """A child process of the bench that dies with it; its stdout carries JSON lines."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)

    def _read_line(self, timeout: float) -> dict[str, Any] | None:
        import select

        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.popen.stdout.readline()
        if not line:
            return None
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                self.lines.append(value)
                return value
        return {}

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not self._pending():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} before it was ready")
            line = self._read_line(0.2)
            if line and "ready" in line:
                return
        raise TimeoutError(f"{self.name} was not ready within {timeout} s")

    def _pending(self) -> bool:
        import select

        assert self.popen.stdout is not None
        return bool(select.select([self.popen.stdout], [], [], 0)[0])

    def finish(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for a burst worker to exit; its last JSON line is its report."""
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    self.lines.append(value)
        if self.popen.returncode != 0:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}")
        return self.lines[-1] if self.lines else {}

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        with contextlib.suppress(Exception):
            if self.popen.stdout is not None:
                self.popen.stdout.close()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; 0.0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    proc: Proc
    port: int

    def cpu(self) -> float:
        return process_cpu(self.proc.popen.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Bench:
    """Shared resources for one bench run; every child process is stopped when it closes."""

    def __init__(
        self, *, redis_url: str | None, sizes: Sizes, verbose: bool = True, postgres_url: str | None = None
    ) -> None:
        self.sizes = sizes
        self.postgres_url = postgres_url
        self._pg: BenchPostgres | None = None
        self.verbose = verbose
        self._tmp = tempfile.TemporaryDirectory(prefix="aijobs-bench-")
        self.tmp = Path(self._tmp.name)
        self._redis_server: EmbeddedRedis | None = None
        if redis_url is None:
            self._redis_server = EmbeddedRedis(self.tmp / "redis", persist=False).start()
            redis_url = self._redis_server.url
        self.redis_url = redis_url
        self.redis = SyncRedis.from_url(redis_url)
        if self._redis_server is None and self.redis.dbsize():
            # The bench empties its database between figures: never do that to a database holding anything else.
            self.redis.close()
            raise SystemExit(f"scripts/bench: REDIS_URL {redis_url} is not an empty database; point it at an empty one")
        self.procs: list[Proc] = []
        self.db_path = self.tmp / "jobs.db"
        self.queue = "bench:aijobs"
        self.servers = Servers(self)

    @property
    def pg(self) -> BenchPostgres:
        """The bench's PostgreSQL and its fresh databases, started by the first figure that needs them."""
        if self._pg is None:
            from .pg import BenchPostgres

            self._pg = BenchPostgres(self.postgres_url).start()
            self.log(f"PostgreSQL: {self._pg.how}, {self._pg.version} ({self._pg.settings})")
        return self._pg

    @functools.cached_property
    def auth(self) -> dict[str, str]:
        """A Bearer header for the bench user, made in the bench's store."""
        from .users import make_token

        return {"Authorization": f"Bearer {asyncio.run(make_token(self.db_path))}"}

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"  .. {message}", file=sys.stderr, flush=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            BENCH_REDIS_URL=self.redis_url,
            DATABASE_URL=f"sqlite:///{self.db_path}",
            AIJOBS_DATA_DIR=str(self.tmp),
            AIJOBS_QUEUE=self.queue,
            LOG_LEVEL="WARNING",
            # The bench measures cost, not quotas: one user submits thousands of jobs a minute.
            MAX_ACTIVE_JOBS="1000000000",
            SUBMISSIONS_PER_MINUTE="1000000000",
            MAX_STREAMS="1000000",
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env.update(extra)
        return env

    def spawn(
        self, name: str, args: Sequence[str], *, env: dict[str, str] | None = None, profile: Path | None = None
    ) -> Proc:
        cmd = [sys.executable]
        if profile is not None:  # pyinstrument runs the same `-m module ...` and writes a text report at exit
            cmd += ["-m", "pyinstrument", "--renderer", "text", "-p", "flat=true", "-p", "flat_time=self"]
            cmd += ["-o", str(profile)]
        cmd += list(args)
        popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=None if self.verbose else subprocess.DEVNULL,
            text=True,
            preexec_fn=die_with_parent,
        )
        proc = Proc(name, popen)
        self.procs.append(proc)
        return proc

    def worker(
        self,
        kind: str,
        queue: str,
        *,
        burst: bool,
        max_jobs: int = 50,
        poll: float = 0.05,
        sim_delay: float = 1.0,
        profile: Path | None = None,
        env: dict[str, str] | None = None,
        batch: int = 10,
    ) -> Proc:
        args = ["-m", "bench.workers", kind, "--queue", queue, "--max-jobs", str(max_jobs), "--poll", str(poll)]
        args += ["--sim-delay", str(sim_delay), "--batch", str(batch)] + (["--burst"] if burst else [])
        return self.spawn(f"{kind} worker", args, env=env, profile=profile)

    def serve(
        self, name: str, factory: str, *, env: dict[str, str] | None = None, profile: Path | None = None
    ) -> Server:
        port = free_port()
        args = ["-m", "uvicorn", "--factory", factory, "--port", str(port), *UVICORN_ARGS]
        proc = self.spawn(name, args, env=env, profile=profile)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.popen.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return Server(proc, port)
            time.sleep(0.05)
        proc.stop()
        raise TimeoutError(f"{name} did not answer on port {port}")

    def fresh_queue(self, prefix: str) -> str:
        return f"bench:{prefix}:{uuid.uuid4().hex[:6]}"

    def flush(self) -> None:
        """Drop every job the last figure left, in Redis and in the store (users and pub/sub subscriptions survive).

        Both must go: jobs left queued in the store but gone from Redis are what the reconciler re-enqueues, and the
        next figure would then measure a worker catching up on the last one's backlog.
        """
        self.redis.flushdb()
        if self.db_path.exists():
            with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as db, db:
                db.execute("DELETE FROM idempotency_keys")
                db.execute("DELETE FROM job_secrets")
                db.execute("DELETE FROM jobs")
        if self._pg is not None:
            self._pg.empty()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self._pg is not None:
            self._pg.close()
        self.redis.close()
        if self._redis_server is not None:
            self._redis_server.stop()
        self._tmp.cleanup()


@contextlib.contextmanager
def open_bench(
    redis_url: str | None, sizes: Sizes, *, verbose: bool = True, postgres_url: str | None = None
) -> Iterator[Bench]:
    bench = Bench(redis_url=redis_url, sizes=sizes, verbose=verbose, postgres_url=postgres_url)
    try:
        yield bench
    finally:
        bench.close()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Stat:
    """A figure over rounds: the median, and the min-max of the rounds."""

    median: float
    low: float
    high: float
    values: list[float]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        vals = list(values)
        if not vals:
            return cls(0.0, 0.0, 0.0, [])
        return cls(statistics.median(vals), min(vals), max(vals), vals)

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "rounds": self.values}


class Servers:
    """The two web servers, started once per run with the same uvicorn settings and shared by the figures."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self._aijobs: Server | None = None
        self._bare: Server | None = None

    @property
    def aijobs(self) -> Server:
        if self._aijobs is None:
            self.bench.log("starting the aijobs web server (uvicorn, 1 process)")
            self._aijobs = self.bench.serve("aijobs web", "bench.aijobs_app:app")
        return self._aijobs

    @property
    def bare(self) -> Server:
        if self._bare is None:
            self.bench.log("starting the bare Starlette + arq web server (uvicorn, 1 process)")
            self._bare = self.bench.serve(
                "bare web", "bench.bare_app:app", env=self.bench.env(BENCH_ARQ_QUEUE="bench:bare")
            )
        return self._bare
