"""A light ASGI response for Server-Sent Events: one task per client, pre-encoded bytes, bounded sends.

sse-starlette runs a task group per client (a sender, a pinger, a disconnect listener) and encodes every
event per client; with thousands of clients that per-client work dominates. Here the client's own request
task runs the generator; a single small task waits for the disconnect and cancels it; each send is bounded
by a timeout so a client that stops reading is dropped instead of holding memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Scope, Send

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class SseResponse:
    """Streams the bytes an async generator yields; ends when it ends, the client leaves, or a send stalls."""

    def __init__(self, body: AsyncIterator[bytes], *, send_timeout: float = 10.0) -> None:
        self.body = body
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch_disconnect() -> None:
            nonlocal gone
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    task.cancel()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            async for chunk in self.body:
                async with asyncio.timeout(self.send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            async with asyncio.timeout(self.send_timeout):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        except TimeoutError:
            pass  # a client that stopped reading: drop it, its buffer goes with it
        except OSError:
            pass
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(Exception):
                await self.body.aclose()  # type: ignore[attr-defined]
