"""Wire encodings of an event, made once and cached on it, so a fan-out to N clients encodes once, not N times."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from ..models import Event, EventKind, dumps
from .wire import chunk, ws_text_frame

T = TypeVar("T", str, bytes)


def _cached(event: Event, key: str, make: Callable[[Event], T]) -> T:
    """The event's `key` encoding: made on first use, then the same object for every client of the fan-out."""
    cache = event.encoded
    if cache is None:
        cache = event.encoded = {}
    value = cache.get(key)
    if value is None:
        made = make(event)
        cache[key] = made
        return made
    return cast(T, value)  # what this key's maker made, the first time


def event_json(event: Event) -> str:
    """The event as JSON text: the SSE `data:` line and the WebSocket message are both this."""
    return _cached(event, "json", _make_json)


def sse_body(event: Event) -> bytes:
    """`event:` and `data:` lines of an SSE event, without its `id:` (which may differ per stream)."""
    return _cached(event, "sse", _make_sse_body)


def sse_frame(event: Event) -> bytes:
    """One whole SSE event for a one-job stream, where the id is the job's seq: shared by every client.

    A position update has no id: the client's resume point (Last-Event-ID) stays at the last logged event."""
    if event.kind is EventKind.POSITION:
        return sse_body(event)
    return _cached(event, "sse1", _make_sse_frame)


PING_FRAME = b": ping\n\n"

# Why the server ended a stream whose credential lapsed, as the API's 401 says it: sent last, then the stream closes.
ENDED_MESSAGES = {
    "signed_out": "This session was signed out; sign in again.",
    "revoked": "The account's API token was revoked; sign in again with the new one.",
}


def ended_error(reason: str) -> dict[str, str]:
    return {"code": "unauthenticated", "reason": reason, "message": ENDED_MESSAGES.get(reason, "Sign in again.")}


def sse_ended_frame(reason: str) -> bytes:
    """The last SSE event of a stream whose credential lapsed: `event: error` with the API's 401 error body."""
    return f"event: error\ndata: {dumps({'error': ended_error(reason)})}\n\n".encode()


PING_CHUNK = chunk(PING_FRAME)
WS_PING_FRAME = ws_text_frame(b'{"type":"ping"}')


def sse_chunk(event: Event) -> bytes:
    """`sse_frame` as one HTTP chunk, for writing straight to the socket (see wire.py)."""
    return _cached(event, "sse1c", _make_sse_chunk)


def ws_frame(event: Event) -> bytes:
    """The event's JSON as a whole WebSocket text frame, for writing straight to the socket (see wire.py)."""
    return _cached(event, "ws", _make_ws_frame)


# The makers are module functions, not lambdas: `sse_chunk` runs once per client per event, and a lambda would be
# a new function object on every call.
def _make_json(e: Event) -> str:
    return dumps(e.to_dict())


def _make_sse_body(e: Event) -> bytes:
    return f"event: {e.kind.value}\ndata: {event_json(e)}\n\n".encode()


def _make_sse_frame(e: Event) -> bytes:
    return b"id: %d\n" % e.seq + sse_body(e)


def _make_sse_chunk(e: Event) -> bytes:
    return chunk(sse_frame(e))


def _make_ws_frame(e: Event) -> bytes:
    return ws_text_frame(event_json(e).encode())
