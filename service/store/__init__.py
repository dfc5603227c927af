"""The job store: the system of record. Redis only carries what is in flight.

Callers outside this package open a store with `open_store` and reach its users, sealed keys, history queries and
webhooks through `user_store`, `job_secrets`, `job_queries`, `webhook_outbox` and `webhook_secrets` (the operator
page: `admin_queries`, `operator_log`): never through a backend's class or private names.
"""

from __future__ import annotations

from .base import JobStore, SchemaMismatch, StoreOpenError, UniqueViolation
from .factory import (
    admin_queries,
    job_queries,
    job_secrets,
    migrate,
    open_store,
    open_users,
    operator_log,
    user_store,
    webhook_outbox,
    webhook_secrets,
)

__all__ = [
    "JobStore",
    "SchemaMismatch",
    "StoreOpenError",
    "UniqueViolation",
    "admin_queries",
    "job_queries",
    "job_secrets",
    "migrate",
    "open_store",
    "open_users",
    "operator_log",
    "user_store",
    "webhook_outbox",
    "webhook_secrets",
]
