"""Less memory per open WebSocket: what uvicorn's websockets-sansio protocol keeps after the handshake, trimmed.

At 10,000 WebSockets every object a connection keeps is memory and garbage-collector work (a full collection
walks them all). uvicorn keeps, for the connection's whole life, things only its handshake needed (the parsed
`Request`, the `Response` it sent, the permessage-deflate offer factory), and an `asyncio.Queue` and an
`asyncio.Event` whose four empty deques alone cost ~3 KB. After accept, `slim` drops the former and swaps the latter
for list-based equivalents with the calls uvicorn makes of them (`put_nowait`/`get`/`empty`; `set`/`clear`/
`is_set`/`wait`).

These are uvicorn's private objects, as for the wire (wire.py): uvicorn is pinned, tests/test_wire.py checks every
attribute this touches on a live connection, and any surprise (an attribute missing, a type not the one expected,
a waiter already parked on the old objects) leaves the connection as uvicorn made it and turns `ws_slim` off for the
process, logged once (fastpath.py): the connection works either way, it only costs more.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .fastpath import FastPath

# What `slim` replaces or drops on uvicorn's WebSocketsSansIOProtocol (and on its websockets ServerProtocol `conn`).
SLIM_PROTO_ATTRS = ("queue", "writable", "request", "response", "handshake_complete", "conn")
SLIM_CONN_ATTRS = ("available_extensions",)


class Inbox:
    """asyncio.Queue's calls uvicorn makes (`put_nowait`, `get`, `empty`), on a list: no deques, no Event."""

    __slots__ = ("items", "waiters")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.waiters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        self.items.append(item)
        waiters = self.waiters
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
                    break

    def empty(self) -> bool:
        return not self.items

    def qsize(self) -> int:
        return len(self.items)

    def get_nowait(self) -> Any:
        if not self.items:
            raise asyncio.QueueEmpty
        return self.items.pop(0)

    async def get(self) -> Any:
        while not self.items:
            waiter = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # cancelled after being chosen: pass the wake-up on, so no item waits behind a cancelled getter
                if waiter.done() and not waiter.cancelled() and self.items:
                    self._wake_next()
                raise
            finally:
                self.waiters.remove(waiter)
                if not self.waiters:
                    self.waiters = None
        return self.items.pop(0)

    def _wake_next(self) -> None:
        for waiter in self.waiters or ():
            if not waiter.done():
                waiter.set_result(None)
                return


class Flag:
    """asyncio.Event's calls uvicorn makes (`set`, `clear`, `is_set`, `wait`), with no deque until someone waits."""

    __slots__ = ("on", "waiters")

    def __init__(self, on: bool) -> None:
        self.on = on
        self.waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self.on

    def set(self) -> None:
        self.on = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.on = False

    async def wait(self) -> bool:
        if self.on:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            if self.waiters is not None and waiter in self.waiters:
                self.waiters.remove(waiter)
        return True


def slim(proto: Any, path: FastPath) -> bool:
    """Trim an accepted WebSocket's uvicorn protocol (`proto`: the object behind ws_wire's `WsWire.proto`); call
    right after accept, before anything reads from it. True if done; on any surprise nothing is changed and `path`
    goes off."""
    if not path.on:
        return False
    try:
        for name in SLIM_PROTO_ATTRS:
            if not hasattr(proto, name):
                raise AttributeError(f"{type(proto).__qualname__} has no attribute {name!r}")
        for name in SLIM_CONN_ATTRS:
            if not hasattr(proto.conn, name):
                raise AttributeError(f"{type(proto.conn).__qualname__} has no attribute {name!r}")
        queue, writable = proto.queue, proto.writable
        if type(queue) is not asyncio.Queue or type(writable) is not asyncio.Event:
            raise TypeError(f"unexpected queue {type(queue).__name__} / writable {type(writable).__name__}")
        if not proto.handshake_complete:
            raise RuntimeError("slim called before the handshake completed")
        if not writable.is_set() or any(not g.done() for g in getattr(queue, "_getters", ())):
            return False  # a send or a receive may be waiting on them: leave this connection as it is (not a fault)
        items: list[Any] = []
        while not queue.empty():
            items.append(queue.get_nowait())
        proto.queue = Inbox(items)
        proto.writable = Flag(True)
        proto.request = None
        proto.response = None
        proto.conn.available_extensions = []
    except Exception as exc:
        path.fail(exc)
        return False
    return True
