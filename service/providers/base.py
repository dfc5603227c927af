"""The provider interface that tasks call through `ctx.ai`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False  # True when counted by us, not reported by the provider


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    limits: dict[str, str] | None = None  # the provider's x-ratelimit-* headers, for the governor


@dataclass(frozen=True, slots=True)
class ImageResult:
    images: list[str]  # https URLs or data: URLs
    model: str
    usage: Usage = field(default_factory=Usage)
    limits: dict[str, str] | None = None  # the provider's x-ratelimit-* headers, for the governor


OnDelta = Callable[[str], Awaitable[None]]


class Provider(Protocol):
    """An AI backend. Raises only `providers.errors.ProviderError` subclasses."""

    name: str
    default_model: str

    async def chat(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_delta: OnDelta | None = None,
        api_key: str | None = None,
    ) -> ChatResult:
        """Complete a chat; when `on_delta` is given, stream and call it with each text piece."""
        ...

    async def image(
        self,
        prompt: str,
        *,
        n: int = 1,
        size: str = "512x512",
        model: str | None = None,
        api_key: str | None = None,
    ) -> ImageResult: ...

    async def aclose(self) -> None: ...


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 chars each) for when a provider reports no usage; good enough for quotas and display."""
    return (len(text) + 3) // 4 if text else 0


def estimate_usage(messages: list[ChatMessage], completion: str) -> Usage:
    """Usage counted by us from the prompt and the reply, flagged `estimated` so nobody mistakes it for billing data."""
    prompt = sum(estimate_tokens(m.get("content") or "") for m in messages)
    return Usage(prompt_tokens=prompt, completion_tokens=estimate_tokens(completion), estimated=True)
