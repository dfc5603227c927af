"""A tiny OpenAI-compatible server on a real loopback socket, for tests that must exercise real HTTP.

Usage::

    async with serve_fake_openai() as fake:
        provider = OpenAICompatProvider(base_url=fake.base_url, api_key="sk-test", default_model="gpt-test")
        fake.next_error(429, headers={"Retry-After": "3"})   # the next request gets this; later ones the default
        ...
        path, headers, body = fake.requests[-1]

Default answers:
    POST /v1/chat/completions   "Hello from fake: <last user content>" (JSON, or SSE when `stream: true`;
                                the SSE usage chunk is sent only when `stream_options.include_usage`)
    POST /v1/images/generations `n` copies of a 1x1 image (`image_type`, PNG unless set) as `b64_json`, or as a
                                `data:<type>;base64,` URL in `url` when `images_as = "data_url"` (some
                                OpenAI-compatible servers answer so, whatever `response_format` asked)

Scripting (each call queues one answer, consumed in order by the next requests, whatever their path):
    next_error(status, body=None, headers=None)   an error; `body` defaults to an OpenAI-style error object
    next_response(body, status=200, headers=None) any answer; a dict is sent as JSON, str/bytes raw
    next_stream(events, done=True)                an SSE answer: each event (dict -> JSON, or str) as `data:`
    hang()                                        never answer: a streaming request gets one "partial" delta
                                                  first. `client_disconnected` is set when the client hangs up.

A sustained limit, as OpenAI enforces one per key (`service/providers/upstream_limit.py`):
    fake.limit = UpstreamLimit(requests=10, period=2.0)   # a bucket of 10 calls refilled at 5 a second
Every unscripted answer then carries `x-ratelimit-*` headers, and a call the bucket cannot take is a 429 with
`Retry-After`; `fake.limit.answered` / `.refused` count them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.providers.upstream_limit import UpstreamLimit

REPLY_PREFIX = "Hello from fake: "
TINY_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
# 1x1 images of each raster type a provider may send, base64.
TINY_IMAGES = {
    "image/png": TINY_PNG_B64,
    "image/jpeg": "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP////////////////////////////////////////////////////////////"
    "//////////////////////////wgALCAABAAEBAREA/8QAFBABAAAAAAAAAAAAAAAAAAAAAP/aAAgBAQABPxA=",
    "image/gif": "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
    "image/webp": "UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==",
}


class Received(NamedTuple):
    path: str
    headers: dict[str, str]  # lower-cased names
    json: Any


@dataclass
class _Scripted:
    kind: str  # "response" | "stream" | "hang"
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any] | str] = field(default_factory=list)
    done: bool = True


class _Hang(Response):
    """Sends nothing (or one SSE delta), then waits for the client to disconnect or the server to stop."""

    def __init__(self, fake: FakeOpenAI, *, streaming: bool) -> None:
        super().__init__()
        self._fake = fake
        self._streaming = streaming

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._streaming:
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            chunk = _sse(
                {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "partial"}}]}
            )
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        disconnected = asyncio.ensure_future(_wait_disconnect(receive))
        released = asyncio.ensure_future(self._fake._released.wait())
        try:
            await asyncio.wait({disconnected, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            disconnected.cancel()
        if disconnected.done() and not disconnected.cancelled():
            self._fake.client_disconnected.set()


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class FakeOpenAI:
    """State of one fake server; build it with `serve_fake_openai()`."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[Received] = []
        self.script: deque[_Scripted] = deque()
        self.client_disconnected = asyncio.Event()
        self._released = asyncio.Event()
        self.images_as = "b64_json"  # or "data_url"
        self.image_type = "image/png"
        self.limit: UpstreamLimit | None = None
        self.gate: asyncio.Event | None = None  # set: every chat answer waits for it (calls held in flight)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/images/generations", self._images, methods=["POST"]),
            ]
        )

    def next_error(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        if body is None:
            body = {"error": {"message": f"fake error {status}", "type": "fake_error", "code": None}}
        self.script.append(_Scripted("response", status=status, body=body, headers=headers or {}))

    def next_response(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.script.append(_Scripted("response", status=status, body=body, headers=headers or {}))

    def next_stream(self, events: list[dict[str, Any] | str], *, done: bool = True) -> None:
        self.script.append(_Scripted("stream", events=list(events), done=done))

    def hang(self) -> None:
        self.script.append(_Scripted("hang"))

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(Received(request.url.path, dict(request.headers), body))
        return body

    def _limited(self, request: Request, body: Any) -> tuple[Response | None, dict[str, str]]:
        """The sustained limit's verdict on this call: a 429 to send, or the headers for the answer."""
        if self.limit is None:
            return None, {}
        body = body if isinstance(body, dict) else {}
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [] if isinstance(m, dict))
        tokens = (prompt + len(str(body.get("prompt", "")))) // 4 + int(body.get("max_tokens") or 100)
        allowed, _, headers = self.limit.take(request.headers.get("authorization", ""), tokens)
        if allowed:
            return None, headers
        error = {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}
        return JSONResponse({"error": error}, status_code=429, headers=headers), headers

    def _scripted(self, body: Any) -> Response | None:
        if not self.script:
            return None
        item = self.script.popleft()
        if item.kind == "hang":
            return _Hang(self, streaming=bool(isinstance(body, dict) and body.get("stream")))
        if item.kind == "stream":
            events = [_sse(e) for e in item.events] + ([_sse("[DONE]")] if item.done else [])
            return StreamingResponse(_iterate(events), media_type="text/event-stream")
        if isinstance(item.body, dict | list):
            return JSONResponse(item.body, status_code=item.status, headers=item.headers)
        return Response(item.body, status_code=item.status, headers=item.headers)

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        if self.gate is not None:
            await self.gate.wait()
        if (scripted := self._scripted(body)) is not None:
            return scripted
        refused, limit_headers = self._limited(request, body)
        if refused is not None:
            return refused
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return JSONResponse({"error": {"message": "messages is required", "code": "invalid"}}, status_code=400)
        user = next((m.get("content", "") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
        text = REPLY_PREFIX + str(user)
        model = body.get("model") or "fake-model"
        usage = {"prompt_tokens": 11, "completion_tokens": len(text.split()), "total_tokens": 11 + len(text.split())}
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": usage,
                },
                headers=limit_headers,
            )
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model}
        events: list[bytes] = [_sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
        for piece in _words(text):
            events.append(_sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}))
        events.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(_sse({**base, "choices": [], "usage": usage}))
        events.append(_sse("[DONE]"))
        return StreamingResponse(_iterate(events), media_type="text/event-stream", headers=limit_headers)

    async def _images(self, request: Request) -> Response:
        body = await self._record(request)
        if (scripted := self._scripted(body)) is not None:
            return scripted
        refused, limit_headers = self._limited(request, body)
        if refused is not None:
            return refused
        n = body.get("n", 1) if isinstance(body, dict) else 1
        b64 = TINY_IMAGES[self.image_type]
        item = {"url": f"data:{self.image_type};base64,{b64}"} if self.images_as == "data_url" else {"b64_json": b64}
        return JSONResponse({"created": 0, "data": [item for _ in range(int(n))]}, headers=limit_headers)


def _words(text: str) -> Iterator[str]:
    words = text.split(" ")
    for i, word in enumerate(words):
        yield word if i == len(words) - 1 else word + " "


async def _iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the test runner's signal handling alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn versions
        return None


@contextlib.asynccontextmanager
async def serve_fake_openai() -> AsyncIterator[FakeOpenAI]:
    """Run a `FakeOpenAI` on 127.0.0.1 (free port) for the duration of the block."""
    fake = FakeOpenAI()
    config = uvicorn.Config(
        fake.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", http="h11", timeout_graceful_shutdown=2
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the fake OpenAI server stopped during startup")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        fake.base_url = f"http://127.0.0.1:{port}/v1"
        yield fake
    finally:
        fake._released.set()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
