"""Webhook endpoints: your signing secret (read, rotate) and what became of a job's deliveries.

The secret is shown whenever its owner asks, not only once: deliveries are signed with it, so the server must be able
to read it anyway (it is sealed at rest with the server key, like users' provider keys), and a secret that can be read
again spares a rotation for a lost copy. Rotating makes a new one; the replaced one keeps signing beside it for
WEBHOOK_SECRET_OVERLAP, so receivers switch over without refusing a delivery.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .accounts import accounts
from .auth import current_user
from .errors import not_found
from .responses import JSONOut
from .state import app_state

NO_STORE = {"Cache-Control": "no-store"}  # a secret, or records that change: never kept by a cache


async def get_secret(request: Request) -> Response:
    """Your signing secret (`whsec_…`), made on first ask."""
    secret = await accounts(request).webhook_secrets.get(current_user(request), replace_unreadable=True)
    return JSONOut(secret.to_public(), headers=NO_STORE)


async def rotate_secret(request: Request) -> Response:
    """A new signing secret; the old one signs beside it until `previous_valid_until`. No body."""
    secret = await accounts(request).webhook_secrets.rotate(current_user(request))
    return JSONOut(secret.to_public(), headers=NO_STORE)


async def job_webhooks(request: Request) -> Response:
    """The job's webhook and every delivery made for it, each with its attempts' answers (404 if not your job)."""
    state = app_state(request)
    job = await state.store.get_owned(request.path_params["job_id"], current_user(request))
    if job is None:
        raise not_found()
    deliveries = await accounts(request).webhook_outbox.for_job(job.id)
    body = {"job_id": job.id, "webhook": job.webhook, "deliveries": [d.to_public() for d in deliveries]}
    return JSONOut(body, headers=NO_STORE)
