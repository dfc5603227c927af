"""The job store: the system of record. Redis only carries what is in flight."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import JobStore

if TYPE_CHECKING:
    from ..config import Settings


def open_store(settings: Settings) -> JobStore:
    """Pick the backend from DATABASE_URL; imported lazily so a missing driver only hurts its users."""
    from .sqlite import SQLiteJobStore

    return SQLiteJobStore(settings.sqlite_path, busy_timeout=settings.store_busy_timeout)


__all__ = ["JobStore", "open_store"]
