"""The live-update endpoints: `GET /api/jobs/{id}/events` (SSE, one job), `GET /api/events` (SSE, every job of the
caller) and `WS /api/ws` (subscribe to jobs or "mine", with resume).

Here is what an HTTP endpoint decides: who is asking, whether the job is theirs, whether the resume point or
cursor is well formed, whether a WebSocket's origin may connect, and a stream slot (MAX_STREAMS), with each
refusal's JSON error. The streams themselves are service/push (its package docstring maps it): push/watch.py
says what a one-job stream sends, push/multiwatch.py the cursor of `GET /api/events`, push/ws.py the
WebSocket's messages. These routes skip Starlette's middleware (direct.py).
"""

from __future__ import annotations

import contextlib
import re

from starlette.exceptions import WebSocketException
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketState

from ..errors import AijobsError
from ..push.multiwatch import mine_events, multi_watch, parse_cursor
from ..push.slim import slim
from ..push.sse import SseResponse
from ..push.watch import JobWatch, watch_events
from ..push.wire import sse_wire, ws_wire
from ..push.ws import WsSession
from . import origins
from .auth import current_session, current_user, signed_in_by_cookie, unauthenticated
from .errors import ApiError, error_response, not_found
from .headers import sse_headers
from .state import app_state
from .submit_rules import acquire_stream_slot

# A resume point: the seq of the last event the client has (ASCII digits; empty: none). The contract states it.
RESUME_POINT = r"^[0-9]{0,12}$"


def parse_resume_point(raw: str | None, source: str = "Last-Event-ID") -> int | None:
    """A resume point: the seq of an event the client got; `source` names where it came from, for the refusal."""
    if raw is None or raw == "":
        return None
    if not re.fullmatch(RESUME_POINT, raw):
        raise ApiError(
            400,
            "invalid_last_event_id",
            f"{source} must be the seq of an event from this job (the number in its SSE id: line); leave it out to "
            "start from a snapshot.",
        )
    return int(raw)


async def job_events(request: Request) -> Response:
    state = app_state(request)
    user = current_user(request)
    job_id = request.path_params["job_id"]
    job = await state.store.get_owned(job_id, user)
    if job is None:
        raise not_found()
    header = request.headers.get("last-event-id")
    source = "Last-Event-ID" if header else "?after="
    after = parse_resume_point(header or request.query_params.get("after"), source)
    if after is not None and not await state.events.resumable(job_id, after, job.seq):
        raise ApiError(
            400,
            "invalid_last_event_id",
            f"{source} {after} is ahead of this job's events (its last seq is {job.seq}): resume after a seq you "
            "received, or leave it out to start from a snapshot.",
        )
    watch = JobWatch(job_id=job_id, user_id=user, store=state.store, events=state.events, jobs=state.jobs)
    slot = acquire_stream_slot(request, user)
    return SseResponse(
        watch_events(
            watch,
            state.gateway,
            after,
            sse_wire(request.scope, state.gateway.fast.sse_lane),
            session=current_session(request),
        ),
        headers=sse_headers(request.scope),
        send_timeout=state.settings.push_send_timeout,
        on_close=slot.release,
    )


async def all_events(request: Request) -> Response:
    """SSE of every job of the caller: active ones from a snapshot (or the cursor), new ones as they come."""
    state = app_state(request)
    user = current_user(request)
    header = request.headers.get("last-event-id")
    raw = header or request.query_params.get("cursor")
    try:
        cursor = parse_cursor(raw)
    except ValueError:
        raise ApiError(
            400,
            "invalid_last_event_id",
            f"{'Last-Event-ID' if header else '?cursor='} must be an id this stream sent (job_id:seq pairs joined "
            "by commas); leave it out to start every active job from a snapshot.",
        ) from None
    mw = multi_watch(state, user, current_session(request))
    slot = acquire_stream_slot(request, user)
    wire = sse_wire(request.scope, state.gateway.fast.sse_direct)  # live events written from the dispatch when idle
    return SseResponse(
        mine_events(mw, cursor, state.settings.sse_ping_seconds, wire),
        headers=sse_headers(request.scope),
        send_timeout=state.settings.push_send_timeout,
        on_close=slot.release,
    )


ORIGIN_NOT_ALLOWED = (
    "This page's origin may not open WebSockets here: serve the page from the app's own origin, or add its origin "
    "to ALLOWED_ORIGINS."
)
ORIGIN_REQUIRED = (
    "A WebSocket signed in by the session cookie must carry an Origin header (browsers send one); an API client "
    "signs in with 'Authorization: Bearer <token>' instead."
)


def origin_allowed(ws: WebSocket, allowed: tuple[str, ...]) -> bool:
    """Same origin as the app (scheme + Host) or listed in ALLOWED_ORIGINS (origins.origin_allowed).

    No Origin is fine for a Bearer client (not a browser: it had to hold the token), but not for a handshake
    signed in by the session cookie, which only a browser (or something replaying its cookie) sends: browsers
    always send Origin on a WebSocket handshake, so a cookie without one is refused (cross-site hijacking)."""
    origin = ws.headers.get("origin")
    if origin is None:
        return not signed_in_by_cookie(ws)
    return origins.origin_allowed(ws.scope, origin, allowed)


async def refuse(ws: WebSocket, exc: AijobsError) -> None:
    """Refuse the handshake before the upgrade with the JSON error and status an HTTP request would get, through the
    ASGI `websocket.http.response` extension (uvicorn offers it); under a server without it, a policy-violation close
    (HTTP 403) whose reason is the error code."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(error_response(exc.status, exc.code, exc.message, exc.headers))
    else:
        await ws.close(code=1008, reason=exc.code)


async def websocket_endpoint(ws: WebSocket) -> None:
    state = app_state(ws)
    if not origin_allowed(ws, state.settings.allowed_origins):
        if ws.headers.get("origin") is None:
            await refuse(ws, ApiError(403, "origin_required", ORIGIN_REQUIRED))
        else:
            await refuse(ws, ApiError(403, "origin_not_allowed", ORIGIN_NOT_ALLOWED))
        return
    try:
        user = current_user(ws)
    except WebSocketException:
        await refuse(ws, unauthenticated(ws))
        return
    try:
        slot = acquire_stream_slot(ws, user, "ws")
    except AijobsError as exc:  # over MAX_STREAMS: 429 too_many_streams, as for SSE
        await refuse(ws, exc)
        return
    try:
        session = current_session(ws)
        await ws.accept()
        fast = state.gateway.fast
        wire = ws_wire(ws.scope, fast.ws_lane, fast.ws_direct)
        if wire is not None:
            slim(wire.proto, fast.ws_slim)  # what uvicorn keeps after the handshake, trimmed (push/slim.py)
        # The handshake's headers said who and from where; nothing reads them after it. Kept, they are ~1 KB of
        # small objects per connection for the rest of its life (uvicorn's scope is this same dict).
        ws.scope["headers"] = []
        ws.__dict__.pop("_headers", None)  # Starlette's cached view of them
        await WsSession(ws, state, user, wire, session=session).run()
    finally:
        slot.release()
        if ws.application_state is WebSocketState.CONNECTED and ws.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close()
