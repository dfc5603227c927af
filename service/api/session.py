"""The browser session endpoints: sign in (a token, or the dev demo login), sign out, who am I.

Browsers never carry a long-lived token in a URL: POST /api/session trades a token (or, with AIJOBS_DEMO_LOGIN,
nothing) for an HttpOnly SameSite=Lax cookie (Secure unless COOKIE_SECURE=false), which EventSource and
same-origin fetch send by themselves. DELETE /api/session records the cookie's session id as signed out, so a
copy of the cookie stops working too. Demo login answers only a loopback Host on a loopback connection: a
rebinding DNS name (evil.example resolving to 127.0.0.1) or a LAN address gets no session.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..coordination import publish_signed_out
from .accounts import SESSION_MAX_AGE, Accounts, accounts
from .auth import SESSION_COOKIE, TOKEN_NOT_VALID, current_user, session_cookie
from .body import read_body
from .errors import ApiError
from .origins import loopback_request
from .state import app_state

log = logging.getLogger("aijobs.api")

DEMO_USER = "demo"


async def set_session(request: Request, response: Response, acc: Accounts, user_id: str) -> None:
    epoch = await acc.users.session_epoch(user_id)
    response.set_cookie(
        SESSION_COOKIE,
        acc.signer.sign(user_id, epoch or ""),
        max_age=SESSION_MAX_AGE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=acc.settings.cookie_secure or request.url.scheme == "https",
    )


async def sign_in_demo(request: Request, response: Response) -> None:
    """With AIJOBS_DEMO_LOGIN, a browser without a valid session becomes the demo user (dev only)."""
    acc = accounts(request)
    if not acc.settings.demo_login or not loopback_request(request.scope):
        return
    try:
        current_user(request)
        return
    except ApiError:
        pass
    demo = await acc.users.get_or_create(DEMO_USER)
    await set_session(request, response, acc, demo.id)


async def create_session(request: Request) -> Response:
    acc = accounts(request)
    raw = await read_body(request, acc.settings.max_body_bytes)  # capped: this runs before anyone is identified
    token: Any = None
    if raw.strip():
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
        if not isinstance(body, dict) or set(body) - {"token"}:
            raise ApiError(400, "invalid_body", 'Send {"token": "aij_…"}, or an empty body for the demo login.')
        token = body.get("token")
    if token is not None:
        if not isinstance(token, str) or not token:
            raise ApiError(422, "invalid_token", "'token' must be an API token string.", field="token")
        user = await acc.users.by_token(token)
        if user is None:
            raise ApiError(401, "unauthenticated", TOKEN_NOT_VALID)
    elif acc.settings.demo_login:
        if not loopback_request(request.scope):
            raise ApiError(
                401,
                "unauthenticated",
                "The demo login only answers requests to a loopback address (127.0.0.1, ::1 or localhost); "
                'send {"token": "aij_…"} (make one with `aijobs users create NAME`).',
            )
        user = await acc.users.get_or_create(DEMO_USER)
    else:
        raise ApiError(401, "unauthenticated", 'Send {"token": "aij_…"} (make one with `aijobs users create NAME`).')
    response = JSONResponse({"user": user.to_public()})
    await set_session(request, response, acc, user.id)
    return response


async def delete_session(request: Request) -> Response:
    """Sign out: the session is recorded as ended in the store (the system of record) and every web process is
    told at once; the browser's copy is cleared too."""
    acc = accounts(request)
    raw = session_cookie(request.scope)
    signed = acc.signer.verify(raw) if raw else None
    if signed is not None:
        await acc.users.sign_out(signed.session_id, signed.user_id, signed.expires)
        try:
            await publish_signed_out(app_state(request).redis, signed.session_id, signed.user_id)
        except Exception as exc:  # the store has it: other processes refuse it once their cache (30 s) lapses
            log.warning("could not broadcast a sign-out", extra={"error": repr(exc)})
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=acc.settings.cookie_secure)
    return response


async def me(request: Request) -> Response:
    acc = accounts(request)
    user = await acc.users.by_id(current_user(request))
    if user is None:
        raise ApiError(401, "unauthenticated", "Your user no longer exists; sign in again.")
    s = acc.settings
    return JSONResponse(
        {
            "user": user.to_public(),
            "limits": {
                "max_active_jobs": s.max_active_jobs,
                "submissions_per_minute": s.submissions_per_minute,
                "max_streams": s.max_streams,
                "max_input_bytes": acc.limits.byte_caps,
            },
        }
    )
