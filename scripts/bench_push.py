"""Push benchmark: N concurrent SSE / WebSocket subscribers on one real web process, plus bare Redis pub/sub.

Measures, for each N, the latency from PUBLISH (the time stamp inside the event) to the moment the load
client reads it, p50 and p99 over every (client, event) pair, the share of events delivered, and the web
process's RSS growth per connection, its CPU per event, and its garbage-collection pauses while the events flow
(bench/gc_probe.py runs inside it). The load clients (bench/push_client.py, one process per 5,000 subscribers) use
bare sockets and parse nothing beyond the time stamps, so they add as little of their own time as possible.

Usable as a module (`run(quick) -> dict`, called by scripts/bench) or as `scripts/bench-push [--quick]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.push_client import raise_fd_limit  # noqa: E402  (after the path is set)
from bench.users import make_token  # noqa: E402
from service.embedded import die_with_parent  # noqa: E402
from service.events import user_channel  # noqa: E402

# The reference servers (bench/naive_push.py, bench/floor_push.py) forward this user's channel to every client.
NAIVE_USER = "bench-naive"
TRANSPORTS = ("sse", "ws", "naive", "floor")  # and "mine": GET /api/events (every job of the user), on request
REFERENCES = ("naive", "floor")
CLIENTS_PER_PROCESS = 5000  # load client processes: one per 5,000 subscribers (fds, and a second core to read with)
SETTLE_S = 1.0  # after the last subscriber connected, before RSS is read and the events start
NAIVE_MAX = 5000  # the naive reference is skipped above this (1.6 s p99 at 5,000 already)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def publish_events(
    redis_url: str, user_id: str, job_id: str, count: int, interval: float, first_seq: int
) -> None:
    from redis.asyncio import Redis

    from service.events import EventLog
    from service.models import Event, EventKind

    redis = Redis.from_url(redis_url)
    log = EventLog(redis)
    try:
        for i in range(count):
            data = {"percentage": i, "current_step": "Benchmarking…", "t": time.time()}
            event = Event(job_id=job_id, seq=first_seq + i, kind=EventKind.PROGRESS, data=data)
            await log.publish(user_id, event)
            await asyncio.sleep(interval)
    finally:
        await redis.aclose()


class Loaders:
    """The load client processes (bench/push_client.py): up to CLIENTS_PER_PROCESS subscribers each."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, spec: dict[str, Any], n: int) -> float:
        """Start them and wait until every subscriber has its snapshot; returns the seconds that took."""
        per = -(-n // max(1, -(-n // CLIENTS_PER_PROCESS)))
        t0 = time.monotonic()
        for first in range(0, n, per):
            arg = json.dumps({**spec, "n": min(per, n - first)})
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.push_client",
                    arg,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    cwd=ROOT,
                    limit=1 << 27,  # one line carries every latency of the process
                    preexec_fn=_child_setup,
                )
            )
        for proc in self.procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 600)
            if not line:
                raise RuntimeError("a load client ended before its subscribers were connected")
        return time.monotonic() - t0

    async def say(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(word.encode() + b"\n")
            await proc.stdin.drain()

    async def go(self) -> None:
        await self.say("go")
        for proc in self.procs:
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), 60)

    async def results(self) -> tuple[list[float], float]:
        """Every latency (ms) and the clients' CPU seconds since "go"."""
        await self.say("stop")
        lat: list[float] = []
        cpu = 0.0
        for proc in self.procs:
            assert proc.stdout is not None
            got = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
            lat += got["lat_ms"]
            cpu += got["cpu_s"]
        return lat, cpu

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()


class GcProbe:
    """Talks to bench/gc_probe.py inside the web process: `reset`, then `dump` what it timed since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cmd = path.with_suffix(path.suffix + ".cmd")

    async def reset(self) -> None:
        self.cmd.write_text("reset")
        await self._taken()

    async def dump(self, command: str = "dump") -> dict[str, Any]:
        self.path.unlink(missing_ok=True)
        self.cmd.write_text(command)
        for _ in range(200):
            if self.path.exists():
                return json.loads(self.path.read_text())  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)
        return {}

    async def _taken(self) -> None:
        for _ in range(200):
            if not self.cmd.exists():
                return
            await asyncio.sleep(0.05)


async def measure(
    transport: str,
    n: int,
    *,
    port: int,
    pid: int,
    redis_url: str,
    events: int,
    interval: float,
    token: str,
    gc_probe: GcProbe,
) -> dict[str, Any]:
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    loaders = Loaders()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=auth) as http:
        if transport in REFERENCES:
            job_id, user_id = f"{transport}-{n}", NAIVE_USER  # a fresh Stream: the log refuses old seqs
        else:
            job = {"type": "titles", "input": {"text": "benchmark (no worker runs it)"}}
            r = await http.post("/api/jobs", json=job)
            job_id = r.json()["job_id"]
            user_id = (await http.get("/api/me")).json()["user"]["id"]
        rss_before = rss_kb(pid)
        try:
            spec = {"transport": transport, "port": port, "job_id": job_id, "token": token}
            await gc_probe.reset()
            connect_s = await loaders.start(spec, n)
            await asyncio.sleep(SETTLE_S)
            gc_connecting = await gc_probe.dump()
            if transport not in REFERENCES and os.environ.get("GC_FREEZE_SETTLE_SECONDS", "1") != "0":
                for _ in range(100):  # the web process freezes what the streams hold once they settle (gcfreeze.py)
                    if (await http.get("/healthz")).json()["gateway"].get("gc_frozen_objects"):
                        break
                    await asyncio.sleep(0.1)
            rss_connected = rss_kb(pid)
            parked = (await http.get("/healthz")).json()["gateway"].get("parked")
            spy = None
            if os.environ.get("BENCH_PUSH_PROFILE"):
                spy = subprocess.Popen(  # noqa: ASYNC220 (profiling only)
                    [
                        str(ROOT / ".venv/bin/py-spy"),
                        "record",
                        "-p",
                        str(pid),
                        "-o",
                        os.environ["BENCH_PUSH_PROFILE"],
                        "-f",
                        "speedscope",
                        "-d",
                        str(int(events * interval) + 1),
                        "-r",
                        "200",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1)
            elif os.environ.get("BENCH_PUSH_PERF"):  # kernel and C frames too: `perf report -i FILE`
                spy = subprocess.Popen(  # noqa: ASYNC220 (profiling only)
                    ["perf", "record", "-e", "cpu-clock", "-g", "-p", str(pid), "-o", os.environ["BENCH_PUSH_PERF"]]
                    + ["--", "sleep", str(int(events * interval) + 1)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(0.5)
            await gc_probe.reset()
            await loaders.go()
            server_cpu0 = cpu_s(pid)
            await publish_events(redis_url, user_id, job_id, events, interval, first_seq=2)
            await asyncio.sleep(min(2.0, 0.5 + n / 2000))
            server_cpu = cpu_s(pid) - server_cpu0
            gc_seen = await gc_probe.dump()
            forced = (await gc_probe.dump("collect")).get("forced_full_ms")  # before the clients hang up
            lat, client_cpu = await loaders.results()
            if spy is not None:
                await asyncio.to_thread(spy.wait)
            rss_after = rss_kb(pid)
        finally:
            await loaders.close()
        for _ in range(400):
            gw = (await http.get("/healthz")).json()["gateway"]
            if gw["connections"] == 0:
                break
            await asyncio.sleep(0.05)
    ms = lat
    full = gc_seen.get("gen2", {})
    return {
        "transport": transport,
        "subscribers": n,
        "events": events,
        "delivered": round(len(lat) / (n * events), 4),
        "p50_ms": round(pct(ms, 0.50), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
        "parked": parked,  # subscribers on the direct fan-out path once all were connected
        "rss_per_conn_kb": round((max(rss_connected, rss_after) - rss_before) / n, 1),
        "connect_s": round(connect_s, 2),
        "client_procs": len(loaders.procs),
        # CPU per event while publishing (the clients' is theirs alone, summed over their processes)
        "server_cpu_ms_per_event": round(server_cpu * 1000 / events, 1),
        "client_cpu_ms_per_event": round(client_cpu * 1000 / events, 1),
        # the web process's garbage collections while the events flowed (after the connections settled)
        "gc_full_max_ms": full.get("max_ms"),
        "gc_full_count": full.get("count"),
        "gc_young_max_ms": max((gc_seen.get(g, {}).get("max_ms") or 0.0) for g in ("gen0", "gen1")),
        "gc_frozen": gc_seen.get("frozen"),
        "gc_forced_full_ms": forced,  # one full collection forced after the events: what the next would cost
        # and while the subscribers connected (a storm of new connections: not steady streaming)
        "gc_connect_full_max_ms": gc_connecting.get("gen2", {}).get("max_ms"),
        "gc_connect_full_count": gc_connecting.get("gen2", {}).get("count"),
    }


async def redis_baseline(redis_url: str, events: int, interval: float) -> dict[str, Any]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    sub = redis.pubsub()
    await sub.subscribe("bench:baseline")
    await sub.get_message(timeout=1)
    lat: list[float] = []

    async def listen() -> None:
        while len(lat) < events:
            msg = await sub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                lat.append(time.time() - float(json.loads(msg["data"])["t"]))

    task = asyncio.create_task(listen())
    for _ in range(events):
        await redis.publish("bench:baseline", json.dumps({"t": time.time()}))
        await asyncio.sleep(interval)
    await asyncio.wait_for(task, 10)
    await sub.aclose()
    await redis.aclose()
    ms = [x * 1000 for x in lat]
    return {
        "transport": "redis-pubsub",
        "subscribers": 1,
        "p50_ms": round(pct(ms, 0.5), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
    }


def start_web(
    env: dict[str, str], port: int, log: Path, app: str = "service.api.app:app_from_env"
) -> subprocess.Popen[bytes]:
    """uvicorn serving `app`, or for app "floor" the bare uvloop server of bench/floor_push.py."""
    probe = [sys.executable, "-m", "bench.gc_probe"]  # times the process's garbage collections (GC_PROBE_FILE)
    if app == "floor":
        cmd = [*probe, "bench.floor_push"]
    else:
        cmd = [*probe, "uvicorn", "--factory", app, "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--no-access-log", "--log-level", "warning", "--backlog", "4096"]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_child_setup, cwd=ROOT)


def _child_setup() -> None:
    """The web server gets the raised fd limit, and dies with the bench (a killed bench leaves no server behind)."""
    raise_fd_limit()
    die_with_parent()


async def wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=2) as c:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError("web process exited")
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("web process did not become healthy")


async def _run(
    quick: bool,
    sizes: list[int] | None = None,
    transports: tuple[str, ...] = TRANSPORTS,
    events: int | None = None,
) -> dict[str, Any]:
    from service.embedded import EmbeddedRedis

    raise_fd_limit()
    sizes = sizes or ([100, 1000] if quick else [100, 1000, 5000, 10000])
    events = events or (10 if quick else 20)
    interval = 0.25
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aijobs-bench-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis", persist=False).start()
        try:
            results.append(await redis_baseline(redis.url, events * 5, 0.02))
            for n in sizes:  # each size's transports back to back, so they share the machine's load
                for transport in transports:
                    if transport == "naive" and n > NAIVE_MAX:
                        continue
                    port = free_port()
                    db_path = Path(tmp) / f"bench-{transport}-{n}.db"
                    token = await make_token(db_path)
                    env = {
                        **os.environ,
                        "REDIS_URL": redis.url,
                        "DATABASE_URL": f"sqlite:///{db_path}",
                        "MAX_STREAMS": "1000000",  # every subscriber is the one bench user
                        "PORT": str(port),
                        "AIJOBS_QUEUE": f"bench:{transport}:{n}",
                        "LOG_JSON": "false",
                        "LOG_LEVEL": "WARNING",
                        "NAIVE_CHANNEL": user_channel(NAIVE_USER),
                        "FLOOR_CHANNEL": user_channel(NAIVE_USER),
                        "GC_PROBE_FILE": str(Path(tmp) / f"gc-{transport}-{n}.json"),
                        "GC_FREEZE_SETTLE_SECONDS": os.environ.get("GC_FREEZE_SETTLE_SECONDS", "1"),
                    }
                    apps = {"naive": "bench.naive_push:app", "floor": "floor"}
                    app = apps.get(transport, "service.api.app:app_from_env")
                    log_path = Path(tmp) / f"web-{transport}-{n}.log"
                    proc = start_web(env, port, log_path, app)
                    try:
                        await wait_healthy(port, proc)
                        # One event per 250 ms per job is a fast job; at 5,000 clients space them 1 s apart so the
                        # figure is latency, not the backlog of a saturated 2-core machine (both rates are recorded).
                        gap = interval if n <= 1000 else 1.0
                        row = await measure(
                            transport,
                            n,
                            port=port,
                            pid=proc.pid,
                            redis_url=redis.url,
                            events=events,
                            interval=gap,
                            token=token,
                            gc_probe=GcProbe(Path(env["GC_PROBE_FILE"])),
                        )
                        row["interval_s"] = gap
                        if row["delivered"] < 1:
                            print(log_path.read_text()[-3000:], file=sys.stderr)
                        results.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        try:
                            proc.wait(15)
                        except subprocess.TimeoutExpired:
                            proc.kill()
        finally:
            redis.stop()
    return {"push": results, "quick": quick, "cpus": os.cpu_count()}


def run(
    quick: bool = False,
    sizes: list[int] | None = None,
    transports: tuple[str, ...] = TRANSPORTS,
    events: int | None = None,
) -> dict[str, Any]:
    """Run the push benchmark; returns {"push": [rows...]} (one row per transport and subscriber count).

    `events`: how many each subscriber gets (default 20, --quick 10; scripts/bench --smoke asks for a few)."""
    try:
        import uvloop

    except ImportError:
        return asyncio.run(_run(quick, sizes, transports, events))
    return uvloop.run(_run(quick, sizes, transports, events))


def table(result: dict[str, Any]) -> str:
    lines = [
        "| transport | subscribers | p50 ms | p99 ms | p99 ÷ floor | delivered | server KB/conn | server CPU ms/event "
        "| full-GC pauses while events flow: max ms (count) | a forced full GC after, ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    floor = {r["subscribers"]: r for r in result["push"] if r["transport"] == "floor"}
    for r in result["push"]:
        ref = floor.get(r["subscribers"])
        ratio = f"{r['p99_ms'] / ref['p99_ms']:.2f}" if ref and ref["p99_ms"] and r["transport"] != "floor" else ""
        gc_col = f"{r['gc_full_max_ms']} ({r['gc_full_count']})" if r.get("gc_full_count") is not None else ""
        lines.append(
            f"| {r['transport']} | {r['subscribers']} | {r['p50_ms']} | {r['p99_ms']} | {ratio} | "
            f"{r.get('delivered', 1.0)} | {r.get('rss_per_conn_kb', '')} | {r.get('server_cpu_ms_per_event', '')} | "
            f"{gc_col} | {r.get('gc_forced_full_ms', '')} |"
        )
    return "\n".join(lines)


def _opt(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    quick = "--quick" in args
    sizes = [int(x) for x in _opt(args, "--sizes").split(",")] if _opt(args, "--sizes") else None
    transports = tuple(_opt(args, "--transports").split(",")) if _opt(args, "--transports") else TRANSPORTS
    result = run(quick, sizes, transports)
    print(table(result))
    if "--json" in args:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
