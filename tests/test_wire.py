"""The push fast path (service/push/wire.py) under real uvicorn: bytes written under ASGI arrive whole and in order.

If uvicorn changes the protocol objects the wire reaches into, `sse_wire`/`ws_wire` turn the fast path off
(the normal path still delivers): these tests fail then, so it does not go unnoticed. They check every attribute
the wire reads (wire.py's lists), on live connections, and that the installed uvicorn is within the pin these
tests were run on (pyproject.toml).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from service.api.app import App
from service.api.headers import SSE_HEADERS
from service.push.fastpath import FastPath
from service.push.slim import SLIM_CONN_ATTRS, SLIM_PROTO_ATTRS, Flag, Inbox, slim
from service.push.wire import (
    RAW_SEND,
    SSE_CYCLE_ATTRS,
    SSE_FLOW_ATTRS,
    WS_CONN_ATTRS,
    WS_PROTO_ATTRS,
    chunk,
    sse_wire,
    ws_text_frame,
    ws_wire,
)

from .conftest import serve


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_ws_text_frame_parses_as_one_final_text_frame(size: int) -> None:
    payload = b"x" * size
    reader = StreamReader()
    reader.feed_data(ws_text_frame(payload))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    else:  # pragma: no cover
        pytest.fail("frame incomplete")
    assert (frame.opcode, frame.fin, frame.data, frame.rsv1) == (Opcode.TEXT, True, payload, False)


class DirectThenNormal(Response):
    """An SSE-like response: one chunk through the wire, one through ASGI send, then the end."""

    def __init__(self) -> None:
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = FastPath("sse_lane")
        wire = sse_wire(scope, path)
        assert wire is not None and path.on, path.error
        seen["sse"] = scope[RAW_SEND]
        assert not wire.ready()  # nothing may go out before the headers
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        assert wire.ready()
        wire.write(chunk(b"data: direct\n\n"))
        await send({"type": "http.response.body", "body": b"data: normal\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def sse_probe(_: Request) -> Response:
    return DirectThenNormal()


seen: dict[str, Any] = {}  # the server's `send` each probe saw (its owner is what the wire reads)


async def ws_probe(ws: WebSocket) -> None:
    assert ws_wire(ws.scope) is not None
    await ws.accept()
    path = FastPath("ws_lane")
    wire = ws_wire(ws.scope, path)
    assert wire is not None and path.on, path.error
    seen["ws"] = ws.scope[RAW_SEND]
    assert wire.ready()
    wire.write(ws_text_frame(b"direct"))
    await ws.send_text("normal")
    await ws.close()
    assert not wire.ready()


async def test_sse_and_ws_wire_write_whole_frames_in_order() -> None:
    app = App(routes=[Route("/sse", sse_probe), WebSocketRoute("/ws", ws_probe)], max_body_bytes=1024)
    async with serve(app) as live:
        async with httpx.AsyncClient(base_url=live.url) as http:
            r = await http.get("/sse")
        assert r.status_code == 200 and r.text == "data: direct\n\ndata: normal\n\n"
        url = live.url.replace("http://", "ws://") + "/ws"
        for compression in (None, "deflate"):  # permessage-deflate negotiated or not
            async with websockets.connect(url, compression=compression) as ws:
                assert [await ws.recv(), await ws.recv()] == ["direct", "normal"]
    check_server_objects()


def check_server_objects() -> None:
    """Every attribute the wire reads, with the type it expects, on the objects the probes met."""
    from websockets.protocol import State

    cycle = seen["sse"].__self__
    assert type(cycle).__module__ == "uvicorn.protocols.http.httptools_impl"
    assert all(hasattr(cycle, a) for a in SSE_CYCLE_ATTRS) and all(hasattr(cycle.flow, a) for a in SSE_FLOW_ATTRS)
    assert isinstance(cycle.flow.write_paused, bool) and isinstance(cycle.response_complete, bool)
    assert isinstance(cycle.transport, asyncio.Transport)
    proto = seen["ws"].__self__
    assert type(proto).__module__ == "uvicorn.protocols.websockets.websockets_sansio_impl"
    assert all(hasattr(proto, a) for a in WS_PROTO_ATTRS) and all(hasattr(proto.conn, a) for a in WS_CONN_ATTRS)
    assert isinstance(proto.writable, asyncio.Event) and isinstance(proto.conn.state, State)
    assert isinstance(proto.transport, asyncio.Transport)
    # The server's `send` the app records: awaited with one ASGI message.
    for send in (seen["sse"], seen["ws"]):
        assert inspect.iscoroutinefunction(send) and list(inspect.signature(send).parameters) == ["message"]


async def test_a_server_object_without_what_the_wire_reads_turns_the_path_off() -> None:
    """What a changed uvicorn looks like to the wire: it gives no wire and turns its fast path off."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    cycle = RequestResponseCycle.__new__(RequestResponseCycle)  # no attributes at all
    path = FastPath("sse_lane")

    async def send(message: Any) -> None: ...

    scope = {"type": "http", "method": "GET", RAW_SEND: send.__get__(cycle)}
    assert sse_wire(scope, path) is None
    assert not path.on and path.error is not None and "transport" in path.error
    assert sse_wire(scope, path) is None, "off stays off"


def pinned(name: str) -> str:
    """The version specifier of `name` in pyproject.toml's dependencies."""
    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.name == name:
            return str(req.specifier)
    raise AssertionError(f"{name} not in dependencies")


def test_installed_uvicorn_is_the_pinned_one() -> None:
    """The pin is what these tests prove: an upper bound, and the installed version inside it."""
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(pinned("uvicorn"))
    assert any(s.operator == "<" for s in spec), "uvicorn needs an upper bound: wire.py reads its internals"
    assert version("uvicorn") in spec


async def ws_slim_probe(ws: WebSocket) -> None:
    """Accept, trim uvicorn's protocol (slim.py), then echo two messages and write one frame through the wire."""
    await ws.accept()
    wire = ws_wire(ws.scope)
    assert wire is not None
    proto = wire.proto
    # What slim expects of the pinned uvicorn, on a live connection: every attribute it touches, of these types.
    assert all(hasattr(proto, a) for a in SLIM_PROTO_ATTRS) and all(hasattr(proto.conn, a) for a in SLIM_CONN_ATTRS)
    assert type(proto.queue) is asyncio.Queue and type(proto.writable) is asyncio.Event
    assert proto.request is not None and proto.response is not None
    path = FastPath("ws_slim")
    assert slim(proto, path), path.error
    assert isinstance(proto.queue, Inbox) and isinstance(proto.writable, Flag)
    assert proto.request is None and proto.response is None and proto.conn.available_extensions == []
    for _ in range(2):
        await ws.send_text("echo " + await ws.receive_text())
    assert wire.ready()
    wire.write(ws_text_frame(b"direct"))
    seen["slim"] = ws.scope[RAW_SEND]
    await ws.receive_text()  # the client's last word, then its close


async def test_a_slimmed_websocket_still_receives_sends_and_closes() -> None:
    app = App(routes=[WebSocketRoute("/ws", ws_slim_probe)], max_body_bytes=1024)
    async with serve(app) as live:
        url = live.url.replace("http://", "ws://") + "/ws"
        async with websockets.connect(url) as ws:
            await ws.send("a")
            await ws.send("b")  # queued behind the first, in the trimmed inbox
            assert [await ws.recv(), await ws.recv(), await ws.recv()] == ["echo a", "echo b", "direct"]
            await ws.send("bye")
        proto = seen["slim"].__self__
        for _ in range(200):
            if proto.disconnected:
                break
            await asyncio.sleep(0.01)
        assert proto.disconnected and proto.writable.is_set()


def test_slim_on_an_unexpected_object_changes_nothing_and_turns_itself_off() -> None:
    class Changed:  # what a changed uvicorn could look like: the queue is something else
        queue: Any = object()
        writable = asyncio.Event()
        request = response = object()
        handshake_complete = True

        class conn:
            available_extensions: list[Any] = [object()]

    proto = Changed()
    path = FastPath("ws_slim")
    assert not slim(proto, path)
    assert not path.on and path.error is not None and "queue" in path.error
    assert proto.request is not None and proto.conn.available_extensions, "left as it was"


async def test_inbox_and_flag_wake_their_waiters() -> None:
    inbox = Inbox([])
    got = asyncio.ensure_future(inbox.get())
    cancelled = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    inbox.put_nowait(1)
    assert await got == 1 and inbox.empty()
    flag = Flag(False)
    waiting = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    flag.set()
    assert await waiting is True and flag.is_set()


def test_a_relayed_events_published_json_is_what_encoding_it_again_would_make() -> None:
    """The gateway sends every client the JSON as it was published (Event.to_json on the worker) instead of
    encoding the decoded event again: the two must be the same text, for every kind, text and number."""
    from service.models import Event, EventKind, dumps

    samples = [
        Event(job_id="j", seq=3, kind=EventKind.DELTA, data={"text": 'Grüße, 世界 "q" \\n ✓'}, ts=1796316119.4125),
        Event(job_id="j", seq=4, kind=EventKind.PROGRESS, data={"percentage": 33.3, "current_step": None}),
        Event(
            job_id="j",
            seq=9,
            kind=EventKind.STATUS,
            data={"status": "completed", "attempt": 1, "result": {"titles": ["a", "b"], "n": 2, "x": 1e-7}},
        ),  # fmt: skip
    ]
    for event in samples:
        published = event.to_json()
        relayed = Event.from_dict(json.loads(published))
        assert dumps(relayed.to_dict()) == published
