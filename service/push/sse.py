"""A light ASGI response for Server-Sent Events: one task per client, pre-encoded bytes, bounded sends.

sse-starlette runs a task group per client (a sender, a pinger, a disconnect listener) and encodes every
event per client; with thousands of clients that per-client work dominates. Here the client's own request
task runs the generator; the disconnect is awaited from callbacks (no second task) and cancels it; each send is bounded
by a timeout so a client that stops reading is dropped instead of holding memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

# An event stream's own headers; the caller adds the app's security headers (api/headers.py: SSE_HEADERS).
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_STREAM_NAMES = {name for name, _ in STREAM_HEADERS}
# A stream whose set-up failed (the store or Redis down as it subscribed) is refused like any API error, in JSON.
_UNAVAILABLE = (
    b'{"error": {"code": "stream_unavailable", "message": "The live stream could not start; reconnect in a few '
    b'seconds, or poll GET /api/jobs/{id} meanwhile."}}'
)

log = logging.getLogger("aijobs.push")


def _unavailable_headers(response: SseResponse) -> list[tuple[bytes, bytes]]:
    """The stream's security headers, as JSON with a Retry-After instead of an event stream."""
    kept = [(name, value) for name, value in response.start_headers if name not in _STREAM_NAMES]
    return [(b"content-type", b"application/json"), (b"retry-after", b"5"), *kept]


class _StallWatch:
    """One watchdog per process for every SSE send, instead of a timer per send per client.

    A response registers while one of its sends is in progress (most finish at once); every half second the
    watchdog cancels the task of any send older than its timeout. It runs only while some send is pending.
    """

    def __init__(self) -> None:
        self.open: dict[asyncio.Task[object], SseResponse] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, task: asyncio.Task[object], response: SseResponse) -> None:
        self.open[task] = response
        if self.task is None or self.task.done():
            # one for every stream: not in the context of the request that happened to start it
            self.task = asyncio.create_task(self._run(), name="aijobs-sse-stalls", context=contextvars.Context())

    def remove(self, task: asyncio.Task[object]) -> None:
        self.open.pop(task, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.open:
            await asyncio.sleep(0.5)
            now = loop.time()
            for task, response in list(self.open.items()):
                if response.sending_since and now - response.sending_since > response.send_timeout:
                    response.stalled = True
                    task.cancel()


_stalls: dict[asyncio.AbstractEventLoop, _StallWatch] = {}


def _stall_watch() -> _StallWatch:
    loop = asyncio.get_running_loop()
    watch = _stalls.get(loop)
    if watch is None:
        for old in [lp for lp in _stalls if lp.is_closed()]:
            del _stalls[old]
        watch = _stalls[loop] = _StallWatch()
    return watch


class _DisconnectWatch:
    """Waits for `http.disconnect` and cancels the response's task: `receive()` driven from callbacks, so an
    idle stream costs no task of its own (at thousands of clients each task is memory)."""

    __slots__ = ("receive", "task", "coro", "gone")

    def __init__(self, receive: Receive, task: asyncio.Task[object]) -> None:
        self.receive = receive
        self.task = task
        self.gone = False
        self.coro: Coroutine[Any, Any, Message] | None = None
        self._next()

    def _next(self) -> None:
        # ASGI types `receive` as returning any Awaitable; uvicorn's is an `async def`, a coroutine this drives by hand
        self.coro = self.receive()  # type: ignore[assignment]
        self._step(None)

    def _step(self, _: object) -> None:
        coro = self.coro
        if coro is None:
            return
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            if done.value["type"] == "http.disconnect":
                self.coro = None
                self.gone = True
                self.task.cancel()
            else:
                self._next()  # a request body message: keep listening
            return
        except BaseException:
            self.coro = None
            self.gone = True
            self.task.cancel()
            return
        if asyncio.isfuture(waiting):
            waiting._asyncio_future_blocking = False  # asyncio's protocol for a yielded future (as Task.__step does)
            waiting.add_done_callback(self._step)
        else:
            asyncio.get_running_loop().call_soon(self._step, None)

    def close(self) -> None:
        coro, self.coro = self.coro, None
        if coro is not None:
            coro.close()


class SseResponse(Response):
    """Streams the bytes an async generator yields; ends when it ends, the client leaves, or a send stalls.

    `headers` is the whole header block of the response start, built once by the caller (STREAM_HEADERS and the
    app's security headers), not per stream. `on_close` runs however it ends (a stream slot's release): here rather
    than in a wrapping response, whose frame each idle stream would keep suspended."""

    status_code = 200
    background = None

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        *,
        headers: list[tuple[bytes, bytes]],
        send_timeout: float = 10.0,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.events = body  # not `body`: Response.body is the bytes of a whole response
        self.start_headers = headers  # not `headers`: Response.headers is a view of raw_headers
        self.send_timeout = send_timeout
        self.on_close = on_close
        self.stalled = False
        self._sending_since = 0.0
        self._task: asyncio.Task[object] | None = None
        self._stalls: _StallWatch | None = None

    @property
    def sending_since(self) -> float:
        return self._sending_since

    @sending_since.setter
    def sending_since(self, value: float) -> None:
        """Loop time a send began (0: none pending); only pending sends are known to the watchdog."""
        self._sending_since = value
        if self._stalls is not None and self._task is not None:
            if value:
                self._stalls.add(self._task, self)
            else:
                self._stalls.remove(self._task)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = _DisconnectWatch(receive, task)
        stalls = self._stalls = _stall_watch()
        self._task = task
        loop = asyncio.get_running_loop()
        try:
            try:  # the stream's set-up (its subscription) is done before the client sees the headers
                first = await anext(self.events, b"")
            except Exception:
                log.exception("a live stream could not start")
                await send({"type": "http.response.start", "status": 503, "headers": _unavailable_headers(self)})
                await send({"type": "http.response.body", "body": _UNAVAILABLE, "more_body": False})
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.start_headers})
            if first:
                self.sending_since = loop.time()
                await send({"type": "http.response.body", "body": first, "more_body": True})
                self.sending_since = 0.0
                first = b""
            async for chunk in self.events:
                self.sending_since = loop.time()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.sending_since = 0.0
                chunk = b""  # not kept alive while the stream idles (a snapshot is big)
            self.sending_since = loop.time()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # The client left, or stopped reading for longer than the send timeout: drop it, its buffer
            # goes with it (it resumes with Last-Event-ID when it comes back).
            if not (watcher.gone or self.stalled):
                raise
            task.uncancel()
        except OSError:
            pass
        finally:
            stalls.remove(task)
            watcher.close()
            try:
                with contextlib.suppress(Exception):
                    await self.events.aclose()
            finally:
                if self.on_close is not None:
                    self.on_close()
