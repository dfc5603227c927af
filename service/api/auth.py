"""Who is calling: a Bearer API token (API clients) or a signed session cookie (browsers, EventSource).

`AuthMiddleware` identifies the caller once per HTTP request or WebSocket handshake and leaves the answer in the
scope; `current_user(conn)` is the one entry point handlers use, and it refuses anyone unidentified. Routes that
never call it (/, /healthz, /static, the OpenAPI document) stay public.
"""

from __future__ import annotations

from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import AijobsError, ApiError, StoreUnavailable
from .accounts import accounts_from_scope
from .errors import error_response
from .origins import UNSAFE_METHODS, csrf_refusal

SESSION_COOKIE = "aijobs_session"
_SCOPE_KEY = "aijobs.identity"
HOW_TO_AUTH = (
    "Send 'Authorization: Bearer <token>' (make a token with `aijobs users create NAME`; `scripts/aijobs` in a "
    "checkout), or sign in through POST /api/session to get a session cookie."
)
TOKEN_NOT_VALID = (
    "That API token is not valid: it is mistyped, or it was revoked. Check it, or get a new one "
    "(`aijobs users revoke NAME --new-token` prints one)."
)


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str | None
    problem: str | None = None  # why a credential that was sent was refused
    via: str | None = None  # "bearer" | "cookie": a cookie is sent by browsers on their own, so it needs an Origin
    outage: StoreUnavailable | None = None  # the store could not say who this is: 503, not 401
    session: str | None = None  # the browser session's id (cookie): its open streams end when it signs out


class AuthMiddleware:
    """Pure ASGI (so it also covers WebSocket handshakes and never buffers a stream). Refuses a cookie request
    that changes something but may come from another site (origins.csrf_refusal) before any handler runs."""

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed_origins = allowed_origins  # ALLOWED_ORIGINS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            await authenticate(scope)
        if scope["type"] == "http":
            refusal = csrf_refused(scope, self.allowed_origins)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def csrf_refused(scope: Scope, allowed_origins: tuple[str, ...]) -> Response | None:
    """The 403 for an identified HTTP request that changes something but may come from another site (None: it may
    go on): AuthMiddleware's rule, also applied by the submit path that skips the stack (direct.py)."""
    if scope["method"] not in UNSAFE_METHODS:
        return None
    by_cookie = scope[_SCOPE_KEY].via == "cookie"
    why = csrf_refusal(scope, by_cookie=by_cookie, allowed=allowed_origins)
    return error_response(403, "csrf_refused", why) if why is not None else None


async def authenticate(scope: Scope) -> None:
    """Identify the caller and leave the answer in the scope, for `current_user`. A store outage is left there too,
    not raised: raised here (under the exception handlers) it would be a 500; kept, a route that needs the caller
    answers 503 store_unavailable (HTTP, SSE, a WebSocket's handshake) and one that does not still works."""
    try:
        scope[_SCOPE_KEY] = await identify(scope)
    except StoreUnavailable as exc:
        scope[_SCOPE_KEY] = Identity(None, outage=exc)


async def identify(scope: Scope) -> Identity:
    acc = accounts_from_scope(scope)
    if acc is None:
        return Identity(None)
    auth = cookies = None
    for name, value in scope.get("headers", ()):  # ASGI names are lower-case; only two of them matter here
        if name == b"authorization":
            auth = value.decode("latin-1")
        elif name == b"cookie":
            cookies = value.decode("latin-1")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Identity(None, "The Authorization header must be 'Bearer <token>'.")
        user = await acc.users.by_token(token.strip())
        if user is None:
            return Identity(None, TOKEN_NOT_VALID)
        return Identity(user.id, via="bearer")
    cookie = _session_cookie(cookies)
    if cookie:
        signed = acc.signer.verify(cookie)
        if signed is None:
            return Identity(None, "Your session has expired or is not valid; sign in again.")
        if await acc.users.session_epoch(signed.user_id) != signed.epoch:
            return Identity(None, "Your session was signed out (the account's API token was revoked); sign in again.")
        if await acc.users.signed_out(signed.session_id):
            return Identity(None, "This session was signed out; sign in again.")
        return Identity(signed.user_id, via="cookie", session=signed.session_id)
    return Identity(None)


def session_cookie(scope: Scope) -> str | None:
    """The raw session cookie the request carries, if any."""
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return _session_cookie(value.decode("latin-1"))
    return None


def _session_cookie(raw: str | None) -> str | None:
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel else None


def signed_in_by_cookie(conn: HTTPConnection) -> bool:
    """Whether the caller was identified by the session cookie (which a browser attaches by itself)."""
    identity: Identity | None = conn.scope.get(_SCOPE_KEY)
    return identity is not None and identity.via == "cookie"


def current_session(conn: HTTPConnection) -> str | None:
    """The id of the browser session the caller signed in with (None for a Bearer token)."""
    identity: Identity | None = conn.scope.get(_SCOPE_KEY)
    return identity.session if identity is not None else None


def unauthenticated(conn: HTTPConnection) -> AijobsError:
    """The 401 for a caller `current_user` refuses, saying what was wrong with what it sent and how to sign in; the
    503 when the store could not be asked."""
    identity: Identity | None = conn.scope.get(_SCOPE_KEY)
    if identity is not None and identity.outage is not None:
        return identity.outage
    problem = identity.problem if identity and identity.problem else "You are not signed in."
    return ApiError(401, "unauthenticated", f"{problem} {HOW_TO_AUTH}", headers={"WWW-Authenticate": "Bearer"})


def caller_id(conn: HTTPConnection) -> str | None:
    """The caller's user id, or None (not signed in, or the store could not say who): for the routes that must
    answer anyone else with a 404 rather than a 401 (the operator routes, api/admin.py)."""
    identity: Identity | None = conn.scope.get(_SCOPE_KEY)
    return identity.user_id if identity is not None else None


def current_user(conn: HTTPConnection) -> str:
    """The caller's user id, or a refusal: 401 JSON over HTTP, a policy-violation close for a WebSocket (whose
    handler answers the handshake with the 401 itself: api/streams.py)."""
    identity: Identity | None = conn.scope.get(_SCOPE_KEY)
    if identity is not None and identity.user_id is not None:
        return identity.user_id
    if conn.scope["type"] == "websocket":
        raise WebSocketException(code=1008, reason="unauthenticated")
    raise unauthenticated(conn)
