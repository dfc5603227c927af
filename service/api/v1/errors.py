"""OpenAI's error body on the /v1 surface: `{"error": {"message", "type", "param", "code"}}`, with the statuses the
official SDK turns into its exception types: 400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError (the SDK waits out our Retry-After and tries again), 5xx InternalServerError.

Refusals stay those of our one error tree (service/errors.py), with their stable `code` and message; only the
status moves where OpenAI's differs (a request we refuse with 413, 415 or 422, or a state conflict we answer 409,
is a 400 at OpenAI), and `param` names the field of the OpenAI request at fault.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response

from ...errors import AijobsError
from ..responses import JSONOut

SDK_STATUS = {409: 400, 413: 400, 415: 400, 422: 400}
# The header the SDK reads before retrying on its own: a job that failed already had our retries and fallbacks.
NO_SDK_RETRY = {"x-should-retry": "false"}


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(message: str, *, status: int, code: str | None, param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def openai_error(
    status: int, code: str, message: str, *, param: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONOut:
    return JSONOut(error_body(message, status=status, code=code, param=param), status_code=status, headers=headers)


def job_param(field: str | None, params: Mapping[str, str]) -> str | None:
    """The OpenAI request field behind a field of the job's input (`input.messages[0].content` -> `input` for a
    response, `messages` for a chat completion); a field named by the facade itself is already OpenAI's."""
    if field is None or not field.startswith("input."):
        return field
    inner = field.removeprefix("input.")
    for prefix, param in params.items():
        if inner == prefix or inner.startswith((prefix + "[", prefix + ".")):
            return param
    return inner


def from_error(exc: AijobsError, params: Mapping[str, str] | None = None) -> JSONOut:
    status = SDK_STATUS.get(exc.status, exc.status)
    param = job_param(exc.extra.get("field"), params or {})
    return openai_error(status, exc.code, exc.message, param=param, headers=exc.headers)


Handler = Callable[[Request], Awaitable[Response]]


def openai_errors(handler: Handler, params: Mapping[str, str] | None = None) -> Handler:
    """The handler, answering every refusal of the error tree in OpenAI's shape (a bug is still the app's 500)."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except AijobsError as exc:
            return from_error(exc, params)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint
