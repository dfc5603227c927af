"""The /v1 endpoints: OpenAI's Responses API, chat completions and model list, each call a job of the caller's.

A call is admitted exactly as `POST /api/jobs` admits a job (api/jobs.admit: input size, per-minute budget,
active-jobs cap, the user's own provider key from X-Provider-Key), so it is in the caller's history, stats and page
and counted by the same limits; every path that takes an id checks the owner (another user's is a 404).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import ApiError, JobRequestError
from ...events import stream_key
from ...models import Job, JobStatus
from ...push.sse import STREAM_HEADERS, SseResponse
from ..accounts import accounts
from ..auth import current_user
from ..jobs import admit, read_json
from ..responses import JSONOut
from ..state import AppState, app_state
from ..submit_rules import acquire_stream_slot, take_provider_key
from .errors import NO_SDK_RETRY, openai_error, openai_errors
from .requests import CHAT_PARAMS, RESPONSE_PARAMS, chat_request, response_request
from .shapes import FACADE_TYPES, chat_completion, job_id_of, models, response_id, response_object
from .stream import SCALE, chat_stream, failure, response_stream, seq_of, until_done

# A job that failed, as the status of a chat completion (which has no status of its own): what the SDK raises.
FAILED_STATUS = {"rate_limited": 429, "provider_bad_request": 400, "content_refused": 400, "invalid_input": 400}
NUMBER = re.compile(r"[0-9]{1,15}")


def key(request: Request) -> str | None:
    """An Idempotency-Key, as POST /api/jobs takes it: the same key and request within 24 h give the same job."""
    return request.headers.get("idempotency-key")


def not_found() -> ApiError:
    return ApiError(404, "response_not_found", "No response with that id.", field="response_id")


async def owned(request: Request, user: str) -> Job:
    """The caller's response (a `response` or `chat` job) named in the path; anyone else's is missing."""
    job = await app_state(request).store.get_owned(job_id_of(request.path_params["response_id"]), user)
    if job is None or job.type not in FACADE_TYPES:
        raise not_found()
    return job


def sse_response(state: AppState, body: AsyncGenerator[bytes, None], slot: Any) -> SseResponse:
    """An SSE answer holding one of the caller's stream slots (MAX_STREAMS, as the native streams do)."""
    return SseResponse(
        body,
        headers=list(STREAM_HEADERS),  # the app adds its security headers to these routes' answers itself
        send_timeout=state.settings.push_send_timeout,
        on_close=slot.release,
    )


async def create_response(request: Request) -> Response:
    """`POST /v1/responses`: a job at once; answered with the queued response (background), its stream (stream),
    or, without either, the finished response once the job ends."""
    state = app_state(request)
    user = current_user(request)
    asked = response_request(await read_json(request, state.settings.max_body_bytes))
    provider_key = take_provider_key(request, None)
    if asked.stream:
        slot = acquire_stream_slot(request, user)  # before the job: a refused stream leaves no job behind
        try:
            job, _, _ = await admit(request, user, asked.job, provider_key=provider_key, idempotency_key=key(request))
        except BaseException:
            slot.release()
            raise
        return sse_response(state, response_stream(state, user, job, starting_after=None), slot)
    job, _, _ = await admit(request, user, asked.job, provider_key=provider_key, idempotency_key=key(request))
    if not asked.background:
        job = await until_done(state, user, job)
    return JSONOut(response_object(job, state.settings))


def _query_flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise ApiError(400, "invalid_value", f"'{name}' must be true or false.", field=name)
    return raw in ("true", "1")


async def get_response(request: Request) -> Response:
    """`GET /v1/responses/{id}`: the response now; with `stream=true`, its events (after `starting_after`)."""
    state = app_state(request)
    user = current_user(request)
    job = await owned(request, user)
    stream = _query_flag(request, "stream")
    raw = request.query_params.get("starting_after")
    if raw is not None and not stream:
        raise ApiError(400, "invalid_value", "'starting_after' goes with stream=true.", field="starting_after")
    if not stream:
        return JSONOut(response_object(job, state.settings))
    after = None
    if raw is not None:
        if not NUMBER.fullmatch(raw):
            raise ApiError(400, "invalid_value", "'starting_after' must be a sequence number.", field="starting_after")
        after = int(raw)
        if not await state.events.resumable(job.id, seq_of(after), job.seq):
            raise ApiError(
                400,
                "invalid_value",
                f"starting_after {after} is past this response's events (the newest is numbered below "
                f"{(job.seq + 1) * SCALE}): resume after a sequence_number you received.",
                field="starting_after",
            )
    slot = acquire_stream_slot(request, user)
    return sse_response(state, response_stream(state, user, job, starting_after=after), slot)


async def cancel_response(request: Request) -> Response:
    """`POST /v1/responses/{id}/cancel`: a queued one never starts, a running one stops within about a second;
    cancelling a cancelled one again answers it as it is; one that ended otherwise is a 400, as at OpenAI."""
    state = app_state(request)
    user = current_user(request)
    job = await owned(request, user)
    try:
        cancelled = await state.jobs.cancel(user, job.id)
    except JobRequestError as exc:
        if exc.code != "job_finished":
            raise
        raise ApiError(400, "response_finished", f"Cannot cancel a {job.status.value} response.") from None
    if cancelled is None:
        raise not_found()
    if cancelled.terminal:  # its sealed provider key goes now (api/lifecycle.cancel_job does the same)
        await accounts(request).secrets.delete(cancelled.id)
    return JSONOut(response_object(cancelled, state.settings))


async def delete_response(request: Request) -> Response:
    """`DELETE /v1/responses/{id}`: gone from the caller's history, stats and page (a running one is cancelled
    first), and its events with it."""
    state = app_state(request)
    user = current_user(request)
    job = await owned(request, user)
    if not job.terminal:
        with contextlib.suppress(JobRequestError):  # it ended meanwhile: deleted below all the same
            await state.jobs.cancel(user, job.id)
        job = await state.store.get_owned(job.id, user) or job
        if not job.terminal:
            raise ApiError(
                400, "response_in_progress", "The response is still stopping after its cancel; delete it again."
            )
    if not await state.store.delete_finished(job.id, user):
        raise not_found()
    with contextlib.suppress(RedisError, OSError):  # EVENT_RETENTION's sweep drops it anyway
        await state.redis.delete(stream_key(job.id))
    return JSONOut({"id": response_id(job.id), "object": "response.deleted", "deleted": True})


async def chat_completions(request: Request) -> Response:
    """`POST /v1/chat/completions`: a `chat` job; its chunks as they are written (stream), or the completion once
    the job ends. A job that failed after its retries and fallbacks answers with an error the SDK does not retry."""
    state = app_state(request)
    user = current_user(request)
    asked = chat_request(await read_json(request, state.settings.max_body_bytes))
    provider_key = take_provider_key(request, None)
    if asked.stream:
        slot = acquire_stream_slot(request, user)
        try:
            job, _, _ = await admit(request, user, asked.job, provider_key=provider_key, idempotency_key=key(request))
        except BaseException:
            slot.release()
            raise
        return sse_response(
            state, chat_stream(state, user, job, model=asked.model, include_usage=asked.include_usage), slot
        )
    job, _, _ = await admit(request, user, asked.job, provider_key=provider_key, idempotency_key=key(request))
    job = await until_done(state, user, job)
    if job.status is JobStatus.COMPLETED:
        return JSONOut(chat_completion(job, state.settings))
    code, message = failure(job)
    return openai_error(FAILED_STATUS.get(code, 502), code, message, headers=NO_SDK_RETRY)


async def list_models(request: Request) -> Response:
    """`GET /v1/models`: what the server's providers answer with (the chat chain, then the image model)."""
    current_user(request)
    return JSONOut({"object": "list", "data": models(app_state(request).settings)})


async def get_model(request: Request) -> Response:
    current_user(request)
    wanted = request.path_params["model"]
    for model in models(app_state(request).settings):
        if model["id"] == wanted:
            return JSONOut(model)
    raise ApiError(404, "model_not_found", f"The server offers no model {wanted!r}; GET /v1/models lists them.")


async def unknown(request: Request) -> Response:
    return openai_error(404, "not_found", f"No such endpoint: {request.method} {request.url.path}")


async def get_or_delete(request: Request) -> Response:
    """One endpoint for the path's two methods, so a 405 there lists both in `Allow`."""
    return await (delete_response if request.method == "DELETE" else get_response)(request)


def v1_routes() -> list[Route]:
    """The OpenAI-compatible routes, in the order Starlette tries them; the last answers any other /v1 path with
    OpenAI's 404."""
    return [
        Route("/v1/responses", openai_errors(create_response, RESPONSE_PARAMS), methods=["POST"]),
        Route("/v1/responses/{response_id}", openai_errors(get_or_delete), methods=["GET", "DELETE"]),
        Route("/v1/responses/{response_id}/cancel", openai_errors(cancel_response), methods=["POST"]),
        Route("/v1/chat/completions", openai_errors(chat_completions, CHAT_PARAMS), methods=["POST"]),
        Route("/v1/models", openai_errors(list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", openai_errors(get_model), methods=["GET"]),
        Route("/v1/{rest:path}", unknown, methods=["GET", "POST", "DELETE"]),
    ]
