"""The operator page and API: /admin and /api/admin/*, for users marked operator (`aijobs users create NAME
--operator`).

Anyone else, signed in or not, gets exactly the 404 an unknown path gets, for every method and every path under
them (no 405, no slash redirect), so their existence is not revealed: `OperatorGate` answers before any handler or
method check, and the role is read from the store on every request (users.py `operator`). What the page reads is in
admin_views.py, the actions (retry, cancel, purge, each recorded with who did it) in admin_actions.py, and the
operator's own contract, served to operators only, in admin_openapi.py.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from ..store.users import User
from .accounts import accounts
from .admin_actions import cancel_job, purge, purge_job, retry_job
from .admin_openapi import admin_openapi_json
from .admin_views import NO_STORE, OPERATOR_KEY, charts, get_job, list_actions, overview
from .auth import caller_id

ADMIN_PAGE = Path(__file__).resolve().parent.parent.parent / "static" / "admin.html"


async def find_operator(conn: HTTPConnection) -> User | None:
    """The signed-in caller if they are an operator; None for anyone else, and when that cannot be told (the
    store not answering): the answer is then the same 404, never a hint that the path exists."""
    user_id = caller_id(conn)
    if user_id is None:
        return None
    try:
        return await accounts(conn).users.operator(user_id)
    except Exception:
        return None


class OperatorGate:
    """An ASGI app in front of the operator routes: a caller who is not an operator gets the unknown-path 404."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operator = await find_operator(HTTPConnection(scope))
        if operator is None:
            raise HTTPException(status_code=404)  # the app's handler words it as for any unknown path
        scope[OPERATOR_KEY] = operator
        await self.app(scope, receive, send)


async def admin_page(request: Request) -> Response:
    if request.path_params.get("rest") or request.method not in ("GET", "HEAD"):
        raise HTTPException(status_code=404)  # /admin only: /admin/x is as unknown to operators as to anyone
    return FileResponse(ADMIN_PAGE, headers=NO_STORE)


def admin_routes() -> list[Route]:
    """The two gated routes the app mounts: the page, and the API (its own router, so a method or path unknown
    there is a 404/405 for operators only)."""
    api = Router(
        routes=[
            Route("/api/admin/overview", overview, methods=["GET"]),
            Route("/api/admin/charts", charts, methods=["GET"]),
            Route("/api/admin/actions", list_actions, methods=["GET"]),
            Route("/api/admin/jobs/{job_id}", get_job, methods=["GET"]),
            Route("/api/admin/jobs/{job_id}/retry", retry_job, methods=["POST"]),
            Route("/api/admin/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
            Route("/api/admin/jobs/{job_id}/purge", purge_job, methods=["POST"]),
            Route("/api/admin/purge", purge, methods=["POST"]),
            Route("/api/admin/openapi.json", admin_openapi_json(), methods=["GET"]),
        ],
        redirect_slashes=False,
    )
    page = Router(routes=[Route("/admin{rest:path}", admin_page)], redirect_slashes=False)
    return [
        Route("/admin{rest:path}", OperatorGate(page), name="admin_page"),
        Route("/api/admin{rest:path}", OperatorGate(api), name="admin_api"),
    ]
