"""Stream a chat completion into a task's output while moving its progress bar."""

from __future__ import annotations

from ..providers.base import ChatMessage, ChatResult
from .context import TaskContext


async def stream_chat(
    ctx: TaskContext,
    messages: list[ChatMessage],
    *,
    step: str,
    start: float,
    end: float,
    expected_chars: int,
    max_tokens: int | None = None,
) -> ChatResult:
    """Progress moves from `start` to `end` as text arrives, in proportion to `expected_chars`."""
    received = 0
    last_reported = start

    async def on_delta(piece: str) -> None:
        nonlocal received, last_reported
        received += len(piece)
        await ctx.delta(piece)
        pct = start + (end - start) * min(1.0, received / max(expected_chars, 1))
        if pct - last_reported >= 5:
            last_reported = pct
            await ctx.progress(pct, step)

    await ctx.progress(start, step)
    return await ctx.ai.chat(messages, on_delta=on_delta, max_tokens=max_tokens, api_key=ctx.api_key)
