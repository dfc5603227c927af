"""Long-lived streams served before Starlette's middleware stack: an idle stream suspends 3 of our frames, not ~12.

At thousands of open SSE streams every frame a stream keeps suspended is memory: Starlette's path runs through
ServerErrorMiddleware, AuthMiddleware, ExceptionMiddleware, the Router, the Route and its exception wrappers, each
a coroutine frame (and closures) kept alive for the stream's whole life. Here a GET on one of the listed routes is
matched with the route's own regex, identified (`identify`, as AuthMiddleware does), and its endpoint's refusals
mapped to the same JSON errors; the Request is dropped before the response streams. Every other request (and a
HEAD on these paths) still takes the full stack.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope

from .auth import authenticate
from .errors import ApiError, handle_api_error, handle_unexpected

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """The streaming routes that skip the stack; `match` says which endpoint (and path params) a request is for."""

    __slots__ = ("routes",)

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: list[tuple[re.Pattern[str], Endpoint]] = [(r.path_regex, r.endpoint) for r in routes]

    def match(self, scope: Scope) -> tuple[Endpoint, dict[str, Any]] | None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return None
        path = scope["path"]
        for regex, endpoint in self.routes:
            m = regex.match(path)
            if m is not None:
                return endpoint, m.groupdict()
        return None


async def direct_response(endpoint: Endpoint, scope: Scope, receive: Receive) -> Response:
    """The endpoint's response or its refusal as JSON (as the app's exception handlers answer). A frame of its
    own, gone (with the Request and all it parsed) before the response streams."""
    request = Request(scope, receive)
    try:
        await authenticate(scope)
        return await endpoint(request)
    except ApiError as exc:
        return await handle_api_error(request, exc)
    except Exception as exc:
        return await handle_unexpected(request, exc)
