"""Security headers on every HTTP response, pre-encoded once.

The page has no inline script or style, so a strict CSP fits: everything from this origin ('self' also covers
same-origin ws:/wss: in current browsers, so the WebSocket needs no connect-src), images also from https: and
data: (generated images), never framed, no plugins, no <base> rewriting. HSTS only on https responses: over plain
http a browser ignores it, and a dev server on http must not pin anything.
"""

from __future__ import annotations

from starlette.types import Message, Scope, Send

from ..push.sse import STREAM_HEADERS

CSP = "default-src 'self'; img-src 'self' data: https:; frame-ancestors 'none'; object-src 'none'; base-uri 'none'"
HSTS = "max-age=31536000"

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
SECURITY_HEADERS_TLS: list[tuple[bytes, bytes]] = [*SECURITY_HEADERS, (b"strict-transport-security", HSTS.encode())]
# An event stream's headers (SseResponse sends them itself, not through `with_security_headers`): one of the two,
# chosen once per stream, no work per event.
SSE_HEADERS = [*STREAM_HEADERS, *SECURITY_HEADERS]
SSE_HEADERS_TLS = [*STREAM_HEADERS, *SECURITY_HEADERS_TLS]


def security_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    return SECURITY_HEADERS_TLS if scope.get("scheme") == "https" else SECURITY_HEADERS


def sse_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    return SSE_HEADERS_TLS if scope.get("scheme") == "https" else SSE_HEADERS


def with_security_headers(scope: Scope, send: Send) -> Send:
    """`send` that adds the headers to the response start (whatever answered: a route, an error handler, a 500)."""
    extra = security_headers(scope)

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return sending
