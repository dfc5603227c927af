"""Wire encodings of an event, made once and cached on it, so a fan-out to N clients encodes once, not N times."""

from __future__ import annotations

from ..models import Event, EventKind, dumps
from .wire import chunk, ws_text_frame


def event_json(event: Event) -> str:
    """The event as JSON text: the SSE `data:` line and the WebSocket message are both this."""
    cache = event.encoded
    if cache is None:
        cache = event.encoded = {}
    text = cache.get("json")
    if text is None:
        text = cache["json"] = dumps(event.to_dict())
    assert isinstance(text, str)
    return text


def sse_body(event: Event) -> bytes:
    """`event:` and `data:` lines of an SSE event, without its `id:` (which may differ per stream)."""
    cache = event.encoded
    body = cache.get("sse") if cache is not None else None
    if body is None:
        body = f"event: {event.kind.value}\ndata: {event_json(event)}\n\n".encode()
        assert event.encoded is not None
        event.encoded["sse"] = body
    assert isinstance(body, bytes)
    return body


def sse_frame(event: Event) -> bytes:
    """One whole SSE event for a one-job stream, where the id is the job's seq: shared by every client.

    A position update has no id: the client's resume point (Last-Event-ID) stays at the last logged event."""
    if event.kind is EventKind.POSITION:
        return sse_body(event)
    cache = event.encoded
    frame = cache.get("sse1") if cache is not None else None
    if frame is None:
        frame = b"id: %d\n" % event.seq + sse_body(event)
        assert event.encoded is not None
        event.encoded["sse1"] = frame
    assert isinstance(frame, bytes)
    return frame


PING_FRAME = b": ping\n\n"
PING_CHUNK = chunk(PING_FRAME)
WS_PING_FRAME = ws_text_frame(b'{"type":"ping"}')


def sse_chunk(event: Event) -> bytes:
    """`sse_frame` as one HTTP chunk, for writing straight to the socket (see wire.py)."""
    cache = event.encoded
    data = cache.get("sse1c") if cache is not None else None
    if data is None:
        data = chunk(sse_frame(event))
        assert event.encoded is not None
        event.encoded["sse1c"] = data
    assert isinstance(data, bytes)
    return data


def ws_frame(event: Event) -> bytes:
    """The event's JSON as a whole WebSocket text frame, for writing straight to the socket (see wire.py)."""
    cache = event.encoded
    data = cache.get("ws") if cache is not None else None
    if data is None:
        data = ws_text_frame(event_json(event).encode())
        assert event.encoded is not None
        event.encoded["ws"] = data
    assert isinstance(data, bytes)
    return data
