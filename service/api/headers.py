"""Security headers on every HTTP response, pre-encoded once.

The page has no inline script or style, so a strict CSP fits: everything from this origin ('self' also covers
same-origin ws:/wss: in current browsers, so the WebSocket needs no connect-src), images also from https: and
data: (generated images), never framed, no plugins, no <base> rewriting. HSTS only on https responses: over plain
http a browser ignores it, and a dev server on http must not pin anything.

One page differs: the React example (/static/examples/react.html) needs an import map so that code written
`import … from "react"` runs without a build step, and browsers take an import map only inline (no `src`), so its
policy also allows that one script by its sha256 (script-src 'self' plus the hash: still no other inline script,
no eval). tests/test_react_example.py recomputes the hash from the file and runs the page under this policy.
"""

from __future__ import annotations

from starlette.types import Message, Scope, Send

from ..push.sse import STREAM_HEADERS

CSP = "default-src 'self'; img-src 'self' data: https:; frame-ancestors 'none'; object-src 'none'; base-uri 'none'"
HSTS = "max-age=31536000"
IMPORT_MAP_PAGE = "/static/examples/react.html"
IMPORT_MAP_SHA256 = "sAqtNEo75Y/c0c4mLEU1dvKjsxdA5c11HH3K613fzdk="
IMPORT_MAP_CSP = CSP.replace(
    "default-src 'self';", f"default-src 'self'; script-src 'self' 'sha256-{IMPORT_MAP_SHA256}';", 1
)

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
SECURITY_HEADERS_TLS: list[tuple[bytes, bytes]] = [*SECURITY_HEADERS, (b"strict-transport-security", HSTS.encode())]
_CSP_HEADER = (b"content-security-policy", CSP.encode())
_IMPORT_MAP_HEADER = (b"content-security-policy", IMPORT_MAP_CSP.encode())
IMPORT_MAP_HEADERS = [_IMPORT_MAP_HEADER if h == _CSP_HEADER else h for h in SECURITY_HEADERS]
IMPORT_MAP_HEADERS_TLS = [_IMPORT_MAP_HEADER if h == _CSP_HEADER else h for h in SECURITY_HEADERS_TLS]
# An event stream's headers (SseResponse sends them itself, not through `with_security_headers`): one of the two,
# chosen once per stream, no work per event.
SSE_HEADERS = [*STREAM_HEADERS, *SECURITY_HEADERS]
SSE_HEADERS_TLS = [*STREAM_HEADERS, *SECURITY_HEADERS_TLS]


def security_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    tls = scope.get("scheme") == "https"
    if scope.get("path") == IMPORT_MAP_PAGE:
        return IMPORT_MAP_HEADERS_TLS if tls else IMPORT_MAP_HEADERS
    return SECURITY_HEADERS_TLS if tls else SECURITY_HEADERS


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
