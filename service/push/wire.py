"""Pre-encoded bytes written straight to a client's socket, from the gateway's dispatch.

A live event sent to 5,000 clients should cost one `transport.write` of the same bytes per client and
nothing else: no task wake-up, no ASGI message dict, no per-client encoding. ASGI has no such call, so this
reaches under it: the app records the server's own `send` in the scope (`RAW_SEND`); under uvicorn's
httptools HTTP and websockets-sansio WebSocket protocols that is a bound method of the object that holds
the connection's transport and state. A write goes direct only while the connection is open, its response
(or handshake) under way and its write buffer empty; a client that reads slowly takes the normal path, with
its flow control and coalescing. Under any other server `sse_wire`/`ws_wire` return None and callers keep
the normal path.

These are uvicorn's private objects, so uvicorn is pinned (pyproject.toml) to the versions tests/test_wire.py
has proven, and that test checks every attribute listed below on live connections. Should they change anyway,
`sse_wire`/`ws_wire` find the attribute missing and turn their fast path off (fastpath.py) instead of
returning a wire; an error later, in a lane or a direct write, does the same from the gateway.

Bytes written here never interleave with the normal path's: both write whole frames synchronously to the
same transport, and callers use the wire only while their own task is idle (between sends).
"""

from __future__ import annotations

from typing import Any

from starlette.types import Scope

from .fastpath import FastPath

RAW_SEND = "aijobs.raw_send"

_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
_WS_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"

# What the wire reads on uvicorn's objects: an httptools RequestResponseCycle, a WebSocketsSansIOProtocol.
SSE_CYCLE_ATTRS = ("transport", "flow", "response_started", "chunked_encoding", "response_complete", "disconnected")
SSE_FLOW_ATTRS = ("write_paused",)
WS_PROTO_ATTRS = (
    "transport",
    "conn",
    "handshake_complete",
    "close_sent",
    "disconnected",
    "initial_response",
    "writable",
)
WS_CONN_ATTRS = ("state", "extensions")  # websockets' ServerProtocol


def chunk(body: bytes) -> bytes:
    """One HTTP/1.1 chunk (SSE responses have no Content-Length, so uvicorn sends them chunked)."""
    return b"%x\r\n%b\r\n" % (len(body), body)


def ws_text_frame(payload: bytes) -> bytes:
    """A whole unmasked server→client text frame (FIN, opcode 1): the same bytes serve every client."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


class SseWire:
    """The raw socket of one SSE response (uvicorn httptools)."""

    __slots__ = ("cycle",)

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle

    def ready(self) -> bool:
        """True if a chunk written now goes straight out, after everything sent before it."""
        c = self.cycle
        t = c.transport
        return bool(
            c.response_started
            and c.chunked_encoding
            and not c.response_complete
            and not c.disconnected
            and not c.flow.write_paused
            and not t.get_write_buffer_size()
            and not t.is_closing()
        )

    @property
    def transport(self) -> Any:
        return self.cycle.transport

    def write(self, data: bytes) -> None:
        self.cycle.transport.write(data)


class WsWire:
    """The raw socket of one accepted WebSocket (uvicorn websockets-sansio)."""

    __slots__ = ("proto", "open_state")

    def __init__(self, proto: Any) -> None:
        from websockets.protocol import State

        self.proto = proto
        self.open_state = State.OPEN

    def ready(self) -> bool:
        p = self.proto
        t = p.transport
        return bool(
            p.handshake_complete
            and not p.close_sent
            and not p.disconnected
            and p.initial_response is None
            and p.writable.is_set()
            and p.conn.state is self.open_state
            and not t.get_write_buffer_size()
            and not t.is_closing()
        )

    @property
    def transport(self) -> Any:
        return self.proto.transport

    def write(self, data: bytes) -> None:
        self.proto.transport.write(data)


def _server_object(scope: Scope, module: str) -> Any:
    """uvicorn's object behind this connection, if it is the one the wire knows (`module`), else None."""
    send = scope.get(RAW_SEND)
    owner = getattr(send, "__self__", None)
    if owner is None or type(owner).__module__ != module:
        return None
    return owner


def _missing(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if not hasattr(obj, name):
            raise AttributeError(f"{type(obj).__module__}.{type(obj).__qualname__} has no attribute {name!r}")


def _fail(paths: tuple[FastPath, ...], exc: Exception) -> None:
    for path in paths:
        path.fail(exc)


def sse_wire(scope: Scope, *paths: FastPath) -> SseWire | None:
    """The wire of an SSE response under uvicorn's httptools protocol, else None (also when every one of the fast
    `paths` that would use it is off). uvicorn's object lacking what the wire reads turns `paths` off: it is
    not the uvicorn this was proven on."""
    if paths and not any(p.on for p in paths):
        return None
    cycle = _server_object(scope, _HTTPTOOLS)
    if cycle is None or scope.get("method") != "GET":
        return None
    try:
        _missing(cycle, SSE_CYCLE_ATTRS)
        _missing(cycle.flow, SSE_FLOW_ATTRS)
    except Exception as exc:
        _fail(paths, exc)
        return None
    return SseWire(cycle)


def ws_wire(scope: Scope, *paths: FastPath) -> WsWire | None:
    """Call after accept: only plain frames are written, so only no extension or permessage-deflate (whose
    RFC 7692 lets any message go uncompressed, RSV1 clear) is allowed. As `sse_wire` for a changed uvicorn."""
    if paths and not any(p.on for p in paths):
        return None
    proto = _server_object(scope, _WS_SANSIO)
    if proto is None:
        return None
    try:
        from websockets.extensions.permessage_deflate import PerMessageDeflate

        _missing(proto, WS_PROTO_ATTRS)
        _missing(proto.conn, WS_CONN_ATTRS)
        if not all(isinstance(ext, PerMessageDeflate) for ext in proto.conn.extensions):
            return None
        return WsWire(proto)
    except Exception as exc:
        _fail(paths, exc)
        return None
