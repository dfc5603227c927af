"""Accounts in the web process: what auth, limits and history need (users, sealed keys, the session signer, limits,
webhook secrets and deliveries),
built once in the lifespan and found through the scope. Nothing here imports the handlers that use it (auth.py,
session.py), so dependencies run one way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import Scope

from ..config import Settings
from ..crypto import KeyBox, SecretBox, SessionSigner, load_server_secret
from ..limits import StreamSlots, SubmissionLimits
from ..store import (
    JobStore,
    admin_queries,
    job_queries,
    job_secrets,
    operator_log,
    user_store,
    webhook_outbox,
    webhook_secrets,
)
from ..store.admin import AdminQueries, OperatorLog
from ..store.queries import JobQueries
from ..store.users import JobSecrets, UserStore
from ..store.webhooks import WebhookOutbox, WebhookSecrets
from ..usage import PriceTable

STATE_KEY = "aijobs_accounts"
SESSION_MAX_AGE = 7 * 24 * 3600  # seconds a browser session lasts (the signer enforces it)


@dataclass(frozen=True, slots=True)
class Accounts:
    settings: Settings
    users: UserStore
    secrets: JobSecrets
    queries: JobQueries
    signer: SessionSigner
    keybox: KeyBox
    limits: SubmissionLimits
    slots: StreamSlots
    prices: PriceTable
    webhook_secrets: WebhookSecrets
    webhook_outbox: WebhookOutbox
    admin: AdminQueries  # across every user's jobs: only the operator API (api/admin.py) reaches it
    audit: OperatorLog


def build_accounts(settings: Settings, store: JobStore, redis: Any) -> Accounts:
    secret = load_server_secret(settings)
    return Accounts(
        settings=settings,
        users=user_store(store),
        secrets=job_secrets(store),
        queries=job_queries(store),
        signer=SessionSigner(secret, SESSION_MAX_AGE),
        keybox=KeyBox(secret),
        limits=SubmissionLimits(settings, redis),
        slots=StreamSlots(settings.max_streams),
        prices=PriceTable(settings.prices),
        webhook_secrets=webhook_secrets(store, SecretBox(secret), overlap=settings.webhook_secret_overlap),
        webhook_outbox=webhook_outbox(store),
        admin=admin_queries(store),
        audit=operator_log(store),
    )


def accounts_from_scope(scope: Scope) -> Accounts | None:
    state = scope.get("state")
    return state.get(STATE_KEY) if isinstance(state, dict) else None


def accounts(conn: HTTPConnection) -> Accounts:
    found = accounts_from_scope(conn.scope)
    if found is None:
        raise RuntimeError("accounts are not set up: the app's lifespan did not run")
    return found
