"""The push fast path (service/api/wire.py) under real uvicorn: bytes written under ASGI arrive whole and in order.

If uvicorn changes the protocol objects the wire reaches into, `sse_wire`/`ws_wire` turn the fast path off
(the normal path still delivers): these tests fail then, so it does not go unnoticed.
"""

from __future__ import annotations

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
from service.api.sse import HEADERS
from service.api.wire import chunk, sse_wire, ws_text_frame, ws_wire

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
        wire = sse_wire(scope)
        assert wire is not None and not wire.ready()  # nothing may go out before the headers
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        assert wire.ready()
        wire.write(chunk(b"data: direct\n\n"))
        await send({"type": "http.response.body", "body": b"data: normal\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def sse_probe(_: Request) -> Response:
    return DirectThenNormal()


async def ws_probe(ws: WebSocket) -> None:
    assert ws_wire(ws.scope) is not None
    await ws.accept()
    wire = ws_wire(ws.scope)
    assert wire is not None and wire.ready()
    wire.write(ws_text_frame(b"direct"))
    await ws.send_text("normal")
    await ws.close()
    assert not wire.ready()


async def test_sse_and_ws_wire_write_whole_frames_in_order() -> None:
    app = App(routes=[Route("/sse", sse_probe), WebSocketRoute("/ws", ws_probe)])
    async with serve(app) as live:
        async with httpx.AsyncClient(base_url=live.url) as http:
            r = await http.get("/sse")
        assert r.status_code == 200 and r.text == "data: direct\n\ndata: normal\n\n"
        url = live.url.replace("http://", "ws://") + "/ws"
        for compression in (None, "deflate"):  # permessage-deflate negotiated or not
            async with websockets.connect(url, compression=compression) as ws:
                assert [await ws.recv(), await ws.recv()] == ["direct", "normal"]
