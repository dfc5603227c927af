"""summary: a long text in, a few sentences out."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..schema import constraint
from .context import TaskContext
from .registry import TaskRegistry
from .streaming import stream_chat


@dataclass(frozen=True)
class SummaryInput:
    """The text to summarize."""

    text: str = field(metadata=constraint(min_len=1, max_len=50_000, doc="The text to summarize"))
    max_sentences: int = field(default=3, metadata=constraint(ge=1, le=10))


async def summary(ctx: TaskContext, data: SummaryInput) -> dict[str, str]:
    """Summarize a text."""
    await ctx.progress(10, "Reading the text…")
    n = data.max_sentences
    system = f"Summarize the user's text in at most {n} sentences. FORMAT:summary:{n}"
    reply = await stream_chat(
        ctx,
        [{"role": "system", "content": system}, {"role": "user", "content": data.text}],
        step="Writing the summary…",
        start=20,
        end=95,
        expected_chars=120 * data.max_sentences,
    )
    return {"summary": reply.text.strip()}


def register(registry: TaskRegistry) -> None:
    # Coalesced: a summary of the same text is the same summary, whoever asks.
    registry.task(
        "summary", input=SummaryInput, timeout=180, poll_interval=3.0, max_wait=300, typical_seconds=5, coalesce=True
    )(summary)
