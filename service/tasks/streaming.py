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
    """Progress moves from `start` to `end` as text arrives, in proportion to `expected_chars`, reported in steps of
    at least 5 points. Called per token: the percentage is worked out only once enough text for the next step came."""
    received = 0
    last_reported = start
    per_char = (end - start) / max(expected_chars, 1)
    next_at = 5 / per_char if per_char > 0 else float("inf")  # the text that moves the bar 5 points past the last

    async def on_delta(piece: str) -> None:
        nonlocal received, last_reported, next_at
        received += len(piece)
        await ctx.delta(piece)
        if received < next_at:
            return
        pct = start + (end - start) * min(1.0, received / max(expected_chars, 1))
        if pct - last_reported >= 5:
            last_reported = pct
            await ctx.progress(pct, step)
        next_at = (last_reported + 5 - start) / per_char

    await ctx.progress(start, step)
    return await ctx.ai.chat(messages, on_delta=on_delta, max_tokens=max_tokens, api_key=ctx.api_key)
