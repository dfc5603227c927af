"""Long-lived streams (SSE and the WebSocket) served before Starlette's middleware stack: an idle stream suspends 3 of
our frames, not ~12.

At thousands of open SSE streams every frame a stream keeps suspended is memory: Starlette's path runs through
ServerErrorMiddleware, AuthMiddleware, ExceptionMiddleware, the Router, the Route and its exception wrappers, each
a coroutine frame (and closures) kept alive for the stream's whole life. Here a GET on one of the listed routes is
matched with the route's own regex, identified (`identify`, as AuthMiddleware does), and its endpoint's refusals
mapped to the same JSON errors; the Request is dropped before the response streams. Every other request (and a
HEAD on these paths) still takes the full stack.

The submit (POST /api/jobs) skips it too, for CPU rather than memory: the stack's dozen coroutine calls and `send`
wrappers cost 35–40 µs of a submission's ~210 µs (in-process, no HTTP). `direct_post` does what the stack does for it:
identify the caller, the CSRF rule for a cookie request, and the same JSON answer to every refusal.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from ..errors import AijobsError
from .auth import authenticate, csrf_refused
from .errors import handle_api_error, handle_http_exception, handle_unexpected

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """The streaming routes that skip the stack; `match` says which endpoint (and path params) a request is for."""

    __slots__ = ("routes",)

    def __init__(self, routes: Sequence[Route | WebSocketRoute]) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Any]] = [
            ("websocket" if isinstance(r, WebSocketRoute) else "http", r.path_regex, r.endpoint) for r in routes
        ]

    def match(self, scope: Scope) -> tuple[Any, dict[str, Any]] | None:
        """(endpoint, path params): an HTTP endpoint for a GET, a WebSocket endpoint for a handshake."""
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope.get("root_path"):
            return None
        if kind == "http" and scope["method"] != "GET":
            return None
        path = scope["path"]
        for route_kind, regex, endpoint in self.routes:
            if route_kind == kind and (m := regex.match(path)) is not None:
                return endpoint, m.groupdict()
        return None


async def direct_response(endpoint: Endpoint, scope: Scope, receive: Receive) -> Response:
    """The endpoint's response or its refusal as JSON (as the app's exception handlers answer). A frame of its
    own, gone (with the Request and all it parsed) before the response streams."""
    request = Request(scope, receive)
    try:
        await authenticate(scope)
        return await endpoint(request)
    except AijobsError as exc:
        return await handle_api_error(request, exc)
    except Exception as exc:
        return await handle_unexpected(request, exc)


async def direct_websocket(
    endpoint: Callable[[WebSocket], Awaitable[None]], scope: Scope, receive: Receive, send: Send
) -> None:
    """A WebSocket session without the middleware frames under it: identified as AuthMiddleware does; the endpoint
    refuses (close before accept: HTTP 403) whoever it must, as under the full stack."""
    await authenticate(scope)
    ws = WebSocket(scope, receive, send)
    try:
        await endpoint(ws)
    except WebSocketException as exc:  # as Starlette's ExceptionMiddleware answers it
        await ws.close(code=exc.code, reason=exc.reason)


async def direct_post(endpoint: Endpoint, scope: Scope, receive: Receive, allowed_origins: tuple[str, ...]) -> Response:
    """A POST's response or refusal, as AuthMiddleware, the exception handlers and the error middleware answer it."""
    await authenticate(scope)
    refusal = csrf_refused(scope, allowed_origins)
    if refusal is not None:
        return refusal
    request = Request(scope, receive)
    try:
        return await endpoint(request)
    except AijobsError as exc:
        return await handle_api_error(request, exc)
    except HTTPException as exc:  # the app's own handler for it, as ExceptionMiddleware finds it
        handler = getattr(scope.get("app"), "exception_handlers", {}).get(HTTPException, handle_http_exception)
        return await handler(request, exc)
    except Exception as exc:
        return await handle_unexpected(request, exc)
