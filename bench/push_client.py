"""The load client of scripts/bench-push: N subscribers in one process, bare uvloop protocols, time stamps only.

Several of these run side by side for 10,000 subscribers (file descriptors per process, and a second core to read
with). The bench drives each over stdin/stdout, one JSON line each way:
  → {"ready": true, "connect_s": S}   once all N have their snapshot (then it listens)
  ← "go"                              → {"go": true}: events are about to flow (CPU counted from here)
  ← "stop"                            → {"lat_ms": [...], "cpu_s": S} (publish → read, every client and event)
and then it closes its sockets and exits.

python -m bench.push_client '{"transport": "sse"|"mine"|"ws"|"floor"|"naive", "port": P, "job_id": J, "token": T,
  "n": N}'
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import sys
import time
from typing import Any

STAMP = re.compile(rb'"t":([0-9.]+)')
SNAPSHOT = b'"kind":"snapshot"'
WS_PING = b"\x89\x04"  # uvicorn's keepalive ping: 4 bytes of payload (JSON text never holds byte 0x89)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Client(asyncio.Protocol):
    """One subscriber: notes when the snapshot arrived and the receive time of every stamped event."""

    def __init__(self, hello: tuple[bytes, bytes], ready: asyncio.Future[None], lat: list[float]) -> None:
        self.hello, self.after_upgrade = hello
        self.ws = bool(self.after_upgrade)
        self.ready = ready
        self.lat = lat
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hello)

    def pong(self, data: bytes) -> None:
        """Answer uvicorn's keepalive pings (unanswered, it closes the connection after ws_ping_timeout)."""
        at = data.find(WS_PING)
        while at >= 0:
            payload = data[at + 2 : at + 6]
            if len(payload) == 4 and self.transport is not None:
                self.transport.write(b"\x8a\x84\x00\x00\x00\x00" + payload)  # masked with zeros
            at = data.find(WS_PING, at + 6)

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
        elif self.ws and WS_PING in data:
            self.pong(data)
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


def sse_hello(port: int, job_id: str, token: str, path: str = "") -> tuple[bytes, bytes]:
    path = path or f"/api/jobs/{job_id}/events"
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    return head.encode(), b""


def hello_for(transport: str, port: int, job_id: str, token: str) -> tuple[bytes, bytes]:
    """What a client of `transport` sends: "ws", "mine" (`GET /api/events`), else a one-job SSE stream."""
    if transport == "ws":
        return ws_hello(port, job_id, token)
    return sse_hello(port, job_id, token, "/api/events" if transport == "mine" else "")


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
            await asyncio.wait_for(ready, 120)

    await asyncio.gather(*(one() for _ in range(n)))
    return clients


async def _line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(spec: dict[str, Any]) -> None:
    hello = hello_for(spec["transport"], spec["port"], spec["job_id"], spec["token"])
    lat: list[float] = []
    t0 = time.monotonic()
    clients = await connect_all(spec["port"], hello, spec["n"], lat)
    lat.clear()  # nothing is published before every process is ready
    _say({"ready": True, "connect_s": round(time.monotonic() - t0, 2)})
    while (await _line()).strip() != "go":
        pass
    cpu0 = time.process_time()
    _say({"go": True})
    while (await _line()).strip() != "stop":
        pass
    cpu = time.process_time() - cpu0
    _say({"lat_ms": [round(x * 1000, 3) for x in lat], "cpu_s": round(cpu, 3)})
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


if __name__ == "__main__":
    raise_fd_limit()
    import uvloop

    uvloop.run(main(json.loads(sys.argv[1])))
