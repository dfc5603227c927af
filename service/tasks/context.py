"""What a task sees of the world: progress, streamed output, the AI provider. Nothing of HTTP, Redis or SQL."""

from __future__ import annotations

from typing import Protocol

from ..providers.base import Provider


class TaskContext(Protocol):
    job_id: str
    attempt: int
    max_attempts: int
    ai: Provider
    api_key: str | None  # the user's own provider key for this job, if they supplied one

    async def progress(self, percentage: float, step: str | None = None) -> None:
        """Report how far along the task is (0-100) and what it is doing, in words a user understands."""

    async def delta(self, text: str) -> None:
        """Append a piece of streamed output; watchers see it within ~100 ms, the store keeps the whole."""
