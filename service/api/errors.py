"""API errors: every refusal is JSON `{"error": {"code", "message"}}` with a fitting status, never a traceback.

The errors themselves are one tree (service/errors.py); here is how the web answers them."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import AijobsError, ApiError
from .responses import JSONOut

log = logging.getLogger("aijobs.api")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONOut:
    return JSONOut({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


def not_found(what: str = "job") -> ApiError:
    """The one answer for both a missing job and someone else's: no hint which it was."""
    return ApiError(404, f"{what}_not_found", f"No {what} with that id.")


async def handle_api_error(request: Request, exc: Exception) -> Response:
    """Every error of the tree (service/errors.py) answers for itself: its status, code, message and headers."""
    if not isinstance(exc, AijobsError):  # registered for AijobsError only; anything else is a bug
        return await handle_unexpected(request, exc)
    return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(
        500, "internal_error", "Something went wrong on our side; try again, and tell us if it persists."
    )
