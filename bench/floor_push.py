"""The floor of a push fan-out, the baseline row of scripts/bench-push: the least any Python server can do.

A bare uvloop protocol server, no framework: it answers any GET with a chunked `text/event-stream` response,
keeps the transports in a list, and for each message on one Redis channel writes the same pre-made HTTP
chunk to every one of them with one `transport.write`. No auth, no resume, no flow control, no per-client
state: what is left is the system call per client and the loop, which is what our gateway's per-client cost is
measured against (`sse ÷ floor` in the report).

python -m bench.floor_push   (REDIS_URL, FLOOR_CHANNEL, PORT)
"""

from __future__ import annotations

import asyncio
import json
import os

from redis.asyncio import Redis

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
HELLO = b'event: snapshot\ndata: {"kind":"snapshot"}\n\n'
HEALTH = b'{"gateway":{"connections":%d}}'


def chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


class Floor(asyncio.Protocol):
    clients: list[asyncio.Transport] = []

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.request = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.request += data
        if b"\r\n\r\n" not in self.request:
            return
        if self.request.startswith(b"GET /healthz"):
            body = HEALTH % len(Floor.clients)
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
            self.transport.write(head + body)
            self.request = b""
            return
        self.transport.write(HEAD + chunk(HELLO))
        Floor.clients.append(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport in Floor.clients:
            Floor.clients.remove(self.transport)


async def main() -> None:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(os.environ["FLOOR_CHANNEL"])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Floor, "127.0.0.1", int(os.environ["PORT"]), backlog=4096)
    async with server:
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                event = json.loads(msg["data"])
                data = chunk(b"id: %d\nevent: %s\ndata: %s\n\n" % (event["seq"], event["kind"].encode(), msg["data"]))
                for transport in Floor.clients:
                    transport.write(data)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
