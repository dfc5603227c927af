"""image: a prompt in, generated images out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..schema import constraint
from .context import TaskContext
from .registry import TaskRegistry


@dataclass(frozen=True)
class ImageInput:
    """What to draw."""

    prompt: str = field(metadata=constraint(min_len=1, max_len=4_000))
    n: int = field(default=1, metadata=constraint(ge=1, le=4, doc="How many images"))
    size: Literal["256x256", "512x512", "1024x1024"] = "512x512"


async def image(ctx: TaskContext, data: ImageInput) -> dict[str, list[str]]:
    """Generate images from a prompt."""
    await ctx.progress(10, "Sending the prompt…")
    await ctx.progress(30, f"Generating {data.n} image{'s' if data.n > 1 else ''}…")
    result = await ctx.ai.image(data.prompt, n=data.n, size=data.size, api_key=ctx.api_key)
    await ctx.progress(95, "Saving images…")
    return {"images": result.images}


def register(registry: TaskRegistry) -> None:
    registry.task(
        "image", input=ImageInput, timeout=600, poll_interval=5.0, max_wait=300, typical_seconds=10, kind="image"
    )(image)
