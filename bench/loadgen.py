"""A small HTTP/1.1 load generator on raw asyncio streams: keep-alive connections, fixed concurrency.

Pure Python so the bench runs anywhere; it is far cheaper per request than a full client library, which
matters on a 2-core machine where the load generator shares the CPU with the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0  # in the measured window
    total: int = 0  # including the warm-up, for CPU per request
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def request_bytes(
    method: str, path: str, *, body: bytes = b"", host: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    port: int,
    make_request: Callable[[], bytes],
    *,
    concurrency: int = 50,
    seconds: float = 3.0,
    warmup: float = 0.5,
    ok: Callable[[int], bool] = lambda status: 200 <= status < 300,
) -> LoadResult:
    """Keep `concurrency` requests in flight for `warmup + seconds`; count only the last `seconds`."""
    result = LoadResult()
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                sent = time.perf_counter()
                now = loop.time()
                if now >= stop_at:
                    return
                writer.write(make_request())
                status = await _read_response(reader)
                result.total += 1
                if now >= measure_from:
                    result.requests += 1
                    result.latencies.append(time.perf_counter() - sent)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if not ok(status):
                        result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.seconds = loop.time() - measure_from  # until the last request started in the window came back
    return result
