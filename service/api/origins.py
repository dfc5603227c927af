"""Where a request comes from: the Host allow-list, the app's own origin, and the CSRF rule for cookie requests.

A browser attaches the session cookie to requests any site makes, so a cookie alone does not show the user meant the
request. A state-changing request (POST/PUT/PATCH/DELETE; only /api/* has any) signed in by the cookie, and every
POST/DELETE /api/session (a login made by another site, login CSRF, signs the browser into the attacker's account),
must therefore be JSON and carry an Origin that is this app's own or listed in ALLOWED_ORIGINS. JSON from another
origin needs a CORS preflight, which this app never grants; a form can't send JSON; and every browser sends Origin
on such requests. A Bearer request is exempt: a browser never adds the Authorization header by itself.

The SSE and WebSocket routes served before the middleware stack (direct.py) need no CSRF rule: they are GETs and
WebSocket handshakes only (`DirectRoutes.match`), which change nothing; the handshake's own Origin check is in
streams.py and uses `origin_allowed` here. The submit, also served before the stack (`direct_post`), applies the
rule as AuthMiddleware does (`auth.csrf_refused`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import Scope

from ..config import is_loopback_host

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_PATH = "/api/session"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def split_host(host: str) -> tuple[str, int | None] | None:
    """`example.com:8000` → ("example.com", 8000); `[::1]` → ("::1", None); None for anything unparsable."""
    try:
        parts = urlsplit("//" + host.strip())
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return name.rstrip("."), port


def _origin_key(scheme: str, host: str) -> tuple[str, str, int | None] | None:
    found = split_host(host)
    if found is None:
        return None
    name, port = found
    return scheme, name, port if port is not None else _DEFAULT_PORTS.get(scheme)


def parse_origin(origin: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port with defaults filled in), or None for `null` and anything else that is no origin."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or "/" in rest:
        return None
    return _origin_key(scheme, rest)


def own_origin(scope: Scope) -> str:
    """`scheme://host` of this request as the browser addressed it (Host header; https behind a trusted proxy)."""
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
    return f"{scheme}://{header(scope, b'host') or ''}"


def origin_allowed(scope: Scope, origin: str, allowed: tuple[str, ...]) -> bool:
    """The app's own origin (same scheme, host and port as the request) or one listed in ALLOWED_ORIGINS."""
    key = parse_origin(origin)
    if key is None:
        return False
    own = own_origin(scope)
    scheme, _, host = own.partition("://")
    if key == _origin_key(scheme, host.lower()):
        return True
    return any(key == parse_origin(extra) for extra in allowed)


def _app_path(scope: Scope) -> str:
    """The path below the app's mount point (ASGI's `path` includes `root_path`, e.g. uvicorn --root-path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "application/json"


def csrf_refusal(scope: Scope, *, by_cookie: bool, allowed: tuple[str, ...]) -> str | None:
    """Why this HTTP request must be refused as possibly cross-site (None: it may go on)."""
    if scope["method"] not in UNSAFE_METHODS:
        return None
    if not by_cookie and _app_path(scope) != SESSION_PATH:
        return None
    if header(scope, b"authorization") is not None:
        return None  # a Bearer client (or a refused one: it gets its own 401)
    what = "A request signed in by the session cookie that changes something"
    if not by_cookie:
        what = "Signing in or out (POST/DELETE /api/session)"
    if not _is_json(header(scope, b"content-type")):
        return (
            f"{what} must be sent as JSON (Content-Type: application/json), so another site's form can't send it. "
            "API clients: use 'Authorization: Bearer <token>' instead of the cookie."
        )
    origin = header(scope, b"origin")
    if origin is None:
        return (
            f"{what} must carry an Origin header (browsers send it by themselves). API clients: use "
            "'Authorization: Bearer <token>' instead of the cookie."
        )
    if not origin_allowed(scope, origin, allowed):
        return (
            f"Origin {origin} is not this app's ({own_origin(scope)}) nor listed in ALLOWED_ORIGINS, so this request "
            "may come from another site. If that origin is yours, add it to ALLOWED_ORIGINS (behind a TLS proxy, "
            "set FORWARDED_ALLOW_IPS to the proxy's address so the app sees https)."
        )
    return None


def host_allowed(scope: Scope, allowed: tuple[str, ...]) -> bool:
    """Whether the Host header names one of ALLOWED_HOSTS (any port); an empty list allows any Host."""
    if not allowed:
        return True
    found = split_host(header(scope, b"host") or "")
    if found is None:
        return False
    name = found[0].lower()
    for pattern in allowed:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def loopback_request(scope: Scope) -> bool:
    """The Host header names a loopback address and the connection arrived on one (not via the LAN or a
    rebinding DNS name): what AIJOBS_DEMO_LOGIN needs before it signs anyone in."""
    found = split_host(header(scope, b"host") or "")
    if found is None or not is_loopback_host(found[0]):
        return False
    server = scope.get("server")
    return server is None or server[1] is None or is_loopback_host(str(server[0]))
