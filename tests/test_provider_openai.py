"""OpenAICompatProvider against a real local HTTP server: wire format, streaming, errors, cancellation."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import httpx
import pytest
import pytest_asyncio

from service.providers.base import ChatMessage
from service.providers.errors import (
    AuthError,
    BadRequest,
    ContentRefused,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from service.providers.factory import build_provider
from service.providers.openai_compat import OpenAICompatProvider, parse_retry_after
from service.providers.simulated import SimulatedProvider
from tests.fake_openai import REPLY_PREFIX, TINY_PNG_B64, FakeOpenAI, serve_fake_openai

pytestmark = pytest.mark.asyncio

DEFAULT_KEY = "sk-default-key-0123456789"
USER_KEY = "sk-user-key-9876543210"
HELLO: list[ChatMessage] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with serve_fake_openai() as server:
        yield server


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


def make(fake: FakeOpenAI, client: httpx.AsyncClient, **kwargs: object) -> OpenAICompatProvider:
    options: dict[str, object] = {"api_key": DEFAULT_KEY, "default_model": "gpt-test", "timeout": 5.0}
    options.update(kwargs)
    return OpenAICompatProvider(base_url=fake.base_url, client=client, **options)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_chat_non_streaming(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    result = await make(fake, client).chat(HELLO, max_tokens=50, temperature=0.3)

    assert result.text == REPLY_PREFIX + "hi there"
    assert result.model == "gpt-test"
    assert result.finish_reason == "stop"
    assert result.usage.prompt_tokens == 11 and not result.usage.estimated
    path, _, body = fake.requests[-1]
    assert path == "/v1/chat/completions"
    assert body["messages"] == HELLO and body["max_tokens"] == 50 and body["temperature"] == 0.3
    assert "stream" not in body


async def test_chat_streaming_deltas_in_order(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    deltas: list[str] = []

    async def on_delta(piece: str) -> None:
        deltas.append(piece)

    result = await make(fake, client).chat(HELLO, model="gpt-other", on_delta=on_delta)

    assert len(deltas) > 2
    assert "".join(deltas) == result.text == REPLY_PREFIX + "hi there"
    assert deltas[0] == "Hello "
    assert result.model == "gpt-other" and result.finish_reason == "stop"
    assert result.usage.prompt_tokens == 11 and result.usage.completion_tokens == 5 and not result.usage.estimated
    body = fake.requests[-1].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_usage_estimated_when_absent(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.next_response({"model": "named-by-server", "choices": [{"message": {"content": "x" * 40}}]})
    result = await make(fake, client).chat(HELLO)
    assert result.usage.estimated and result.usage.completion_tokens == 10 and result.usage.prompt_tokens > 0
    assert result.model == "named-by-server"

    fake.next_stream(
        [{"choices": [{"delta": {"content": "abcd" * 3}}]}, {"choices": [{"delta": {}, "finish_reason": "stop"}]}]
    )
    seen: list[str] = []

    async def on_delta(piece: str) -> None:
        seen.append(piece)

    streamed = await make(fake, client).chat(HELLO, on_delta=on_delta)
    assert seen == ["abcdabcdabcd"] and streamed.usage.estimated and streamed.usage.completion_tokens == 3


async def test_stream_that_stops_early_is_retryable(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.next_stream([{"choices": [{"delta": {"content": "half"}}]}], done=False)

    async def on_delta(piece: str) -> None:
        return None

    with pytest.raises(ProviderServerError) as info:
        await make(fake, client).chat(HELLO, on_delta=on_delta)
    assert info.value.retryable


async def test_image_b64_becomes_data_url(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    result = await make(fake, client, image_model="img-test").image("a red fox", n=2, size="256x256")

    assert result.images == [f"data:image/png;base64,{TINY_PNG_B64}"] * 2
    assert result.model == "img-test" and result.usage.estimated
    path, _, body = fake.requests[-1]
    assert path == "/v1/images/generations"
    assert body == {
        "model": "img-test",
        "prompt": "a red fox",
        "n": 2,
        "size": "256x256",
        "response_format": "b64_json",
    }


async def test_image_url_passthrough(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.next_response({"data": [{"url": "https://img.example/1.png"}, {"url": "javascript:alert(1)"}]})
    result = await make(fake, client).image("a cat")
    assert result.images == ["https://img.example/1.png"]


async def test_authorization_header(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    provider = make(fake, client)
    await provider.chat(HELLO, api_key=USER_KEY)
    assert fake.requests[-1].headers["authorization"] == f"Bearer {USER_KEY}"
    await provider.chat(HELLO)
    assert fake.requests[-1].headers["authorization"] == f"Bearer {DEFAULT_KEY}"
    await make(fake, client, api_key=None).chat(HELLO)
    assert "authorization" not in fake.requests[-1].headers


async def test_rate_limited_with_retry_after(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.next_error(429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimited) as info:
        await make(fake, client).chat(HELLO)
    assert info.value.retry_after == 7.0 and info.value.retryable and info.value.status == 429
    assert "fake error 429" in info.value.message


async def test_retry_after_formats() -> None:
    now = time.time()
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after": "2.5"})) == 2.5
    in_ten = parse_retry_after(httpx.Headers({"retry-after": formatdate(now + 10, usegmt=True)}), now=now)
    assert in_ten is not None and 8.5 <= in_ten <= 10.5
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers()) is None


async def test_server_error_is_retryable(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.next_error(503, body="upstream overloaded", headers={"Retry-After": "2"})
    with pytest.raises(ProviderServerError) as info:
        await make(fake, client).chat(HELLO)
    assert info.value.retryable and info.value.status == 503 and info.value.retry_after == 2.0
    assert "upstream overloaded" in info.value.message


async def test_auth_error_never_leaks_key(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    provider = make(fake, client)
    fake.next_error(401, {"error": {"message": f"Incorrect API key provided: {USER_KEY}.", "code": "invalid_api_key"}})
    with pytest.raises(AuthError) as info:
        await provider.chat(HELLO, api_key=USER_KEY)
    exc = info.value
    assert not exc.retryable and exc.status == 401
    assert "AI_API_KEY" in exc.message and "Incorrect API key provided" in exc.message
    for text in (str(exc), repr(exc), exc.message, repr(provider), repr(vars(provider))):
        assert USER_KEY not in text and DEFAULT_KEY not in text
    assert "api_key=<set>" in repr(provider)


async def test_bad_request_not_retryable(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.next_error(400, {"error": {"message": "max_tokens is too large", "code": "invalid_value"}})
    with pytest.raises(BadRequest) as info:
        await make(fake, client).chat(HELLO)
    assert not info.value.retryable and "max_tokens is too large" in info.value.message


async def test_long_provider_message_is_truncated(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.next_error(422, {"error": {"message": "y" * 5000}})
    with pytest.raises(BadRequest) as info:
        await make(fake, client).chat(HELLO)
    assert 300 <= info.value.message.count("y") < 400


async def test_content_filter(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    provider = make(fake, client)
    fake.next_error(400, {"error": {"message": "flagged", "code": "content_policy_violation"}})
    with pytest.raises(ContentRefused) as info:
        await provider.image("something bad")
    assert not info.value.retryable

    fake.next_response({"choices": [{"message": {"content": ""}, "finish_reason": "content_filter"}]})
    with pytest.raises(ContentRefused):
        await provider.chat(HELLO)


async def test_invalid_json_and_oversized_bodies(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    provider = make(fake, client)
    fake.next_response("<html>gateway</html>", headers={"content-type": "text/html"})
    with pytest.raises(ProviderServerError) as info:
        await provider.chat(HELLO)
    assert info.value.retryable

    fake.next_response({"choices": []})
    with pytest.raises(ProviderServerError):
        await provider.chat(HELLO)

    provider.max_response_bytes = 1000
    fake.next_response({"choices": [{"message": {"content": "z" * 5000}}]})
    with pytest.raises(ProviderServerError, match="larger than"):
        await provider.chat(HELLO)


async def test_timeout(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.hang()
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        await make(fake, client, timeout=0.2).chat(HELLO)
    assert info.value.retryable and time.monotonic() - started < 3
    assert isinstance(info.value.__cause__, httpx.TimeoutException)
    await asyncio.wait_for(fake.client_disconnected.wait(), 2.0)


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    provider = OpenAICompatProvider(
        base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key=DEFAULT_KEY, default_model="m", client=client
    )
    with pytest.raises(ProviderUnavailable) as info:
        await provider.chat(HELLO)
    assert info.value.retryable and DEFAULT_KEY not in str(info.value)


async def test_cancel_closes_upstream_stream(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    fake.hang()
    first = asyncio.Event()

    async def on_delta(piece: str) -> None:
        first.set()

    task = asyncio.create_task(make(fake, client).chat(HELLO, on_delta=on_delta))
    await asyncio.wait_for(first.wait(), 2.0)
    assert not fake.client_disconnected.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.client_disconnected.wait(), 1.0)


async def test_owned_client_closed_injected_client_kept(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    owned = OpenAICompatProvider(base_url=fake.base_url, api_key=None, default_model="m")
    assert (await owned.chat(HELLO)).text.startswith(REPLY_PREFIX)
    await owned.aclose()
    with pytest.raises(Exception):  # noqa: B017 - any failure proves the owned client is closed
        await owned._client.get(fake.base_url)

    injected = make(fake, client)
    await injected.aclose()
    assert not client.is_closed


async def test_factory_choice(client: httpx.AsyncClient) -> None:
    simulated = build_provider(base_url=None, api_key="", model="gpt-4o", image_model=None, sim_delay=0)
    assert isinstance(simulated, SimulatedProvider) and simulated.default_model == "sim-1"
    assert build_provider(base_url=None, api_key=None, model="sim-2", image_model=None, sim_delay=0).default_model == (
        "sim-2"
    )
    real = build_provider(
        base_url=None, api_key=DEFAULT_KEY, model="gpt-4o", image_model="x", sim_delay=0, client=client
    )
    assert (
        isinstance(real, OpenAICompatProvider) and "api.openai.com/v1" in repr(real) and DEFAULT_KEY not in repr(real)
    )
    local = build_provider(
        base_url="http://localhost:11434/v1/",
        api_key=None,
        model="llama3",
        image_model=None,
        sim_delay=0,
        client=client,
    )
    assert isinstance(local, OpenAICompatProvider) and "localhost:11434/v1" in repr(local)
