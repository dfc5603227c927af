"""Push benchmark: N concurrent SSE / WebSocket subscribers on one real web process, plus bare Redis pub/sub.

Measures, for each N, the latency from PUBLISH (the time stamp inside the event) to the moment the load
client reads it, p50 and p99 over every (client, event) pair, the share of events delivered, and the web
process's RSS growth per connection. The load client is one asyncio process with bare sockets and no
parsing beyond finding the time stamps, so it adds as little of its own time as possible.

Usable as a module (`run(quick) -> dict`, called by scripts/bench) or as `scripts/bench-push [--quick]`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import resource
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

from bench.users import make_token  # noqa: E402  (after the path is set)
from service.embedded import die_with_parent  # noqa: E402
from service.events import user_channel  # noqa: E402

# The reference servers (bench/naive_push.py, bench/floor_push.py) forward this user's channel to every client.
NAIVE_USER = "bench-naive"
TRANSPORTS = ("sse", "ws", "naive", "floor")
REFERENCES = ("naive", "floor")

STAMP = re.compile(rb'"t":([0-9.]+)')
SNAPSHOT = b'"kind":"snapshot"'


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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


class Client(asyncio.Protocol):
    """One subscriber: notes when the snapshot arrived and the receive time of every stamped event."""

    def __init__(self, hello: tuple[bytes, bytes], ready: asyncio.Future[None], lat: list[float]) -> None:
        self.hello, self.after_upgrade = hello
        self.ready = ready
        self.lat = lat
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hello)

    def upgraded(self, chunk: bytes) -> None:
        if self.after_upgrade and b"\r\n\r\n" in chunk and chunk.startswith(b"HTTP/1.1 101"):
            assert self.transport is not None
            self.transport.write(self.after_upgrade)  # a frame sent with the upgrade request may be lost
            self.after_upgrade = b""

    def data_received(self, data: bytes) -> None:
        now = time.time()
        chunk = self.tail + data
        self.tail = chunk[-64:]
        if self.after_upgrade:
            self.upgraded(chunk)
        if not self.ready.done() and SNAPSHOT in chunk:
            self.ready.set_result(None)
            self.tail = b""
            return
        for m in STAMP.finditer(data):
            self.lat.append(now - float(m.group(1)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the snapshot"))


def ws_hello(port: int, job_id: str, token: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    payload = json.dumps({"type": "subscribe", "job_id": job_id}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + masked
    return upgrade, frame


def sse_hello(port: int, job_id: str, token: str) -> tuple[bytes, bytes]:
    head = f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    return head.encode(), b""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def connect_all(port: int, hello: tuple[bytes, bytes], n: int, lat: list[float]) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    sem = asyncio.Semaphore(200)

    async def one() -> None:
        async with sem:
            ready: asyncio.Future[None] = loop.create_future()
            for attempt in range(5):
                try:
                    _, proto = await loop.create_connection(lambda: Client(hello, ready, lat), "127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.1 * (attempt + 1))
            else:
                raise ConnectionError("could not connect")
            clients.append(proto)
            await asyncio.wait_for(ready, 60)

    await asyncio.gather(*(one() for _ in range(n)))
    return clients


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


async def measure(
    transport: str, n: int, *, port: int, pid: int, redis_url: str, events: int, interval: float, token: str
) -> dict[str, Any]:
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=auth) as http:
        if transport in REFERENCES:
            job_id, user_id = f"{transport}-{n}", NAIVE_USER  # a fresh Stream: the log refuses old seqs
        else:
            job = {"type": "titles", "input": {"text": "benchmark (no worker runs it)"}}
            r = await http.post("/api/jobs", json=job)
            job_id = r.json()["job_id"]
            user_id = (await http.get("/api/me")).json()["user"]["id"]
        rss_before = rss_kb(pid)
        lat: list[float] = []
        hello = (ws_hello if transport == "ws" else sse_hello)(port, job_id, token)
        t0 = time.monotonic()
        clients = await connect_all(port, hello, n, lat)
        connect_s = time.monotonic() - t0
        await asyncio.sleep(0.5)
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
        server_cpu0, client_cpu0 = cpu_s(pid), time.process_time()
        await publish_events(redis_url, user_id, job_id, events, interval, first_seq=2)
        await asyncio.sleep(min(2.0, 0.5 + n / 2000))
        server_cpu, client_cpu = cpu_s(pid) - server_cpu0, time.process_time() - client_cpu0
        if spy is not None:
            await asyncio.to_thread(spy.wait)
        rss_after = rss_kb(pid)
        for c in clients:
            if c.transport is not None:
                c.transport.abort()
        for _ in range(200):
            gw = (await http.get("/healthz")).json()["gateway"]
            if gw["connections"] == 0:
                break
            await asyncio.sleep(0.05)
    ms = [x * 1000 for x in lat]
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
        # CPU per event while publishing (the client's includes publishing and its own idle loop)
        "server_cpu_ms_per_event": round(server_cpu * 1000 / events, 1),
        "client_cpu_ms_per_event": round(client_cpu * 1000 / events, 1),
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
    if app == "floor":
        cmd = [sys.executable, "-m", "bench.floor_push"]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", app, "--host", "127.0.0.1"]
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
    sizes = sizes or ([100, 1000] if quick else [100, 1000, 5000])
    events = events or (10 if quick else 20)
    interval = 0.25
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aijobs-bench-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis", persist=False).start()
        try:
            results.append(await redis_baseline(redis.url, events * 5, 0.02))
            for n in sizes:  # each size's transports back to back, so they share the machine's load
                for transport in transports:
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
    lines = ["| transport | subscribers | p50 ms | p99 ms | delivered | server KB/conn |", "|---|---|---|---|---|---|"]
    for r in result["push"]:
        lines.append(
            f"| {r['transport']} | {r['subscribers']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r.get('delivered', 1.0)} | {r.get('rss_per_conn_kb', '')} |"
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
