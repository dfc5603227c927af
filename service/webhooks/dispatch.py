"""The worker's webhook deliveries: claim due rows of the store's outbox, sign, send, record, retry.

Every worker runs one Dispatcher. It claims due deliveries (a lease: see service/store/webhooks.py), sends each one
at most WEBHOOK_CONCURRENCY at a time, and records the answer. A 2xx delivers it; a 5xx, 408, 429, a timeout or a
connection that fails is tried again later (WEBHOOK_RETRY_BASE, four times longer each time, with jitter, at most
WEBHOOK_RETRY_CAP; a Retry-After is honoured up to the cap) until WEBHOOK_MAX_ATTEMPTS; any other answer (a 4xx, a
redirect, which is never followed) and an address that is refused end it at once as `failed`. Every attempt at one
event has the same `webhook-id` and body, and a fresh `webhook-timestamp` and signature (receivers refuse old
timestamps). A worker that dies mid-delivery leaves its claim to lapse; another worker then sends it again, same id.

Who is asked: the resolved, checked address (targets.resolve), on a fresh connection each time (never a pooled one
that another host name opened), with no proxy from the environment, reading at most RESPONSE_READ_BYTES of the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..config import Settings
from ..crypto import SecretBox, webhook_signature
from ..models import Job, dumps, iso, now
from ..store import JobStore, webhook_outbox, webhook_secrets
from ..store.webhooks import Delivery, SecretUnreadable
from .targets import Resolver, WebhookRefused, resolve, system_resolver

log = logging.getLogger("aijobs.webhooks")

RESPONSE_READ_BYTES = 64 * 1024  # of a receiver's answer: enough to finish the exchange, never a memory risk
USER_AGENT = "aijobs-webhooks/1"
RETRY_GROWTH = 4.0  # each wait between attempts is this many times the one before


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None
    error: str | None
    retry: bool  # another attempt may go better
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def payload(job: Job, delivery: Delivery) -> bytes:
    """The body of every attempt at this delivery: the same bytes each time (the job no longer changes once it ended).
    `{"type": "job.completed", "timestamp", "data": the job as GET /api/jobs/{id} shows it, without its input}`."""
    data = job.to_public()
    data.pop("input", None)  # the caller has it; it can be large
    return dumps({"type": delivery.event, "timestamp": iso(delivery.occurred_at), "data": data}).encode()


def classify(status_code: int, headers: httpx.Headers) -> Outcome:
    if 200 <= status_code < 300:
        return Outcome(status_code, None, retry=False)
    if status_code >= 500 or status_code in (408, 429):
        return Outcome(status_code, f"HTTP {status_code}", retry=True, retry_after=_seconds(headers.get("retry-after")))
    if 300 <= status_code < 400:
        return Outcome(status_code, f"HTTP {status_code}: redirects are not followed", retry=False)
    return Outcome(status_code, f"HTTP {status_code}: not tried again", retry=False)


def _seconds(raw: str | None) -> float | None:
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


class Dispatcher:
    def __init__(
        self,
        *,
        store: JobStore,
        settings: Settings,
        box: SecretBox,
        resolver: Resolver | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.outbox = webhook_outbox(store)
        self.secrets = webhook_secrets(store, box, overlap=settings.webhook_secret_overlap)
        self.resolver: Resolver = resolver or system_resolver
        # A claim outlives the attempt it is for (bounded by WEBHOOK_TIMEOUT) and the writes around it.
        self.lease_seconds = settings.webhook_timeout + 2
        self._wake = asyncio.Event()
        self._running: dict[str, tuple[asyncio.Task[None], str]] = {}  # delivery id -> (its task, its claim token)
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """A job with a webhook just ended here: look for its delivery now, not at the next poll."""
        self._wake.set()

    async def run_forever(self) -> None:
        self._client = httpx.AsyncClient(
            trust_env=False,  # a proxy from the environment would resolve the name itself, past the address check
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=httpx.Timeout(self.settings.webhook_timeout),
        )
        try:
            while True:
                self._wake.clear()
                await self.claim_and_start()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.webhook_poll_seconds):
                        await self._wake.wait()
        finally:
            await asyncio.shield(self._stop())

    async def claim_and_start(self) -> int:
        """Claim what fits in the free slots and start sending it; how many were claimed."""
        free = self.settings.webhook_concurrency - len(self._running)
        if free <= 0:
            return 0
        token = os.urandom(16).hex()
        try:
            claimed = await self.outbox.claim(token=token, limit=free, lease_seconds=self.lease_seconds)
        except Exception as exc:  # the store is down: the rows wait there, due
            log.warning("webhook deliveries not claimed", extra={"error": repr(exc)})
            return 0
        for delivery in claimed:
            task = asyncio.create_task(self._deliver(delivery, token), name=f"aijobs-webhook-{delivery.id}")
            self._running[delivery.id] = (task, token)
        return len(claimed)

    async def _stop(self) -> None:
        """Stop sending and give the claims back, so another worker sends them now rather than after the lease."""
        running = list(self._running.items())
        for task, _ in (entry for _, entry in running):
            task.cancel()
        for delivery_id, (task, token) in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                await self.outbox.release([delivery_id], token)
        self._running.clear()
        if self._client is not None:
            await self._client.aclose()

    async def _deliver(self, delivery: Delivery, token: str) -> None:
        try:
            started = time.monotonic()
            at = now()
            try:
                async with asyncio.timeout(self.settings.webhook_timeout):
                    outcome = await self.attempt(delivery)
            except TimeoutError:
                outcome = Outcome(None, f"no answer within {self.settings.webhook_timeout:g} s", retry=True)
            await self._record(delivery, token, outcome, at=at, seconds=time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store failed us: nothing recorded, the claim lapses and it is sent again
            log.warning("webhook delivery not recorded", extra={"delivery": delivery.id, "error": repr(exc)})
        finally:
            self._running.pop(delivery.id, None)
            self._wake.set()  # a slot is free

    async def attempt(self, delivery: Delivery) -> Outcome:
        """One POST of this delivery, signed now; what came of it."""
        job = await self.store.get(delivery.job_id)
        if job is None:
            return Outcome(None, "the job no longer exists", retry=False)
        body = payload(job, delivery)
        try:
            secret = await self.secrets.get(delivery.user_id)
        except SecretUnreadable:  # another worker, or this one once its SECRET_KEY is fixed, can sign it
            return Outcome(None, "the signing secret cannot be opened here (is SECRET_KEY the web's?)", retry=True)
        try:
            target = await resolve(
                delivery.url,
                resolver=self.resolver,
                allowed=self.settings.webhook_nets,
                timeout=self.settings.webhook_timeout,
            )
        except WebhookRefused as refused:  # a name with no address may get one; a refused address stays refused
            return Outcome(None, f"{refused.code}: {refused.message}", retry=refused.code == "webhook_host_unknown")
        stamp = int(time.time())
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": delivery.id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": " ".join(webhook_signature(s, delivery.id, stamp, body) for s in secret.signing),
        }
        extensions: dict[str, Any] = {"sni_hostname": target.host} if target.scheme == "https" else {}
        assert self._client is not None, "run_forever opens the client"
        request = self._client.build_request(
            "POST", target.request_url, headers=headers, content=body, extensions=extensions
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            return Outcome(None, f"no answer within {self.settings.webhook_timeout:g} s", retry=True)
        except httpx.HTTPError as exc:
            return Outcome(None, f"connection failed: {exc.__class__.__name__}: {exc}"[:300], retry=True)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= RESPONSE_READ_BYTES:
                    break
        except httpx.HTTPError:
            pass  # the status line is what counts; a body cut short changes nothing
        finally:
            await response.aclose()
        return classify(response.status_code, response.headers)

    async def _record(self, delivery: Delivery, token: str, outcome: Outcome, *, at: float, seconds: float) -> None:
        attempt = delivery.attempts + 1
        response = {
            "attempt": attempt,
            "at": iso(at),
            "status_code": outcome.status_code,
            "error": outcome.error,
            "seconds": round(seconds, 3),
        }
        retry_at = None
        if outcome.delivered:
            status = "delivered"
        elif outcome.retry and attempt < self.settings.webhook_max_attempts:
            status, retry_at = "pending", now() + self.backoff(attempt, outcome.retry_after)
        else:
            status = "failed"
        recorded = await self.outbox.record(delivery, token, status=status, response=response, retry_at=retry_at)
        log.info(
            "webhook attempt",
            extra={
                "delivery": delivery.id,
                "job_id": delivery.job_id,
                "attempt": attempt,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "now": status,
                "recorded": recorded,
            },
        )

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before the attempt after `attempt`: base x 4^(attempt-1), jittered ±20%, capped; a receiver's
        Retry-After (429, 503) lengthens it, never beyond the cap."""
        s = self.settings
        wait = s.webhook_retry_base * RETRY_GROWTH ** (attempt - 1) * random.uniform(0.8, 1.2)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, s.webhook_retry_cap)
