"""Request bodies are capped at MAX_BODY_BYTES on every route, before anything reads them.

The app checks each HTTP request before routing (and so before authentication): a declared Content-Length over
the cap is refused at once, nothing read; a body of unknown length (chunked) is counted as it arrives and refused
at the first piece past the cap, whoever reads it, so no handler ever holds more than the cap plus one piece
(uvicorn's own buffer of an unread body stops at 64 KiB: it pauses reading). `read_body` is how handlers read one.

A refusal does not close the connection: closing with unread bytes makes the kernel reset it, and a client still
sending (httpx with a 2 MB body, measured) then reports a read error instead of the 413. Left open, uvicorn
discards whatever of the body still comes, holding none of it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from .errors import ApiError, error_response

CODE = "body_too_large"


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        CODE,
        f"The request body is larger than {limit} bytes (MAX_BODY_BYTES); send a smaller one.",
    )


class _CappedReceive:
    """`receive` that refuses once the body read so far passes the cap (a chunked body: its length is not known)."""

    __slots__ = ("receive", "limit", "seen")

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.seen = 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise too_large(self.limit)
        return message


class BodyCap:
    """The cap the app applies to every HTTP request before routing it."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def guard(self, scope: Scope, receive: Receive) -> Receive | None:
        """The `receive` to run the request with, or None when its declared length is over the cap (refuse it).

        A declared length within the cap needs no counting: HTTP framing delivers exactly that many bytes."""
        length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and not chunked:
            return receive if not length.isdigit() or int(length) <= self.limit else None
        if chunked:
            return _CappedReceive(receive, self.limit)
        return receive

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = too_large(self.limit)
        await error_response(exc.status, exc.code, exc.message, exc.headers)(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, read in pieces and refused (413) as soon as it passes `limit`: never read in full first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
