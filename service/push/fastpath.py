"""Switches for the push fast paths: each turns itself off, for good in this process, on its first error.

The fast paths (a parked group's lane, a WebSocket's direct write) reach under ASGI into the server's
private objects (wire.py). If the server changes under them, the first call that fails must not
cost a client an event nor end the gateway's subscription task: the caller catches the error, calls `fail`,
and hands the event to the normal path, which every client always has. From then on nothing in this
process takes that fast path again; the error is logged once, with its traceback, and `/healthz` says so.
"""

from __future__ import annotations

import logging

log = logging.getLogger("aijobs.fastpath")


class FastPath:
    __slots__ = ("name", "on", "error")

    def __init__(self, name: str) -> None:
        self.name = name
        self.on = True
        self.error: str | None = None  # what turned it off: "<ExceptionType>: message"

    def fail(self, exc: BaseException) -> None:
        """Turn this fast path off; logs the first error only (a fan-out to thousands fails thousands of times)."""
        if not self.on:
            return
        self.on = False
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        log.error(
            "push fast path %s failed and is now off in this process; every event takes the normal path "
            "(the server's internals may have changed: check the uvicorn pin and tests/test_wire.py)",
            self.name,
            exc_info=exc,
        )


class FastPaths:
    """The gateway's switches, one per fast path: `sse_lane` and `ws_lane` (a parked group's fan-out, and
    the wire checks that decide whether a client may park), `ws_direct` (`WsSession.fast`), `sse_direct` (a
    `GET /api/events` stream's writes from the dispatch), and `ws_slim` (slim.py: not a write path, but uvicorn's
    objects too, trimmed after a WebSocket handshake)."""

    __slots__ = ("sse_lane", "ws_lane", "ws_direct", "sse_direct", "ws_slim")

    def __init__(self) -> None:
        self.sse_lane = FastPath("sse_lane")
        self.ws_lane = FastPath("ws_lane")
        self.ws_direct = FastPath("ws_direct")
        self.sse_direct = FastPath("sse_direct")
        self.ws_slim = FastPath("ws_slim")

    def all(self) -> tuple[FastPath, ...]:
        return (self.sse_lane, self.ws_lane, self.ws_direct, self.sse_direct, self.ws_slim)

    def report(self) -> dict[str, str]:
        """For /healthz: "on", or "off: <the error that turned it off>"."""
        return {p.name: "on" if p.on else f"off: {p.error}" for p in self.all()}
