"""A job's events, followed live from any web process and retold as OpenAI's: the Responses API's stream events
and chat completion chunks.

**Sequence numbers.** Each job event (its `seq`, service/events.py) becomes zero or more OpenAI events; the i-th
one made from seq `s` has `sequence_number = s * SCALE + i`. The numbering is one to one with the job's log and the
same for every reader of it, so `starting_after=N` resumes exactly: the events of seq `N // SCALE` are made again
and those numbered up to N dropped, then everything after comes from the job's Redis Stream and live. The first
event (seq 1, the job stored and queued) makes `response.created`, `response.queued`, `response.output_item.added`
and `response.content_part.added`; a `status` event makes `response.queued` or `response.in_progress`; a `delta`
makes `response.output_text.delta`; the terminal one makes `response.output_text.done`,
`response.content_part.done`, `response.output_item.done` and `response.completed` (or `response.incomplete` when
cut at max_output_tokens), or `response.failed` (a cancelled job's with status `cancelled`: OpenAI defines no
cancelled event). `progress` events have no OpenAI form and make none (their numbers are skipped).

**Past the kept events.** A resume point the job's Stream no longer covers (EVENT_RETENTION, EVENT_STREAM_MAXLEN)
gets the job as the store holds it instead of a silent gap: the final event with the whole response for a job that
ended, else `response.in_progress` whose output holds the text so far (behind `response.created` and the output
item for a reader from the start), then live events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator
from typing import Any

from ...errors import ApiError
from ...models import Event, EventKind, Job, JobError, JobStatus, dumps
from ...push.gateway import Subscriber
from ...push.watch import JobWatch
from ..state import AppState
from .errors import NO_SDK_RETRY, error_body
from .shapes import (
    chat_chunk,
    empty_item,
    message_id,
    message_item,
    output_text,
    primary_model,
    response_id,
    response_object,
    text_part,
)

SCALE = 10  # more than the most OpenAI events one job event makes (4)
KEEPALIVE = b": keepalive\n\n"

log = logging.getLogger("aijobs.api")


def seq_of(sequence_number: int) -> int:
    """The job seq an OpenAI sequence number was made from."""
    return sequence_number // SCALE


async def follow(state: AppState, user_id: str, job_id: str, after: int) -> AsyncGenerator[Event | None, None]:
    """The job's events after seq `after` (0: from the first), then live ones, ending with the terminal one (or a
    snapshot of the job's end); None when a keepalive is due.

    Live events are taken only while they follow each other seq by seq: a client that fell behind has its deltas
    merged and its progress coalesced in the gateway's buffer, so then the events are read again from the Stream,
    where each seq is its own event (one OpenAI sequence number each, whoever reads it, whenever)."""
    watch = JobWatch(job_id=job_id, user_id=user_id, store=state.store, events=state.events, jobs=state.jobs)
    sub = Subscriber(user_id, {job_id})
    await state.gateway.subscribe(sub)
    try:
        batch = await watch.catch_up(after)
        while True:
            for event in batch:
                yield event
            batch = []
            if watch.done:
                return
            if not await sub.wait():
                yield None
                continue
            live = [e for e in sub.drain() if e.kind is not EventKind.POSITION and e.seq > watch.last]
            if sub.resync or any(e.seq != watch.last + 1 + i for i, e in enumerate(live)):
                sub.resync = False
                batch = await watch.catch_up(watch.last)
            else:
                batch = watch.live(live)
    finally:
        await state.gateway.unsubscribe(sub)


def sse(event: dict[str, Any]) -> bytes:
    """No `id:` line, as OpenAI sends none: the SDK's decoder keeps the last id (as the SSE spec says) and so would
    make an empty event of every keepalive after one; the resume point is the data's `sequence_number`."""
    return f"event: {event['type']}\ndata: {dumps(event)}\n\n".encode()


class ResponseEvents:
    """Retells one job's events as the Responses API's stream events, keeping the job as they leave it."""

    def __init__(self, state: AppState, job: Job) -> None:
        self.state = state
        # The job as submitted (a copy, whatever it is now): the events bring it along, from wherever they start.
        self.job = dataclasses.replace(
            job, status=JobStatus.QUEUED, result=None, error=None, model=None, usage=None, partial_output=None
        )
        self.job.completed_at = None
        self.last = 0  # the last sequence number made

    def _response(self, *, with_output: bool = False) -> dict[str, Any]:
        return response_object(self.job, self.state.settings, with_output=with_output)

    def _apply(self, data: dict[str, Any], ts: float) -> None:
        """A status event's news, onto the job."""
        job = self.job
        job.status = JobStatus(data["status"])
        job.attempts = data.get("attempt", job.attempts)
        if job.terminal:
            job.result = data.get("result")
            error = data.get("error")
            job.error = JobError(error["message"], error["code"], bool(error.get("retryable"))) if error else None
            job.model = data.get("model") or job.model
            job.usage = data.get("usage")
            job.partial_output = data.get("partial_output")
            job.completed_at = ts

    def _made(self, seq: int, kinds: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        out = []
        for i, (kind, fields) in enumerate(kinds):
            self.last = seq * SCALE + i
            out.append({"type": kind, "sequence_number": self.last, **fields})
        return out

    def _item(self) -> dict[str, Any]:
        return {"output_index": 0, "item_id": message_id(self.job.id), "content_index": 0}

    def _opened(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            ("response.output_item.added", {"output_index": 0, "item": empty_item(self.job)}),
            ("response.content_part.added", {**self._item(), "part": text_part("")}),
        ]

    def _ended(self) -> list[tuple[str, dict[str, Any]]]:
        job = self.job
        response = self._response(with_output=True)
        if job.status is not JobStatus.COMPLETED:
            return [("response.failed", {"response": response})]
        text = output_text(job)
        status = response["status"]  # completed, or incomplete (cut at max_output_tokens)
        return [
            ("response.output_text.done", {**self._item(), "text": text, "logprobs": []}),
            ("response.content_part.done", {**self._item(), "part": text_part(text)}),
            ("response.output_item.done", {"output_index": 0, "item": message_item(job, text, status=status)}),
            (f"response.{status}", {"response": response}),
        ]

    async def translate(self, event: Event, *, from_start: bool) -> list[dict[str, Any]]:
        if event.kind is EventKind.DELTA:
            delta = event.data.get("text", "")
            self.job.partial_output = (self.job.partial_output or "") + delta
            return self._made(event.seq, [("response.output_text.delta", {**self._item(), "delta": delta})])
        if event.kind is EventKind.STATUS:
            self._apply(event.data, event.ts)
            if self.job.terminal:
                return self._made(event.seq, self._ended())
            if event.seq == 1:  # stored and queued: the response exists, with its (empty) output item
                made = [("response.created", {"response": self._response()})]
                made.append(("response.queued", {"response": self._response()}))
                return self._made(event.seq, made + self._opened())
            kind = "response.queued" if self.job.status is JobStatus.QUEUED else "response.in_progress"
            return self._made(event.seq, [(kind, {"response": self._response()})])
        if event.kind is EventKind.SNAPSHOT:
            return await self._snapshot(event, from_start=from_start)
        return []  # progress: no OpenAI form

    async def _snapshot(self, event: Event, *, from_start: bool) -> list[dict[str, Any]]:
        """The job as the store holds it, for a resume point past the kept events (see the module docstring)."""
        job = await self.state.store.get(self.job.id)
        if job is None:
            return []
        self.job = job  # numbered as the snapshot (the watch goes on after its seq), even if the store moved on
        made: list[tuple[str, dict[str, Any]]] = []
        if from_start:
            made.append(("response.created", {"response": self._response()}))
        if job.terminal:
            return self._made(event.seq, [*made, self._ended()[-1]])
        if from_start:
            made += self._opened()
            made[-1][1]["part"] = text_part(output_text(job))
        kind = "response.queued" if job.status is JobStatus.QUEUED else "response.in_progress"
        made.append((kind, {"response": self._response(with_output=True)}))
        return self._made(event.seq, made)

    def error(self, message: str, code: str) -> dict[str, Any]:
        """The `error` event: the stream ends without the response's own end (see response_stream)."""
        self.last += 1
        return {"type": "error", "sequence_number": self.last, "code": code, "message": message, "param": None}


async def response_stream(
    state: AppState, user_id: str, job: Job, *, starting_after: int | None
) -> AsyncGenerator[bytes, None]:
    """The SSE body of a Responses stream: every event after `starting_after` (None: from the first).

    A stream that cannot go on (the store or Redis failing under it, even as it starts) ends with an `error` event
    saying how to resume, instead of a cut connection or a 5xx the SDK would answer by making the job again."""
    after = -1 if starting_after is None else starting_after
    teller = ResponseEvents(state, job)
    sent = after
    ended = False
    from_start = after < SCALE  # no event is numbered below SCALE: nothing was received yet
    try:
        async with contextlib.aclosing(follow(state, user_id, job.id, max(0, seq_of(after) - 1))) as events:
            async for event in events:
                if event is None:
                    yield KEEPALIVE
                    continue
                for made in await teller.translate(event, from_start=from_start):
                    ended = ended or made["type"] in ("response.completed", "response.incomplete", "response.failed")
                    if made["sequence_number"] > sent:
                        sent = made["sequence_number"]
                        yield sse(made)
    except Exception:
        log.exception("a Responses stream broke", extra={"job_id": job.id})
        resume = f"starting_after={sent}" if sent >= 0 else "from its start"
        message = (
            f"The stream broke on the server's side; the response goes on. Resume it with "
            f"responses.retrieve({response_id(job.id)!r}, stream=True) {resume}."
        )
        yield sse(teller.error(message, "stream_unavailable"))
        return
    if not ended:
        yield sse(teller.error("This response was deleted while it was being streamed.", "response_not_found"))


def _data(body: dict[str, Any]) -> bytes:
    return b"data: " + dumps(body).encode() + b"\n\n"


async def chat_stream(
    state: AppState, user_id: str, job: Job, *, model: str | None, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The SSE body of a streamed chat completion: a role chunk, a chunk per delta, the finish chunk (and the usage
    chunk), `[DONE]`; a job that does not complete, or a stream that breaks, ends with an error, which the SDK
    raises as an APIError."""
    name = model or primary_model(state.settings)
    yield _data(chat_chunk(job, name, {"role": "assistant", "content": ""}))
    final = job
    try:
        async with contextlib.aclosing(follow(state, user_id, job.id, 0)) as events:
            async for event in events:
                if event is None:
                    yield KEEPALIVE
                elif event.kind is EventKind.DELTA:
                    yield _data(chat_chunk(job, name, {"content": event.data.get("text", "")}))
                elif event.terminal or event.kind is EventKind.SNAPSHOT:
                    final = await state.store.get(job.id) or final
    except Exception:
        log.exception("a chat completion stream broke", extra={"job_id": job.id})
        message = f"The stream broke on the server's side; the job {job.id} goes on (GET /api/jobs/{job.id})."
        yield _data(error_body(message, status=503, code="stream_unavailable"))
        return
    if final.status is JobStatus.COMPLETED:
        model_used = final.model or name
        yield _data(chat_chunk(final, model_used, {}, finish="stop"))
        if include_usage:
            yield _data(chat_chunk(final, model_used, None, usage=True))
        yield b"data: [DONE]\n\n"
        return
    code, message = failure(final)
    yield _data(error_body(message, status=502, code=code))


def failure(job: Job) -> tuple[str, str]:
    """What a chat completion says of a job that did not complete: its error's code and message."""
    if job.status is JobStatus.CANCELLED:
        return "cancelled", "The chat completion was cancelled."
    if job.error is not None:
        return job.error.code, job.error.message
    return job.status.value, f"The chat completion's job ended {job.status.value}."


async def until_done(state: AppState, user_id: str, job: Job) -> Job:
    """Wait for the job to end (a call made without background or stream waits for its job), then read it.

    Failing to follow it (the store or Redis down meanwhile) is a 503 the SDK must not answer by trying again:
    the job exists and goes on, and a retry would make a second one."""
    try:
        async with contextlib.aclosing(follow(state, user_id, job.id, 0)) as events:
            async for _ in events:
                pass  # `follow` ends with the job
        return await state.store.get(job.id) or job
    except Exception as exc:
        log.warning("lost track of a job while waiting for it", extra={"job_id": job.id, "error": repr(exc)})
        raise ApiError(
            503,
            "wait_failed",
            f"The job was made and goes on, but could not be followed to its end: retrieve it as "
            f"{response_id(job.id)} (GET /v1/responses/{{id}}, or GET /api/jobs/{job.id}).",
            headers=NO_SDK_RETRY,
        ) from exc
