"""A TCP proxy a test can blackhole: a network path that drops packets (no FIN, no RST), then heals.

It forwards bytes both ways between each client and the real server. `cut()` makes it stop forwarding and stop
reading, on every connection, open or opened meanwhile: what was sent waits, unanswered, as on a path whose packets
are dropped (the client's own socket neither closes nor errors). `heal()` forwards everything held and what follows,
as a path that came back does for TCP connections that outlived the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Blackhole:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.open = asyncio.Event()
        self.open.set()
        self.port = 0
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def cut(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        await self.open.wait()  # a connection opened during a cut: accepted (the kernel did), then silence
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.open.wait()  # cut: read nothing more
                data = await src.read(65536)
                if not data:
                    break
                await self.open.wait()  # cut while reading: hold what was read
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.close()


@contextlib.asynccontextmanager
async def blackhole(host: str, port: int) -> AsyncIterator[Blackhole]:
    proxy = Blackhole(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
