"""The streaming figure's watchers: one SSE connection per job, many jobs per process, bare asyncio protocols.

    python -m bench.stream_client --port P --token T --jobs FILE

FILE holds one job id a line. Each connection reads `GET /api/jobs/{id}/events` and does no more than find the
stamps the simulated provider put in every 4th token (`~` and 9 hex digits: the wall clock in µs, mod 16**9, when the
provider handed the token to the task; [[stamp:N]] in service/providers/simulated.py) in its `delta` events,
and the job's terminal status. An event counts as received when its last byte is read. Per token it adds one
count to a 0.1 ms histogram of (receive time − stamp), so the client costs little per token and nothing grows
with the run. Prints `{"ready": ...}` once every stream has its first event (the
snapshot), then, once every job has ended (or at the deadline), one JSON line with the histogram and its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from array import array
from pathlib import Path
from typing import Any

STAMP = re.compile(rb"~([0-9a-f]{9})")
MODULO = 16**9
BIN_US = 100  # histogram resolution: 0.1 ms
BINS = 600_000  # up to 60 s; later ones land in the last bin
END = re.compile(rb'"status":\s*"(completed|failed|cancelled)"')


class Watch(asyncio.Protocol):
    """One job's SSE stream."""

    def __init__(self, hello: bytes, state: Shared) -> None:
        self.hello = hello
        self.state = state
        self.buf = b""  # an event not whole yet
        self.ready = False
        self.ended = False
        self.tokens = 0
        self.first = -1  # first and last stamp (µs mod MODULO): how long the provider took to hand them all
        self.last = -1
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns() // 1000 % MODULO
        buf = self.buf + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        complete, self.buf = buf[:end], buf[end + 2 :]
        hist = self.state.hist
        for frame in complete.split(b"\n\n"):
            if b"event: delta" in frame:  # the stamps of other events (the reply in the result) are not deltas
                count = 0
                stamp = -1
                for match in STAMP.finditer(frame):
                    stamp = int(match.group(1), 16)
                    lat = (now - stamp) % MODULO // BIN_US
                    hist[lat if lat < BINS else BINS - 1] += 1
                    if self.first < 0:
                        self.first = stamp
                    count += 1
                if count:
                    self.tokens += count
                    self.last = stamp
            elif not self.ready and b"data:" in frame:
                self.ready = True
                self.state.connected()
            elif not self.ended and END.search(frame) is not None:
                self.ended = True
                self.state.finished()
                if self.transport is not None:
                    self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.ended = True
            self.state.lost += 1
            self.state.finished()


class Shared:
    """What every connection of this process adds to."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.hist = array("l", bytes(8 * BINS))
        self.ready = 0
        self.done = 0
        self.lost = 0
        loop = asyncio.get_running_loop()
        self.all_ready: asyncio.Future[None] = loop.create_future()
        self.all_done: asyncio.Future[None] = loop.create_future()

    def connected(self) -> None:
        self.ready += 1
        if self.ready >= self.n and not self.all_ready.done():
            self.all_ready.set_result(None)

    def finished(self) -> None:
        self.done += 1
        if self.done >= self.n and not self.all_done.done():
            self.all_done.set_result(None)


def summary(hist: array[int]) -> dict[str, Any]:
    """Percentiles (ms) from the histogram, by nearest rank; each bin read as its middle."""
    total = sum(hist)
    out: dict[str, Any] = {"tokens": total}
    if not total:
        return out
    wanted = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}
    ranks = {k: max(1, round(q * total)) for k, q in wanted.items()}
    seen = 0
    for i, c in enumerate(hist):
        if not c:
            continue
        seen += c
        for k in [k for k, r in ranks.items() if seen >= r]:
            out[f"{k}_ms"] = (i + 0.5) * BIN_US / 1000
            del ranks[k]
        if not ranks:
            break
    out["max_ms"] = (max(i for i, c in enumerate(hist) if c) + 1) * BIN_US / 1000
    return out


async def run(port: int, token: str, jobs: list[str], deadline: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    state = Shared(len(jobs))
    watches: list[Watch] = []
    sem = asyncio.Semaphore(200)

    async def connect(job_id: str) -> None:
        hello = (
            f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        async with sem:
            for attempt in range(10):
                try:
                    _, proto = await loop.create_connection(lambda: Watch(hello, state), "127.0.0.1", port)
                    watches.append(proto)
                    return
                except OSError:
                    await asyncio.sleep(0.1 * (attempt + 1))
            raise ConnectionError(f"could not connect for {job_id}")

    await asyncio.gather(*(connect(j) for j in jobs))
    await asyncio.wait_for(state.all_ready, 120)
    cpu0 = time.process_time()
    print(json.dumps({"ready": time.time()}), flush=True)
    try:
        await asyncio.wait_for(state.all_done, deadline)
    except TimeoutError:
        pass
    cpu = time.process_time() - cpu0
    stretch = sorted(((w.last - w.first) % MODULO) / 1e6 for w in watches if w.tokens > 1)
    return {
        **summary(state.hist),
        "hist": {str(i): c for i, c in enumerate(state.hist) if c},
        "jobs": len(jobs),
        "ended": state.done - state.lost,
        "lost": state.lost,
        "cpu": cpu,
        "stream_seconds_p50": stretch[len(stretch) // 2] if stretch else 0.0,
        "stream_seconds_max": stretch[-1] if stretch else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--jobs", type=Path, required=True)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds to wait for every job to end")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    jobs = args.jobs.read_text().split()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args.port, args.token, jobs, args.deadline))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
