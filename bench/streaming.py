"""Streaming: N concurrent chat jobs, each streaming `rate` tokens a second for `seconds`, one SSE watcher per job.

Issue #17's figure. Per case (N jobs on W worker processes, one web process):

1. a fresh web process; N chat jobs posted through `POST /api/jobs`, each asking the simulated provider for
   `[[slow:S]][[stamp:S*rate]]` (service/providers/simulated.py): S*rate tokens handed to the task on a fixed
   schedule, every 4th the wall clock (µs) at which the provider handed it over (the others plain words, so the
   text is as long as real text);
2. one SSE watcher per job (`GET /api/jobs/{id}/events`, bench/stream_client.py: bare asyncio protocols, one
   client process per 1,000 jobs, at most 2) connected while the jobs are still queued, so no token is replayed;
3. the W workers start; the figure ends when every watcher has seen its job's terminal event.

Delta latency is receive time − stamp for every stamped token: the runner's delta coalescing (DELTA_FLUSH_SECONDS), the
publish, Redis, the web process's fan-out and the socket. CPU (user + system, all threads, from /proc) of the
workers from their `ready` line and of the web process from the moment the watchers are connected, to the end,
per 1,000 tokens handed over; store writes per job counted by the workers themselves (`--count-writes`: claim,
checkpoints, renewals, finish; the web's submit insert is one more); Redis commands per job from INFO
commandstats (submit to end, commands run inside Lua scripts included); peak RSS (VmHWM) of each process.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.providers.simulated import STAMP_EVERY

from .harness import Bench, Proc, Server, Stat, process_cpu
from .report import Row

JOBS_PER_CLIENT = 1_000  # one watcher process per this many jobs, at most MAX_CLIENTS
MAX_CLIENTS = 2


@dataclass(frozen=True)
class Case:
    jobs: int
    workers: int

    @classmethod
    def parse(cls, text: str) -> Case:
        """`2000` (one worker process per 1,000 jobs, rounded up) or `2000x1` (jobs x worker processes)."""
        jobs, _, workers = text.strip().lower().partition("x")
        n = int(jobs.replace("_", "").replace(",", ""))
        return cls(n, int(workers) if workers else max(1, math.ceil(n / 1000)))

    @property
    def label(self) -> str:
        return f"{self.jobs:,} jobs, {self.workers} worker{'s' if self.workers > 1 else ''}"


@dataclass
class Result:
    case: Case
    seconds: float
    rate: float
    load: tuple[float, float, float]
    latency: dict[str, Any] = field(default_factory=dict)
    tokens_expected: int = 0
    stamps_expected: int = 0
    wall: float = 0.0
    worker_cpu: float = 0.0
    web_cpu: float = 0.0
    worker_waited: float = 0.0  # runnable, waiting for a CPU (all worker processes)
    web_waited: float = 0.0
    redis_cpu: float = 0.0
    client_cpu: float = 0.0
    writes: dict[str, int] = field(default_factory=dict)
    redis_calls: dict[str, int] = field(default_factory=dict)
    worker_rss_mb: list[float] = field(default_factory=list)
    web_rss_mb: float = 0.0
    ended: int = 0
    stream_seconds_p50: float = 0.0
    stream_seconds_max: float = 0.0
    floor_cpu: float = 0.0  # the simulated provider alone, at this case's jobs per worker process (stream_floor)
    floor_tokens: int = 0

    @property
    def stamps(self) -> int:
        """Stamped tokens the watchers received (every STAMP_EVERY-th token carries one)."""
        return int(self.latency.get("tokens", 0))

    @property
    def tokens(self) -> int:
        """Tokens handed over and received, from the stamps."""
        return min(self.stamps * STAMP_EVERY, self.tokens_expected)

    def per_k(self, cpu: float) -> float:
        """CPU ms per 1,000 tokens handed over."""
        return cpu * 1000 / (self.tokens / 1000) if self.tokens else 0.0

    @property
    def writes_per_job(self) -> float:
        return sum(self.writes.values()) / self.case.jobs

    @property
    def redis_per_job(self) -> float:
        return sum(self.redis_calls.values()) / self.case.jobs

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.case.jobs,
            "workers": self.case.workers,
            "seconds": self.seconds,
            "rate": self.rate,
            "load": self.load,
            "latency": {k: v for k, v in self.latency.items() if k != "hist"},
            "tokens_expected": self.tokens_expected,
            "tokens": self.tokens,
            "stamps_expected": self.stamps_expected,
            "wall": self.wall,
            "worker_cpu": self.worker_cpu,
            "web_cpu": self.web_cpu,
            "client_cpu": self.client_cpu,
            "worker_waited": self.worker_waited,
            "web_waited": self.web_waited,
            "redis_cpu": self.redis_cpu,
            "redis_ms_per_1k_tokens": self.per_k(self.redis_cpu),
            "worker_ms_per_1k_tokens": self.per_k(self.worker_cpu),
            "web_ms_per_1k_tokens": self.per_k(self.web_cpu),
            "writes": self.writes,
            "writes_per_job": self.writes_per_job,
            "redis_calls": dict(sorted(self.redis_calls.items(), key=lambda kv: -kv[1])),
            "redis_per_job": self.redis_per_job,
            "worker_rss_mb": self.worker_rss_mb,
            "web_rss_mb": self.web_rss_mb,
            "ended": self.ended,
            "stream_seconds_p50": self.stream_seconds_p50,
            "stream_seconds_max": self.stream_seconds_max,
            "provider_alone_ms_per_1k_tokens": self.floor_per_k,
        }

    @property
    def floor_per_k(self) -> float:
        return self.floor_cpu * 1e6 / self.floor_tokens if self.floor_tokens else 0.0


class Sampler:
    """py-spy sampling one process from outside (--nonblocking: the target is never paused), into DIR/NAME.raw
    (collapsed stacks) and, once done, DIR/NAME.txt: the functions with the most samples on top of the stack
    (self) and anywhere in it (total). pyinstrument's per-call hook slowed the streaming worker about ten times,
    so much that its jobs ran out of their lease: not a picture of the load it was meant to show."""

    def __init__(self, pid: int, out: Path, name: str, seconds: float) -> None:
        self.raw, self.txt = out / f"{name}.raw", out / f"{name}.txt"
        spy = Path(sys.executable).with_name("py-spy")
        args = [str(spy), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "100"]
        args += ["--nonblocking", "--format", "raw", "--output", str(self.raw)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self) -> None:
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.raw.exists():
            self.txt.write_text(summarize(self.raw.read_text()))


def summarize(raw: str, top: int = 40) -> str:
    """Self and total samples per function from py-spy's collapsed stacks (`frame;frame;... count`)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]  # per function, not per line
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples (py-spy, 100 Hz, active threads only)", "", "self %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in own.most_common(top)] if samples else []
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in total.most_common(top)] if samples else []
    return "\n".join(lines) + "\n"


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def waited(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU (schedstat): on a shared machine,
    how much of its wall it lost to everything else running."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        return 0.0
    return total / 1e9


def redis_cpu(bench: Bench) -> float:
    info = bench.redis.info("cpu")
    return float(info.get("used_cpu_user", 0.0)) + float(info.get("used_cpu_sys", 0.0))


def command_calls(bench: Bench) -> dict[str, int]:
    stats = bench.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items() if isinstance(v, dict)}


async def submit(server: Server, auth: dict[str, str], jobs: int, seconds: float, tokens: int) -> list[str]:
    """Post the jobs (50 in flight), each prompt its own so nothing is shared between them. A connection that
    drops is tried again under the same Idempotency-Key: no job is made twice."""
    ids: list[str] = [""] * jobs
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=60, limits=limits) as http:
        sem = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            content = f"[[slow:{seconds:g}]][[stamp:{tokens}]] stream number {i}"
            body = {"type": "chat", "input": {"messages": [{"role": "user", "content": content}]}}
            async with sem:
                for attempt in range(5):
                    try:
                        response = await http.post("/api/jobs", json=body, headers={"Idempotency-Key": f"{run}-{i}"})
                        break
                    except httpx.TransportError:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.2 * (attempt + 1))
            response.raise_for_status()
            ids[i] = response.json()["job_id"]

        await asyncio.gather(*(one(i) for i in range(jobs)))
    return ids


def run_case(bench: Bench, case: Case, seconds: float, rate: float, profile: Path | None = None) -> Result:
    """One case on fresh processes; with `profile`, the first worker and the web process are sampled by py-spy
    for the length of a stream, from when the workers are running."""
    bench.flush()
    tokens = max(1, round(seconds * rate))
    result = Result(case, seconds, rate, os.getloadavg(), tokens_expected=case.jobs * tokens)
    result.stamps_expected = case.jobs * math.ceil(tokens / STAMP_EVERY)
    env = bench.env()
    web = bench.serve("aijobs web (streaming)", "bench.aijobs_app:app", env=env)
    samplers: list[Sampler] = []
    workers: list[Proc] = []
    clients: list[Proc] = []
    try:
        calls0 = command_calls(bench)
        ids = asyncio.run(submit(web, bench.auth, case.jobs, seconds, tokens))
        bench.log(f"streaming {case.label}: {case.jobs:,} jobs posted; connecting their watchers")
        n_clients = min(MAX_CLIENTS, max(1, math.ceil(case.jobs / JOBS_PER_CLIENT)))
        token = bench.auth["Authorization"].removeprefix("Bearer ")
        deadline = seconds * 6 + 120  # past it, a case that fell behind reports what it delivered
        for k in range(n_clients):
            path = bench.tmp / f"stream-jobs-{k}.txt"
            path.write_text("\n".join(ids[k::n_clients]))
            args = ["-m", "bench.stream_client", "--port", str(web.port), "--token", token, "--jobs", str(path)]
            clients.append(bench.spawn(f"stream client {k}", [*args, "--deadline", str(deadline)]))
        for client in clients:
            client.wait_ready(timeout=180)
        web_cpu0 = web.cpu()
        web_wait0 = waited(web.proc.popen.pid)
        redis_cpu0 = redis_cpu(bench)
        started = time.monotonic()
        per_worker = math.ceil(case.jobs / case.workers)
        worker_cpu0: list[float] = []
        worker_wait0: list[float] = []
        for i in range(case.workers):
            args = ["-m", "bench.workers", "aijobs", "--queue", bench.queue, "--max-jobs", str(per_worker)]
            args += ["--poll", "0.05", "--sim-delay", f"{seconds:g}", "--count-writes"]
            worker = bench.spawn(f"aijobs streaming worker {i}", args, env=env)
            workers.append(worker)
            worker.wait_ready(timeout=60)
            worker_cpu0.append(process_cpu(worker.popen.pid))
            worker_wait0.append(waited(worker.popen.pid))
        bench.log(f"streaming {case.label}: {case.workers} worker(s) running; {seconds:g} s of streams")
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            tag = f"{case.jobs}x{case.workers}"
            samplers.append(Sampler(workers[0].popen.pid, profile, f"stream-worker-{tag}", seconds))
            samplers.append(Sampler(web.proc.popen.pid, profile, f"stream-web-{tag}", seconds))
        reports = [c.finish(timeout=deadline + 60) for c in clients]
        for sampler in samplers:
            sampler.finish()
        result.wall = time.monotonic() - started
        result.worker_cpu = sum(process_cpu(w.popen.pid) - c0 for w, c0 in zip(workers, worker_cpu0, strict=True))
        result.web_cpu = web.cpu() - web_cpu0
        result.worker_waited = sum(waited(w.popen.pid) - c0 for w, c0 in zip(workers, worker_wait0, strict=True))
        result.web_waited = waited(web.proc.popen.pid) - web_wait0
        result.redis_cpu = redis_cpu(bench) - redis_cpu0
        result.client_cpu = sum(float(r.get("cpu", 0.0)) for r in reports)
        result.worker_rss_mb = [round(peak_rss_mb(w.popen.pid), 1) for w in workers]
        result.web_rss_mb = round(peak_rss_mb(web.proc.popen.pid), 1)
        result.latency = merge(reports)
        result.ended = sum(int(r.get("ended", 0)) for r in reports)
        result.stream_seconds_p50 = max((float(r.get("stream_seconds_p50", 0.0)) for r in reports), default=0.0)
        result.stream_seconds_max = max((float(r.get("stream_seconds_max", 0.0)) for r in reports), default=0.0)
        for w in workers:
            w.popen.send_signal(signal.SIGTERM)
        for w in workers:
            report = w.finish(timeout=120)
            for name, n in (report.get("writes") or {}).items():
                result.writes[name] = result.writes.get(name, 0) + int(n)
        calls1 = command_calls(bench)
        result.redis_calls = {k: v - calls0.get(k, 0) for k, v in calls1.items() if v - calls0.get(k, 0) > 0}
        result.redis_calls.pop("info", None)  # the bench's own
    finally:
        for sampler in samplers:
            if sampler.proc.poll() is None:
                sampler.proc.kill()
                sampler.proc.wait()
        for proc in workers + clients:
            proc.stop()
        web.proc.stop()
        bench.flush()
    return result


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The clients' histograms as one, summarized."""
    from .stream_client import BINS, summary

    hist = array("l", bytes(8 * BINS))
    for r in reports:
        for i, c in (r.get("hist") or {}).items():
            hist[int(i)] += int(c)
    return summary(hist)


def row_set(r: Result) -> list[Row]:
    label = r.case.label
    lat = r.latency

    def row(metric: str, value: float, higher: bool = False) -> Row:
        return Row("streaming", f"{label}: {metric}", Stat.of([value]), {}, higher)

    return [
        row("delta p50 ms", float(lat.get("p50_ms", 0.0))),
        row("delta p99 ms", float(lat.get("p99_ms", 0.0))),
        row("worker CPU ms / 1,000 tokens", r.per_k(r.worker_cpu)),
        row("web CPU ms / 1,000 tokens", r.per_k(r.web_cpu)),
        row("store writes / job", r.writes_per_job),
        row("Redis commands / job", r.redis_per_job),
    ]


def table(results: list[Result]) -> str:
    """The README's streaming table, one line per case."""
    lines = [
        "| jobs | worker processes | tokens delivered (jobs ended) | tokens/s | delta p50 ms | delta p99 ms "
        "| stream s p50 / max "
        "| worker CPU ms / 1k tokens (provider alone) | web CPU ms / 1k tokens | Redis CPU ms / 1k tokens "
        "| worker, web cores busy | worker, web CPU wait s | watcher CPU s "
        "| store writes / job | Redis commands / job | worker RSS MB | web RSS MB | load at start |",
        "|" + "---|" * 18,
    ]
    for r in results:
        lat = r.latency
        busy = f"{r.worker_cpu / r.wall:.2f}, {r.web_cpu / r.wall:.2f}" if r.wall else "—"
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r.case.jobs:,}",
                    str(r.case.workers),
                    f"{r.tokens / r.tokens_expected:.0%} ({r.ended:,})" if r.tokens_expected else "—",
                    f"{r.tokens / r.wall:,.0f}" if r.wall else "—",
                    f"{lat.get('p50_ms', 0.0):.1f}",
                    f"{lat.get('p99_ms', 0.0):.1f}",
                    f"{r.stream_seconds_p50:.1f} / {r.stream_seconds_max:.1f}",
                    f"{r.per_k(r.worker_cpu):.0f} ({r.floor_per_k:.0f})",
                    f"{r.per_k(r.web_cpu):.0f}",
                    f"{r.per_k(r.redis_cpu):.0f}",
                    busy,
                    f"{r.worker_waited:.0f}, {r.web_waited:.0f}",
                    f"{r.client_cpu:.1f}",
                    f"{r.writes_per_job:.1f}",
                    f"{r.redis_per_job:.0f}",
                    " + ".join(f"{m:.0f}" for m in r.worker_rss_mb),
                    f"{r.web_rss_mb:.0f}",
                    f"{r.load[0]:.1f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def run(bench: Bench, profile: Path | None = None) -> tuple[list[Row], list[dict[str, Any]]]:
    """Every case of `sizes.stream_jobs`; with `profile` (--profile DIR), each case's first worker and web process
    sampled (stream-worker-JOBSxWORKERS.txt, stream-web-JOBSxWORKERS.txt)."""
    sizes = bench.sizes
    results: list[Result] = []
    floors: dict[int, dict[str, Any]] = {}
    for spec in sizes.stream_jobs:
        case = Case.parse(spec)
        per_worker = math.ceil(case.jobs / case.workers)
        if per_worker not in floors:
            floors[per_worker] = floor(bench, per_worker, sizes.stream_seconds, sizes.stream_rate)
        r = run_case(
            bench, case, sizes.stream_seconds, sizes.stream_rate, profile=profile.resolve() if profile else None
        )
        r.floor_cpu, r.floor_tokens = float(floors[per_worker]["cpu"]), int(floors[per_worker]["tokens"])
        bench.log(
            f"streaming {case.label}: p50 {r.latency.get('p50_ms', 0):.1f} ms, p99 {r.latency.get('p99_ms', 0):.1f}"
            f" ms, {r.tokens:,} of {r.tokens_expected:,} tokens, {r.ended} of {case.jobs} jobs ended, "
            f"{r.wall:.1f} s"
        )
        results.append(r)
    print()
    print(
        f"Streaming: {sizes.stream_seconds:g} s of {sizes.stream_rate:g} tokens/s per job, "
        "one SSE watcher per job, one web process"
    )
    print(table(results))
    rows = [row for r in results for row in row_set(r)]
    return rows, [r.to_dict() for r in results]


def floor(bench: Bench, jobs: int, seconds: float, rate: float) -> dict[str, Any]:
    """The simulated provider alone at `jobs` streams in one process (bench/stream_floor.py)."""
    args = ["-m", "bench.stream_floor", "--jobs", str(jobs), "--seconds", f"{seconds:g}", "--rate", f"{rate:g}"]
    report = bench.spawn(f"provider alone × {jobs}", args).finish(timeout=seconds * 10 + 60)
    bench.log(f"streaming: the provider alone, {jobs:,} streams: {report['cpu']:.1f} s CPU, {report['wall']:.1f} s")
    return report
