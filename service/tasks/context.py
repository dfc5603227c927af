"""What a task sees of the world: progress, streamed output, the AI provider. Nothing of HTTP, Redis or SQL."""

from __future__ import annotations

from typing import Protocol

from ..providers.base import Provider


class TaskContext(Protocol):
    """Read-only to a task (properties, not attributes): the runner's context may hold narrower types, such as a
    provider that records usage."""

    @property
    def job_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def max_attempts(self) -> int: ...

    @property
    def ai(self) -> Provider: ...

    @property
    def api_key(self) -> str | None:
        """The user's own provider key for this job, if they supplied one."""

    async def progress(self, percentage: float, step: str | None = None) -> None:
        """Report how far along the task is (0-100) and what it is doing, in words a user understands."""

    async def delta(self, text: str) -> None:
        """Append a piece of streamed output; watchers see it within ~100 ms, the store keeps the whole."""
