"""chat: a conversation in, the assistant's reply out, streamed as it is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..providers.base import ChatMessage
from ..schema import constraint
from .context import TaskContext
from .registry import TaskRegistry
from .streaming import stream_chat


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str = field(metadata=constraint(min_len=1, max_len=20_000))


@dataclass(frozen=True)
class ChatInput:
    """A conversation; the last message is usually the user's."""

    messages: list[Message] = field(metadata=constraint(min_len=1, max_len=50))
    max_tokens: int | None = field(default=None, metadata=constraint(ge=1, le=8192))


async def chat(ctx: TaskContext, data: ChatInput) -> dict[str, str]:
    """Answer a conversation."""
    messages: list[ChatMessage] = [{"role": m.role, "content": m.content} for m in data.messages]
    reply = await stream_chat(
        ctx, messages, step="Writing the reply…", start=5, end=95, expected_chars=400, max_tokens=data.max_tokens
    )
    return {"reply": reply.text}


def register(registry: TaskRegistry) -> None:
    registry.task("chat", input=ChatInput, timeout=300, poll_interval=2.0, max_wait=300, typical_seconds=5)(chat)
