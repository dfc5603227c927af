"""Who is calling. Until accounts land, every caller is the shared `anonymous` user."""

from __future__ import annotations

from starlette.requests import HTTPConnection

ANONYMOUS = "anonymous"


def current_user(conn: HTTPConnection) -> str:
    return ANONYMOUS
