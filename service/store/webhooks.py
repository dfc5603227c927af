"""Webhook deliveries (the outbox) and users' signing secrets, in either store.

The outbox rows are written by the store itself: a trigger on the statement that gives a job with a `webhook` its
terminal status inserts one row per wanted event (migrations 10 / pg 2), so the job's end and its delivery commit
together or not at all. Workers drain it here. A claim is a lease: it moves the row's `next_at` one lease ahead and
sets a fresh `claim_token`; only the holder of that token can record the attempt, and a worker that dies mid-delivery
leaves a row that simply comes due again when the lease runs out. The delivery's id never changes, so every attempt
at one event carries the same `webhook-id` (receivers dedupe on it).

Like users.py, this shares the store's connection (`store.db`, `?` placeholders on both dialects).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from ..crypto import SecretBox, new_webhook_secret
from ..models import dumps, iso, now
from .base import JobStore

log = logging.getLogger("aijobs.webhooks")

_DELIVERY = (
    "id, job_id, user_id, event, url, status, attempts, next_at, occurred_at, updated_at, delivered_at, responses"
)


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str  # the webhook-id of every attempt
    job_id: str
    user_id: str
    event: str  # "job.completed", …
    url: str
    status: str  # pending | delivered | failed
    attempts: int
    next_at: float
    occurred_at: float
    updated_at: float
    delivered_at: float | None
    responses: list[dict[str, Any]] = field(default_factory=list)  # one entry per attempt, oldest first

    def to_public(self) -> dict[str, Any]:
        last = self.responses[-1] if self.responses else {}
        return {
            "id": self.id,
            "event": self.event,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "occurred_at": iso(self.occurred_at),
            "next_attempt_at": iso(self.next_at) if self.status == "pending" else None,
            "delivered_at": iso(self.delivered_at),
            "last_status_code": last.get("status_code"),
            "last_error": last.get("error"),
            "responses": self.responses,
        }


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row[0],
        job_id=row[1],
        user_id=row[2],
        event=row[3],
        url=row[4],
        status=row[5],
        attempts=int(row[6]),
        next_at=float(row[7]),
        occurred_at=float(row[8]),
        updated_at=float(row[9]),
        delivered_at=row[10],
        responses=json.loads(row[11]) if row[11] else [],
    )


class WebhookOutbox:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def claim(self, *, token: str, limit: int, lease_seconds: float) -> list[Delivery]:
        """Up to `limit` due deliveries, leased to `token` for `lease_seconds` (oldest due first). On PostgreSQL,
        rows another worker is claiming at this moment are skipped, not waited for. An idle poll is one read (no write
        lock taken, no row locked) that finds nothing due."""
        t = now()
        async with self.store.db.execute(
            "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_at <= ? LIMIT 1", (t,)
        ) as cur:
            if await cur.fetchone() is None:
                return []
        lock = " FOR UPDATE SKIP LOCKED" if self.store.dialect == "postgres" else ""
        async with self.store.db.execute(
            "UPDATE webhook_deliveries SET claim_token = ?, next_at = ? WHERE id IN (SELECT id FROM webhook_deliveries "
            f"WHERE status = 'pending' AND next_at <= ? ORDER BY next_at LIMIT ?{lock}) RETURNING {_DELIVERY}",
            (token, t + lease_seconds, t, limit),
        ) as cur:
            rows = await cur.fetchall()
        return sorted((_delivery(r) for r in rows), key=lambda d: d.occurred_at)

    async def record(
        self,
        delivery: Delivery,
        token: str,
        *,
        status: str,
        response: dict[str, Any],
        retry_at: float | None = None,
    ) -> bool:
        """One attempt's outcome: `delivered`, `failed` (given up), or `pending` again at `retry_at`. False when the
        claim was lost (its lease ran out and another worker took the row): that worker records instead."""
        t = now()
        responses = dumps([*delivery.responses, response])
        async with self.store.db.execute(
            "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, next_at = ?, claim_token = NULL, "
            "updated_at = ?, delivered_at = ?, responses = ? WHERE id = ? AND claim_token = ?",
            (
                status,
                retry_at if retry_at is not None else t,
                t,
                t if status == "delivered" else None,
                responses,
                delivery.id,
                token,
            ),
        ) as cur:
            return bool(cur.rowcount)

    async def release(self, ids: list[str], token: str) -> None:
        """Give claims back at once (a worker stopping): another worker may take them without waiting for the lease."""
        for delivery_id in ids:
            await self.store.db.execute(
                "UPDATE webhook_deliveries SET next_at = ?, claim_token = NULL WHERE id = ? AND claim_token = ? "
                "AND status = 'pending'",
                (now(), delivery_id, token),
            )

    async def for_job(self, job_id: str) -> list[Delivery]:
        async with self.store.db.execute(
            f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE job_id = ? ORDER BY occurred_at, id", (job_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [_delivery(r) for r in rows]


@dataclass(frozen=True, slots=True)
class SigningSecret:
    secret: str  # whsec_…
    created_at: float
    previous: str | None  # the secret it replaced, while that still signs
    previous_until: float | None

    def to_public(self) -> dict[str, Any]:
        return {
            "secret": self.secret,
            "created_at": iso(self.created_at),
            "previous_valid_until": iso(self.previous_until) if self.previous else None,
        }

    @property
    def signing(self) -> list[str]:
        """The secrets a delivery is signed with now: the current one, and the replaced one during the overlap."""
        return [self.secret, self.previous] if self.previous else [self.secret]


class SecretUnreadable(RuntimeError):
    """A user's sealed signing secret does not open: the server key changed (rotate the secret to get a new one)."""


class WebhookSecrets:
    """Each user's signing secret, made on first use, sealed at rest, rotatable with an overlap."""

    def __init__(self, store: JobStore, box: SecretBox, *, overlap: float) -> None:
        self.store = store
        self.box = box
        self.overlap = overlap

    async def get(self, user_id: str, *, replace_unreadable: bool = False) -> SigningSecret:
        """The user's secret; the first call makes it (concurrent first calls agree on one).

        One sealed under another server key cannot sign any more: SecretUnreadable, or with `replace_unreadable` (the
        user asking for it after SECRET_KEY changed) a new one in its place. Never replaced behind the user's back: a
        worker started with the wrong SECRET_KEY must not change everyone's secret."""
        try:
            found = await self._read(user_id)
        except SecretUnreadable:
            if not replace_unreadable:
                raise
            log.warning("webhook secret sealed under another server key: made a new one", extra={"user_id": user_id})
            await self.store.db.execute(
                "UPDATE webhook_secrets SET sealed = ?, previous = NULL, rotated_at = NULL, created_at = ? "
                "WHERE user_id = ?",
                (self.box.seal(new_webhook_secret(), user_id=user_id), now(), user_id),
            )
            found = await self._read(user_id)
        if found is not None:
            return found
        await self.store.db.execute(
            "INSERT INTO webhook_secrets (user_id, sealed, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO NOTHING",
            (user_id, self.box.seal(new_webhook_secret(), user_id=user_id), now()),
        )
        found = await self._read(user_id)
        if found is None:  # the insert above (or a concurrent one) committed: it is there
            raise RuntimeError("webhook secret missing after insert")
        return found

    async def rotate(self, user_id: str) -> SigningSecret:
        """A new secret; the one it replaces keeps signing beside it for `overlap` seconds, so receivers can switch
        without dropping a delivery (Standard Webhooks verifiers accept any one of the signatures sent)."""
        await self.get(user_id, replace_unreadable=True)
        await self.store.db.execute(
            "UPDATE webhook_secrets SET previous = sealed, sealed = ?, rotated_at = ?, created_at = ? "
            "WHERE user_id = ?",
            (self.box.seal(new_webhook_secret(), user_id=user_id), now(), now(), user_id),
        )
        return await self.get(user_id)

    async def _read(self, user_id: str) -> SigningSecret | None:
        async with self.store.db.execute(
            "SELECT sealed, previous, rotated_at, created_at FROM webhook_secrets WHERE user_id = ?", (user_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        secret = self.box.open(bytes(row[0]), user_id=user_id)
        if secret is None:
            raise SecretUnreadable(user_id)
        previous = until = None
        if row[1] is not None and row[2] is not None and row[2] + self.overlap > now():
            previous = self.box.open(bytes(row[1]), user_id=user_id)
            until = float(row[2]) + self.overlap
        return SigningSecret(secret, float(row[3]), previous, until)
