"""The OpenAI-compatible API, driven by the official `openai` SDK as its users drive it: `OpenAI(base_url=…,
api_key=…)` and `AsyncOpenAI` against a real uvicorn with a real worker and the simulated provider.

Background responses polled; a stream cut mid-way and resumed with `responses.retrieve(id, stream=True,
starting_after=N)` on another web process, with no event missing or repeated; cancel (twice); delete; the SDK's
exception types for our 401, 404, 429 and 400; chat completions streamed; every call a job in the user's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from redis.asyncio import Redis

from service.api.app import create_app
from service.config import Settings
from service.events import stream_key

from .conftest import make_user, run_worker, serve, until

SLOW = "[[slow:1.5]]"  # a reply of ~60 tokens over 1.5 s: a dozen delta events


@dataclasses.dataclass
class Aijobs:
    url: str
    token: str
    settings: Settings

    def sync(self, **kw: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=self.token, max_retries=0, **kw)

    def async_(self, url: str | None = None, **kw: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{url or self.url}/v1", api_key=self.token, max_retries=0, **kw)

    def native(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)


@contextlib.asynccontextmanager
async def aijobs(settings: Settings) -> AsyncIterator[Aijobs]:
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as web, run_worker(settings):
        yield Aijobs(web.url, await make_user(settings, "alice"), settings)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Aijobs]:
    async with aijobs(settings) as a:
        yield a


async def history(api: Aijobs) -> dict[str, dict[str, Any]]:
    async with api.native() as c:
        r = await c.get("/api/jobs", params={"limit": 100})
        assert r.status_code == 200, r.text
        return {j["job_id"]: j for j in r.json()["jobs"]}


async def test_a_background_response_is_created_polled_and_in_the_history(api: Aijobs) -> None:
    def run() -> tuple[Any, Any, list[str]]:
        client = api.sync()
        created = client.responses.create(
            model="gpt-4o-mini",
            input="How do background jobs help?",
            instructions="Answer briefly.",
            metadata={"ticket": "T-1"},
            background=True,
        )
        seen = [created.status]
        response = created
        while response.status in ("queued", "in_progress"):
            response = client.responses.retrieve(created.id)
            seen.append(response.status)
        return created, response, seen

    created, done, seen = await asyncio.to_thread(run)
    assert created.object == "response" and created.id.startswith("resp_") and created.status == "queued"
    assert created.background is True and created.output == [] and created.metadata == {"ticket": "T-1"}
    assert done.status == "completed", seen
    assert done.output_text and done.output[0].type == "message" and done.output[0].content[0].type == "output_text"
    assert done.instructions == "Answer briefly." and done.metadata == {"ticket": "T-1"}
    assert done.model == "sim-1", "the model that answered"
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    job_id = created.id.removeprefix("resp_")
    assert (await history(api))[job_id]["type"] == "response"
    async with api.native() as c:
        job = (await c.get(f"/api/jobs/{job_id}")).json()
    assert job["status"] == "completed" and job["result"]["reply"] == done.output_text
    assert job["input"]["messages"] == [{"role": "user", "content": "How do background jobs help?"}]
    assert job["input"]["instructions"] == "Answer briefly." and job["input"]["model"] == "gpt-4o-mini"


async def test_an_idempotency_key_gives_the_same_response_back(api: Aijobs) -> None:
    client = api.async_(default_headers={"Idempotency-Key": "order-42"})
    first = await client.responses.create(model="m", input="Once only", background=True)
    again = await client.responses.create(model="m", input="Once only", background=True)
    assert again.id == first.id
    with pytest.raises(openai.BadRequestError) as reused:
        await client.responses.create(model="m", input="Something else", background=True)
    assert reused.value.code == "idempotency_key_reused"


async def events_of(stream: Any, stop_after: int | None = None) -> list[Any]:
    out = []
    async for event in stream:
        out.append(event)
        if stop_after is not None and len(out) == stop_after:
            break
    return out


def wire(events: list[Any]) -> list[tuple[int, str, str]]:
    return [(e.sequence_number, e.type, getattr(e, "delta", "")) for e in events]


async def test_a_stream_cut_mid_way_resumes_exactly_on_another_web_process(api: Aijobs, settings: Settings) -> None:
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as other:
        client = api.async_()
        stream = await client.responses.create(model="gpt-4o-mini", input=f"Tell me a story {SLOW}", stream=True)
        first = []
        async for event in stream:
            first.append(event)
            if sum(e.type == "response.output_text.delta" for e in first) == 3:
                break
        await stream.close()  # the connection is cut mid-answer
        response_id = first[0].response.id
        cut = first[-1].sequence_number
        resumed_on = OpenAI(base_url=f"{other.url}/v1", api_key=api.token, max_retries=0)  # the sync client

        def resume() -> list[Any]:
            with resumed_on.responses.retrieve(response_id, stream=True, starting_after=cut) as stream:
                return list(stream)

        rest = await asyncio.to_thread(resume)
        whole = await events_of(await client.responses.retrieve(response_id, stream=True))
    assert [e.type for e in first[:4]] == [
        "response.created",
        "response.queued",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert wire(first) + wire(rest) == wire(whole), "nothing missing, nothing twice"
    numbers = [e.sequence_number for e in whole]
    assert numbers == sorted(set(numbers))
    assert [e.type for e in whole[-4:]] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e.delta for e in whole if e.type == "response.output_text.delta")
    final = whole[-1].response
    assert text == final.output_text == whole[-4].text and final.status == "completed"
    assert {e.item_id for e in whole if e.type == "response.output_text.delta"} == {final.output[0].id}


async def test_the_sdk_stream_helpers_accumulate_our_events(api: Aijobs) -> None:
    client = api.async_()
    async with client.responses.stream(model="gpt-4o-mini", input="Hello there") as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.status == "completed" and final.output_text
    # The helper for an existing response re-reads it whole and drops what is not after starting_after itself.
    async with client.responses.stream(response_id=final.id, starting_after=30) as again:
        later = [e async for e in again]
        assert (await again.get_final_response()).output_text == final.output_text
    assert later and all(e.sequence_number > 30 for e in later)


async def test_cancel_then_cancel_again_then_delete(api: Aijobs) -> None:
    client = api.async_()
    created = await client.responses.create(model="m", input="Write at length [[slow:30]]", background=True)

    async def running() -> bool:
        return (await client.responses.retrieve(created.id)).status == "in_progress"

    await until(running, what="the response to start")
    cancelled = await client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    again = await client.responses.cancel(created.id)
    assert again.status == "cancelled" and again.id == created.id, "a second cancel answers the final object"
    events = await events_of(await client.responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.status == "cancelled"
    assert created.id.removeprefix("resp_") in await history(api)

    assert await client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)
    assert created.id.removeprefix("resp_") not in await history(api)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(created.id)


async def test_a_finished_response_cannot_be_cancelled(api: Aijobs) -> None:
    client = api.async_()
    done = await client.responses.create(model="m", input="Quick one")  # no background: waits for the job
    assert done.status == "completed" and done.output_text
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.cancel(done.id)
    assert refused.value.code == "response_finished"


async def test_errors_come_as_the_sdk_exception_types(settings: Settings) -> None:
    strict = dataclasses.replace(settings, submissions_per_minute=2)
    async with aijobs(strict) as api:
        client = api.async_()
        with pytest.raises(openai.AuthenticationError) as unauthenticated:
            await AsyncOpenAI(base_url=f"{api.url}/v1", api_key="aij_wrong", max_retries=0).models.list()
        assert unauthenticated.value.body["type"] == "authentication_error"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_00000000-0000-0000-0000-000000000000")
        with pytest.raises(openai.BadRequestError) as bad:
            await client.responses.create(model="m", input="hi", tools=[{"type": "web_search"}])
        assert bad.value.param == "tools" and bad.value.code == "unsupported_parameter"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.responses.create(model="m", input="hi", max_output_tokens=100_000)
        assert bad.value.param == "max_output_tokens"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.responses.create(model="m", input=[{"role": "user", "content": ""}])
        assert bad.value.param == "input"
        first = await client.responses.create(model="m", input="one", background=True)
        await client.responses.create(model="m", input="two", background=True)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.responses.create(model="m", input="three", background=True)
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert limited.value.body == {  # OpenAI's error object, our stable code
            "message": limited.value.body["message"],  # type: ignore[index]
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limited",
        }
        # Someone else's response is missing, byte for byte.
        bob = await make_user(strict, "bob")
        other = AsyncOpenAI(base_url=f"{api.url}/v1", api_key=bob, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.cancel(first.id)


async def test_chat_completions_stream_and_wait_as_jobs(api: Aijobs) -> None:
    client = api.async_()
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"Hi {SLOW}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    job = (await history(api))[chunks[0].id.removeprefix("chatcmpl-")]
    assert job["type"] == "chat" and job["result"]["reply"] == text and len(chunks) > 5

    done = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hello"}])
    assert done.choices[0].message.content and done.choices[0].finish_reason == "stop"
    assert done.model == "sim-1" and done.usage is not None

    with pytest.raises(openai.APIError):  # a job that fails after its retries: the stream ends with an error
        failing = await client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "no [[fail:400]]"}], stream=True
        )
        _ = [c async for c in failing]
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "no [[fail:400]]"}])

    models = await client.models.list()
    assert [m.id for m in models.data][0] == "sim-1"


async def test_resume_past_the_kept_events_gets_the_final_response(api: Aijobs) -> None:
    client = api.async_()
    done = await client.responses.create(model="m", input="Keep this")
    assert api.settings.redis_url
    async with Redis.from_url(api.settings.redis_url) as redis:  # as EVENT_RETENTION's sweep drops it
        assert await redis.delete(stream_key(done.id.removeprefix("resp_"))) == 1
    events = await events_of(await client.responses.retrieve(done.id, stream=True, starting_after=25))
    assert [e.type for e in events] == ["response.completed"]
    assert events[0].response.output_text == done.output_text
    whole = await events_of(await client.responses.retrieve(done.id, stream=True))
    assert [e.type for e in whole] == ["response.created", "response.completed"]


async def test_max_output_tokens_makes_an_incomplete_response(api: Aijobs) -> None:
    client = api.async_()
    cut = await client.responses.create(model="m", input="Tell me everything about rivers", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens" and cut.output_text


def test_the_v1_surface_is_kept_apart_from_the_native_contract(settings: Settings) -> None:
    """/api/openapi.json documents the native API (tests/test_openapi_contract.py holds every /api route to it);
    the /v1 routes are OpenAI's, documented in the README and tested here with the SDK, and named in the document's
    description so a reader of one finds the other."""
    from starlette.routing import Route

    from service.api.openapi import build_openapi
    from service.tasks import default_registry

    assert settings.redis_url
    app = create_app(settings, redis_url=settings.redis_url)
    v1 = {r.path for r in app.routes if isinstance(r, Route) and r.path.startswith("/v1/")}
    assert {"/v1/responses", "/v1/responses/{response_id}", "/v1/chat/completions", "/v1/models"} <= v1
    doc = build_openapi(default_registry())
    assert not [path for path in doc["paths"] if path.startswith("/v1")]
    assert "/v1" in doc["info"]["description"]
