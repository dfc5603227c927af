"""The job store: the system of record. Redis only carries what is in flight.

Callers outside this package open a store with `open_store` and reach its users, sealed keys and history queries
through `user_store`, `job_secrets` and `job_queries`: never through a backend's class or private names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import JobStore, SchemaMismatch, StoreOpenError, UniqueViolation

if TYPE_CHECKING:
    from ..config import Settings
    from .queries import JobQueries
    from .users import JobSecrets, UserStore


def open_store(settings: Settings) -> JobStore:
    """Pick the backend from DATABASE_URL; imported lazily so a missing driver only hurts its users."""
    if settings.uses_postgres:
        from .postgres import PostgresJobStore

        return PostgresJobStore(settings.database_url, max_size=settings.database_pool_size)
    from .sqlite import SQLiteJobStore

    return SQLiteJobStore(settings.sqlite_path, busy_timeout=settings.store_busy_timeout)


async def migrate(settings: Settings) -> tuple[int, int]:
    """`aijobs migrate`: bring the store's schema to this code's; (version before, version after)."""
    store = open_store(settings)
    if settings.uses_postgres:
        await store.open(check_schema=False)  # type: ignore[call-arg]
    else:
        await store.open()  # SQLite migrates as it opens: report what it found
    try:
        return await store.migrate()
    finally:
        await store.close()


def user_store(store: JobStore) -> UserStore:
    from .users import UserStore

    return UserStore(store)


def job_secrets(store: JobStore) -> JobSecrets:
    from .users import JobSecrets

    return JobSecrets(store)


def job_queries(store: JobStore) -> JobQueries:
    from .queries import JobQueries

    return JobQueries(store)


__all__ = [
    "JobStore",
    "SchemaMismatch",
    "StoreOpenError",
    "UniqueViolation",
    "job_queries",
    "job_secrets",
    "migrate",
    "open_store",
    "user_store",
]
