"""Opening a store and what lives beside it, picked by DATABASE_URL: the one place that names a backend's class.

Backends are imported lazily, so a missing driver only hurts those who chose that backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .base import JobStore

if TYPE_CHECKING:
    from ..config import Settings
    from ..crypto import SecretBox
    from .admin import AdminQueries, OperatorLog
    from .queries import JobQueries
    from .users import JobSecrets, UserStore
    from .webhooks import WebhookOutbox, WebhookSecrets


def open_store(settings: Settings) -> JobStore:
    """Pick the backend from DATABASE_URL; imported lazily so a missing driver only hurts its users."""
    if settings.uses_postgres:
        from .postgres import PostgresJobStore

        return PostgresJobStore(
            settings.database_url,
            max_size=settings.database_pool_size,
            statement_timeout=settings.database_statement_timeout,
        )
    from .sqlite import SQLiteJobStore

    return SQLiteJobStore(settings.sqlite_path, busy_timeout=settings.store_busy_timeout)


async def migrate(settings: Settings) -> tuple[int, int]:
    """`aijobs migrate`: bring the store's schema to this code's; (version before, version after)."""
    store = open_store(settings)
    if settings.uses_postgres:
        from .postgres import PostgresJobStore

        assert isinstance(store, PostgresJobStore)  # open_store's own choice, a line above
        await store.open(check_schema=False)  # the one opening that may find an older schema: it is here to fix it
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


def webhook_outbox(store: JobStore) -> WebhookOutbox:
    from .webhooks import WebhookOutbox

    return WebhookOutbox(store)


def webhook_secrets(store: JobStore, box: SecretBox, *, overlap: float) -> WebhookSecrets:
    from .webhooks import WebhookSecrets

    return WebhookSecrets(store, box, overlap=overlap)


def admin_queries(store: JobStore) -> AdminQueries:
    from .admin import AdminQueries

    return AdminQueries(store)


def operator_log(store: JobStore) -> OperatorLog:
    from .admin import OperatorLog

    return OperatorLog(store)


@contextlib.asynccontextmanager
async def open_users(settings: Settings) -> AsyncIterator[UserStore]:
    """The users of the configured store, for one-off callers (the CLI, tests, the bench) outside a running app."""
    store = open_store(settings)
    await store.open()
    try:
        yield user_store(store)
    finally:
        await store.close()
