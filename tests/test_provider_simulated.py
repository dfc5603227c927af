"""SimulatedProvider: deterministic replies, formats, streaming and every injected failure."""

from __future__ import annotations

import base64
import re
import sys
import time

import pytest

from service.providers.base import ChatMessage
from service.providers.errors import (
    AuthError,
    BadRequest,
    ContentRefused,
    ProviderError,
    ProviderServerError,
    ProviderTimeout,
    RateLimited,
)
from service.providers.simulated import SimulatedProvider

pytestmark = pytest.mark.asyncio

TEXT = (
    "Solar panels convert sunlight into electricity using photovoltaic cells. Costs have fallen sharply over the "
    "last decade. Many households now combine rooftop panels with home batteries to store energy for the evening."
)


def user(text: str, system: str | None = None) -> list[ChatMessage]:
    messages: list[ChatMessage] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return messages


class Collector:
    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def __call__(self, piece: str) -> None:
        self.pieces.append(piece)


async def test_deterministic_and_input_dependent() -> None:
    a = await SimulatedProvider(delay=0).chat(user("Tell me about volcanoes and glaciers"))
    b = await SimulatedProvider(delay=0).chat(user("Tell me about volcanoes and glaciers"))
    c = await SimulatedProvider(delay=0).chat(user("Explain compilers and garbage collection"))

    assert a == b
    assert a.text != c.text
    assert "volcanoes" in a.text or "glaciers" in a.text
    assert 40 <= len(a.text.split()) <= 100
    assert a.model == "sim-1" and a.finish_reason == "stop"
    assert a.usage.estimated and a.usage.completion_tokens == (len(a.text) + 3) // 4


async def test_titles_format() -> None:
    result = await SimulatedProvider(delay=0).chat(
        user(TEXT, system="Suggest titles. FORMAT:titles:5"), model="sim-titles"
    )
    lines = result.text.split("\n")

    assert [line.split(". ", 1)[0] for line in lines] == ["1", "2", "3", "4", "5"]
    assert all(re.fullmatch(r"\d+\. \S.*", line) for line in lines)
    assert len(set(lines)) == 5
    vocabulary = {w.lower() for w in re.findall(r"\w+", TEXT)}
    assert any(w.lower() in vocabulary for w in re.findall(r"\w+", result.text) if len(w) >= 4)
    assert result.model == "sim-titles"


async def test_summary_format() -> None:
    result = await SimulatedProvider(delay=0).chat(user(TEXT, system="Summarize. FORMAT:summary"))
    sentences = [s for s in re.split(r"(?<=[.!?…])\s+", result.text) if s]

    assert 2 <= len(sentences) <= 3
    assert "Solar panels convert sunlight" in result.text


async def test_streaming_deltas_join_to_text() -> None:
    collect = Collector()
    result = await SimulatedProvider(delay=0).chat(user("How do tides work?"), on_delta=collect)

    assert len(collect.pieces) >= 20
    assert "".join(collect.pieces) == result.text
    assert all(piece.strip() for piece in collect.pieces)


@pytest.mark.parametrize(
    ("directive", "error", "retry_after"),
    [
        ("[[fail:429]]", RateLimited, 1.0),
        ("[[fail:429:retry_after=3]]", RateLimited, 3.0),
        ("[[fail:500]]", ProviderServerError, None),
        ("[[fail:timeout]]", ProviderTimeout, None),
        ("[[fail:400]]", BadRequest, None),
        ("[[fail:401]]", AuthError, None),
        ("[[fail:refused]]", ContentRefused, None),
    ],
)
async def test_fail_directives(directive: str, error: type[ProviderError], retry_after: float | None) -> None:
    collect = Collector()
    with pytest.raises(error) as info:
        await SimulatedProvider(delay=0).chat(user(f"hello {directive} world"), on_delta=collect)

    assert type(info.value) is error
    assert info.value.retry_after == retry_after
    assert info.value.retryable == (error in (RateLimited, ProviderServerError, ProviderTimeout))
    assert collect.pieces == []

    with pytest.raises(error):
        await SimulatedProvider(delay=0).image(f"a lighthouse {directive}")


async def test_times_fails_then_succeeds_per_instance() -> None:
    provider = SimulatedProvider(delay=0)
    prompt = user("[[fail:500:times=2]] write a haiku about rain")
    for _ in range(2):
        with pytest.raises(ProviderServerError):
            await provider.chat(prompt)
    result = await provider.chat(prompt)

    assert result.text == (await SimulatedProvider(delay=0).chat(user("write a haiku about rain"))).text
    assert "[[" not in result.text
    with pytest.raises(ProviderServerError):  # a fresh instance counts from zero
        await SimulatedProvider(delay=0).chat(prompt)
    with pytest.raises(ProviderServerError):  # another prompt has its own count
        await provider.chat(user("[[fail:500:times=2]] write a haiku about snow"))


async def test_midstream_emits_partial_output_then_fails() -> None:
    collect = Collector()
    full = await SimulatedProvider(delay=0).chat(user("describe the ocean floor"))
    with pytest.raises(ProviderServerError) as info:
        await SimulatedProvider(delay=0).chat(user("describe the ocean floor [[fail:midstream]]"), on_delta=collect)

    assert info.value.retryable
    assert 0 < len(collect.pieces) < len(full.text.split())
    assert full.text.startswith("".join(collect.pieces))


async def test_echo_is_exact() -> None:
    payload = "<img src=x onerror=alert(1)>"
    collect = Collector()
    result = await SimulatedProvider(delay=0).chat(user(f"please [[echo:{payload}]]"), on_delta=collect)

    assert result.text == payload
    assert "".join(collect.pieces) == payload


async def test_failing_model_names() -> None:
    provider = SimulatedProvider(delay=0)
    with pytest.raises(ProviderServerError):
        await provider.chat(user("hi"), model="sim-fail-500")
    with pytest.raises(BadRequest):
        await provider.chat(user("hi"), model="sim-fail-400")
    assert (await provider.chat(user("hi"), model="sim-ok")).model == "sim-ok"


async def test_image_svgs_are_safe_and_deterministic() -> None:
    prompt = "<script>alert(1)</script> a quiet harbour at dawn"
    result = await SimulatedProvider(delay=0).image(prompt, n=3, size="256x128")
    again = await SimulatedProvider(delay=0).image(prompt, n=3, size="256x128")

    assert len(result.images) == 3 and result.images == again.images
    assert len(set(result.images)) == 3
    for url in result.images:
        assert url.startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(url.split(",", 1)[1], validate=True).decode()
        assert svg.startswith("<svg") and svg.endswith("</svg>")
        assert "<script" not in svg.lower() and "&lt;script&gt;" in svg
        assert 'width="256" height="128"' in svg
        assert "<title>" in svg and "harbour" in svg


async def test_slow_directive_and_delay_spread_over_tokens() -> None:
    collect = Collector()
    started = time.monotonic()
    await SimulatedProvider(delay=0).chat(user("[[slow:0.3]] hello there"), on_delta=collect)
    elapsed = time.monotonic() - started

    assert 0.25 <= elapsed < 2.0
    assert len(collect.pieces) > 5


async def test_stamp_directive_hands_n_stamped_tokens() -> None:
    """[[stamp:N]] (the streaming bench's): N tokens, every STAMP_EVERY-th the wall clock in µs (mod 16**9) when it
    was handed over, in order, none before the call began; the reply is their text."""
    from service.providers.simulated import STAMP_EVERY, STAMP_MODULO

    collect = Collector()
    n = 3 * STAMP_EVERY + 1
    before = time.time_ns() // 1000 % STAMP_MODULO
    result = await SimulatedProvider(delay=5).chat(user(f"[[slow:0.05]][[stamp:{n}]] go"), on_delta=collect)
    after = time.time_ns() // 1000 % STAMP_MODULO

    assert len(collect.pieces) == n and "".join(collect.pieces) == result.text
    stamped = collect.pieces[::STAMP_EVERY]
    assert len(stamped) == 4 and all(re.fullmatch(r"~[0-9a-f]{9} ", p) for p in stamped), collect.pieces
    assert len(re.findall(r"~", result.text)) == 4, result.text
    stamps = [int(p[1:10], 16) for p in stamped]
    if before < after:  # the clock did not wrap around its modulo during the call
        assert before <= stamps[0] <= stamps[-1] <= after and stamps == sorted(stamps)


async def test_delay_zero_is_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """With delay 0 nothing waits: every sleep the provider asks for is 0 (measured, not timed: a loaded machine
    may take over a second for the 200 calls themselves)."""
    import service.providers.simulated as simulated

    asked: list[float] = []
    real_sleep = simulated.asyncio.sleep

    async def sleep(seconds: float) -> None:  # asyncio.sleep of the whole process while patched: count the provider's
        if sys._getframe(1).f_globals.get("__name__") == simulated.__name__:
            asked.append(seconds)
            seconds = 0
        await real_sleep(seconds)

    monkeypatch.setattr(simulated.asyncio, "sleep", sleep)
    provider = SimulatedProvider(delay=0)
    for i in range(200):
        await provider.chat(user(f"benchmark prompt number {i}"), on_delta=Collector())
    await provider.image("fast image", n=4)

    assert max(asked, default=0) == 0, f"slept {max(asked)} s"


@pytest.mark.parametrize("most", [1, 2, 3, 10])
async def test_summary_keeps_to_max_sentences(most: int) -> None:
    result = await SimulatedProvider(delay=0).chat(user(TEXT, system=f"Summarize. FORMAT:summary:{most}"))
    sentences = [s for s in re.split(r"(?<=[.!?…])\s+", result.text) if s]
    assert 1 <= len(sentences) <= most


@pytest.mark.parametrize("limit", [1, 3, 10, 25])
async def test_max_tokens_is_never_overshot(limit: int) -> None:
    """The completion tokens it reports (counted, ~4 characters each) stay within max_tokens, and the cut says so."""
    collect = Collector()
    result = await SimulatedProvider(delay=0).chat(user("Tell me about tides"), max_tokens=limit, on_delta=collect)
    assert 1 <= result.usage.completion_tokens <= limit
    assert result.finish_reason == "length" and "".join(collect.pieces) == result.text
