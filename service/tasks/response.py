"""response: a Responses API request (`POST /v1/responses`, service/api/v1) as a job: a conversation answered by the
chat model chain and streamed as it is written, keeping what the caller asked to get back with the answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..providers.base import ChatMessage
from ..schema import constraint
from .chat import Message
from .context import TaskContext
from .registry import TaskRegistry
from .streaming import stream_chat


@dataclass(frozen=True)
class ResponseInput:
    """An OpenAI Responses API request as aijobs runs it: the conversation, the instructions put before it as a
    system message, and what the response echoes (the model named, metadata, whether it ran in the background)."""

    messages: list[Message] = field(metadata=constraint(min_len=1, max_len=50))
    instructions: str | None = field(default=None, metadata=constraint(min_len=1, max_len=20_000))
    max_output_tokens: int | None = field(default=None, metadata=constraint(ge=1, le=8192))
    model: str | None = field(
        default=None,
        metadata=constraint(
            min_len=1, max_len=200, doc="The model the caller named; the server's model chain answers (see `model`)"
        ),
    )
    metadata: dict[str, str] | None = field(
        default=None, metadata=constraint(max_len=16, key_max_len=64, item_max_len=512)
    )
    background: bool = False


async def respond(ctx: TaskContext, data: ResponseInput) -> dict[str, Any]:
    """Answer a Responses API request."""
    messages: list[ChatMessage] = [{"role": "system", "content": data.instructions}] if data.instructions else []
    messages += [{"role": m.role, "content": m.content} for m in data.messages]
    reply = await stream_chat(
        ctx,
        messages,
        step="Writing the response…",
        start=5,
        end=95,
        expected_chars=400,
        max_tokens=data.max_output_tokens,
    )
    # "length": cut at max_output_tokens, which the Responses API reports as an `incomplete` response
    return {"reply": reply.text, "finish_reason": reply.finish_reason}


def register(registry: TaskRegistry) -> None:
    registry.task("response", input=ResponseInput, timeout=300, poll_interval=2.0, max_wait=300, typical_seconds=5)(
        respond
    )
