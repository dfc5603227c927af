"""titles: a post's text in, a handful of candidate titles out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ..schema import constraint
from .context import TaskContext
from .registry import TaskRegistry
from .streaming import stream_chat


@dataclass(frozen=True)
class TitlesInput:
    """The post to title."""

    text: str = field(metadata=constraint(min_len=1, max_len=20_000, doc="The post's text"))
    count: int = field(default=5, metadata=constraint(ge=1, le=10, doc="How many titles"))
    tone: Literal["neutral", "catchy", "formal", "playful"] = "neutral"


_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")


def parse_titles(text: str, count: int) -> list[str]:
    lines = [_NUMBERED.sub("", line).strip().strip('"') for line in text.splitlines()]
    return [line for line in lines if line][:count]


async def titles(ctx: TaskContext, data: TitlesInput) -> dict[str, list[str]]:
    """Suggest titles for a post."""
    await ctx.progress(10, "Reading the post…")
    system = (
        f"You write titles for blog posts. Reply with exactly {data.count} titles, one per line, numbered, "
        f"in a {data.tone} tone, nothing else. FORMAT:titles:{data.count}"
    )
    reply = await stream_chat(
        ctx,
        [{"role": "system", "content": system}, {"role": "user", "content": data.text}],
        step="Generating titles…",
        start=20,
        end=90,
        expected_chars=60 * data.count,
    )
    await ctx.progress(95, "Polishing titles…")
    found = parse_titles(reply.text, data.count)
    if not found:
        raise ValueError("The AI answered without any titles; try again or rephrase the post.")
    return {"titles": found}


def register(registry: TaskRegistry) -> None:
    # Coalesced: the same post, count and tone ask for the same suggestions, whoever asks.
    registry.task(
        "titles", input=TitlesInput, timeout=120, poll_interval=3.0, max_wait=300, typical_seconds=4, coalesce=True
    )(titles)
