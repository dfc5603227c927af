"""Webhooks as a receiver sees them: a real HTTP server, started here, verifies every delivery with the
`standardwebhooks` package and answers 500 the first time; it still gets exactly one successful delivery per event,
the retry carrying the same webhook-id. SSRF: loopback, private, link-local and IPv6 (::1, IPv4-mapped) targets are
refused at submit with a 422 and a stable code, and the resolved address is checked again at delivery. A delivery cut
off by a worker's crash is sent again by the next worker, under the same id.

The receiver listens on 127.0.0.1, which webhooks may reach here only because WEBHOOK_ALLOW_NETS allows it. Host names
come from a resolver the test gives the app and worker (no DNS of its own on a test machine); `localhost` is the
system's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.app import create_app
from service.config import Settings
from service.embedded import EmbeddedRedis
from service.webhooks.targets import Resolver, refusal, system_resolver

from .conftest import LiveServer, fast_settings, make_user, run_worker, serve, until, wait_for_status
from .procs import spawn, store_sql, workers


@dataclass
class Seen:
    id: str
    timestamp: int
    host: str
    path: str
    body: bytes
    verified: bool
    answered: int
    headers: dict[str, str]

    @property
    def signature(self) -> str:
        return self.headers["webhook-signature"]


@dataclass
class Receiver:
    """What a receiver of ours does: verify the signature with the reference package, answer 500 to the first try of
    each message, 200 after (or hang on the first try, to be cut off by a crash)."""

    secret: str = ""
    hang_first: bool = False
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        message = headers.get("webhook-id", "")
        first = not any(s.id == message for s in self.seen)
        answer = 200 if verified and not first else (500 if verified else 401)
        if request.url.path == "/moved":
            answer = 307
        self.seen.append(
            Seen(
                message,
                int(headers.get("webhook-timestamp", 0)),
                headers["host"],
                request.url.path,
                body,
                verified,
                answer,
                headers,
            )  # fmt: skip
        )
        self.arrived.set()
        if first and self.hang_first:
            await self.release.wait()
        return Response(status_code=answer, headers={"Location": "/hook"} if answer == 307 else None)

    def of(self, message: str) -> list[Seen]:
        return [s for s in self.seen if s.id == message]

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/hook", self.hook, methods=["POST"]), Route("/moved", self.hook, methods=["POST"])]
        )


def resolver(names: dict[str, Callable[[], Sequence[str]]]) -> Resolver:
    """Names the test made up (a name with no answer is unknown); `localhost` as the system resolves it."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        if host in names:
            return names[host]()
        if host == "localhost":
            return await system_resolver(host, port)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    return resolve


def hook_settings(redis_server: EmbeddedRedis, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_allow_nets": ("127.0.0.0/8",),
        "webhook_retry_base": 0.05,
        "webhook_poll_seconds": 0.05,
        "webhook_timeout": 5.0,
        **overrides,
    }
    return fast_settings(redis_server, tmp_path, **values)


@contextlib.asynccontextmanager
async def api(live: LiveServer, settings: Settings, name: str) -> AsyncIterator[httpx.AsyncClient]:
    token = await make_user(settings, name)
    async with httpx.AsyncClient(base_url=live.url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def titles(text: str = "How we stopped AI requests from timing out", **webhook: Any) -> dict[str, Any]:
    return {"type": "titles", "input": {"text": text}, "webhook": webhook}


def message_id(job_id: str, event: str) -> str:
    return f"msg_{job_id.replace('-', '')}_{event}"


async def submitted(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await client.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


async def delivery_of(client: httpx.AsyncClient, job_id: str, status: str) -> dict[str, Any]:
    """The job's one delivery once it is `status`."""
    found: list[dict[str, Any]] = []

    async def settled() -> bool:
        r = await client.get(f"/api/jobs/{job_id}/webhooks")
        assert r.status_code == 200, r.text
        found[:] = r.json()["deliveries"]
        return len(found) == 1 and found[0]["status"] == status

    await until(settled, what=f"{job_id}'s delivery to be {status}")
    return found[0]


async def test_a_receiver_verifies_every_delivery_and_gets_one_per_event_though_it_first_answers_500(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = hook_settings(redis_server, tmp_path)
    names = resolver({"receiver.test": lambda: ["127.0.0.1"]})
    receiver = Receiver()
    assert settings.redis_url
    async with (
        serve(receiver.app()) as hooks,
        serve(create_app(settings, redis_url=settings.redis_url, resolver=names)) as live,
        run_worker(settings, resolver=names),
        api(live, settings, "alice") as alice,
        api(live, settings, "bob") as bob,
    ):
        port = hooks.url.rsplit(":", 1)[1]
        r = await alice.get("/api/webhooks/secret")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        receiver.secret = r.json()["secret"]
        assert receiver.secret.startswith("whsec_") and (await alice.get("/api/webhooks/secret")).json() == r.json()

        # By name (resolved to 127.0.0.1, which only the test's resolver knows: the delivery connects to the address
        # it checked, with the name as Host), every end wanted; by address, only failures wanted.
        ok = await submitted(alice, titles(url=f"http://receiver.test:{port}/hook?from=aijobs"))
        bad = await submitted(alice, titles("[[fail:400]]", url=f"{hooks.url}/hook", events=["failed"]))
        quiet = await submitted(alice, titles(url=f"{hooks.url}/hook", events=["failed"]))
        done = await wait_for_status(alice, ok, {"completed"})
        assert done["webhook"] == {
            "url": f"http://receiver.test:{port}/hook?from=aijobs",
            "events": ["completed", "failed", "cancelled", "expired"],
        }
        await wait_for_status(alice, bad, {"failed"})
        await wait_for_status(alice, quiet, {"completed"})

        delivered = await delivery_of(alice, ok, "delivered")
        failed_job = await delivery_of(alice, bad, "delivered")
        ids = {ok: message_id(ok, "completed"), bad: message_id(bad, "failed")}
        assert (delivered["id"], failed_job["id"]) == (ids[ok], ids[bad])
        for record in (delivered, failed_job):
            assert record["attempts"] == 2 and record["last_status_code"] == 200 and record["delivered_at"]
            assert [a["status_code"] for a in record["responses"]] == [500, 200]
        quiet_record = (await alice.get(f"/api/jobs/{quiet}/webhooks")).json()
        assert quiet_record["deliveries"] == [], "completed, and only failures were wanted: nothing, ever"

        for job_id, event in ((ok, "job.completed"), (bad, "job.failed")):
            tries = receiver.of(ids[job_id])
            assert [s.answered for s in tries] == [500, 200], "the 500 was tried again; once answered, never again"
            assert all(s.verified for s in tries), "every attempt signed as Standard Webhooks says"
            assert tries[0].body == tries[1].body, "same message, same bytes; only the timestamp is fresh"
            assert all(abs(s.timestamp - time.time()) < 60 for s in tries)
            body = json.loads(tries[0].body)
            assert body["type"] == event and body["data"]["job_id"] == job_id and "input" not in body["data"]
            assert body["data"]["status"] == event.removeprefix("job.")
        assert {s.host for s in receiver.of(ids[ok])} == {f"receiver.test:{port}"}
        assert json.loads(receiver.of(ids[ok])[0].body)["data"]["result"]["titles"]
        assert json.loads(receiver.of(ids[bad])[0].body)["data"]["error"]["code"]
        assert len(receiver.seen) == 4, "two events, two tries each, nothing else"

        assert (await bob.get(f"/api/jobs/{ok}/webhooks")).status_code == 404, "another user's job: not found"
        assert (await bob.get("/api/webhooks/secret")).json()["secret"] != receiver.secret

        # Rotation: the old secret keeps verifying for the overlap, beside the new one.
        rotated = (await alice.post("/api/webhooks/secret")).json()
        assert rotated["secret"] != receiver.secret and rotated["previous_valid_until"]
        old_secret, receiver.secret = receiver.secret, rotated["secret"]
        after = await submitted(alice, titles(url=f"{hooks.url}/hook", events=["completed"]))
        await delivery_of(alice, after, "delivered")
        [first_try, _] = receiver.of(message_id(after, "completed"))
        assert len(first_try.signature.split(" ")) == 2, "signed with both secrets during the overlap"
        for secret in (old_secret, rotated["secret"]):
            Webhook(secret).verify(first_try.body, first_try.headers)


async def test_webhook_targets_that_are_not_public_are_refused_at_submit(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = fast_settings(redis_server, tmp_path)  # no WEBHOOK_ALLOW_NETS: public addresses only
    names = resolver({"internal.test": lambda: ["10.20.30.40"], "hooks.example": lambda: ["93.184.216.34"],
                      "split.test": lambda: ["192.168.1.5", "93.184.216.34"]})  # fmt: skip
    assert settings.redis_url
    refused = {
        "http://localhost:8080/hook": "127.0.0.1 (loopback)",
        "http://127.0.0.1/hook": "127.0.0.1 (loopback)",
        "http://10.1.2.3/hook": "10.1.2.3 (private)",
        "http://internal.test/hook": "'internal.test' resolves to 10.20.30.40 (private)",
        "http://169.254.169.254/latest/meta-data": "169.254.169.254 (link-local)",
        "http://0.0.0.0:9000/": "0.0.0.0 (unspecified)",
        "http://[::1]:8080/hook": "::1 (loopback)",
        "http://[::ffff:127.0.0.1]/hook": "::ffff:127.0.0.1 (loopback)",
        "http://[::ffff:10.0.0.1]/hook": "::ffff:10.0.0.1 (private)",
        "http://[fe80::1]/hook": "fe80::1 (link-local)",
        "http://[fd12:3456::1]/hook": "fd12:3456::1 (private)",
        "https://224.0.0.1/hook": "224.0.0.1 (multicast)",
        "http://100.64.0.1/hook": "100.64.0.1 (not public)",
    }
    async with (
        serve(create_app(settings, redis_url=settings.redis_url, resolver=names)) as live,
        api(live, settings, "alice") as alice,
    ):
        for url, why in refused.items():
            r = await alice.post("/api/jobs", json=titles(url=url))
            assert r.status_code == 422, (url, r.text)
            error = r.json()["error"]
            assert (error["code"], error["field"]) == ("webhook_url_refused", "webhook.url"), (url, error)
            assert why in error["message"] and "WEBHOOK_ALLOW_NETS" in error["message"], (url, error["message"])
        unknown = (await alice.post("/api/jobs", json=titles(url="https://no-such-host.test/hook"))).json()["error"]
        assert unknown["code"] == "webhook_host_unknown" and "no-such-host.test" in unknown["message"]
        shapes = {
            "ftp://hooks.example/x": "webhook.url",
            "http://user:secret@hooks.example/x": "webhook.url",
            "http://hooks.example/x#part": "webhook.url",
            "http://hooks.example:99999/x": "webhook.url",
        }
        for url, where in shapes.items():
            error = (await alice.post("/api/jobs", json=titles(url=url))).json()["error"]
            assert (error["code"], error["field"]) == ("invalid_webhook", where), (url, error)
        for webhook, where in (
            ({"url": "https://hooks.example/x", "events": ["completed", "exploded"]}, "webhook.events"),
            ({"url": "https://hooks.example/x", "events": []}, "webhook.events"),
            ({"url": "https://hooks.example/x", "secret": "mine"}, "webhook.secret"),
            ({"events": ["failed"]}, "webhook.url"),
            ("https://hooks.example/x", "webhook"),
        ):
            body = {"type": "titles", "input": {"text": "x"}, "webhook": webhook}
            r = await alice.post("/api/jobs", json=body)
            assert r.status_code == 422 and r.json()["error"]["field"] == where, (webhook, r.text)
        assert (await alice.get("/api/jobs")).json()["jobs"] == [], "no refusal stored anything"

        for url in ("https://hooks.example/in", "http://93.184.216.34:8443/in", "https://split.test/in"):
            assert (await alice.post("/api/jobs", json=titles(url=url))).status_code == 202, url

        # The same Idempotency-Key with another webhook is another request.
        keyed = {"Idempotency-Key": "once"}
        first = await alice.post("/api/jobs", json=titles(url="https://hooks.example/a"), headers=keyed)
        again = await alice.post("/api/jobs", json=titles(url="https://hooks.example/a"), headers=keyed)
        assert again.headers["idempotent-replayed"] == "true" and again.json()["job_id"] == first.json()["job_id"]
        other = await alice.post("/api/jobs", json=titles(url="https://hooks.example/b"), headers=keyed)
        assert other.json()["error"]["code"] == "idempotency_key_reused"

        # Cancelled by the web process (no worker here): its delivery is queued by that same write; a retry keeps the
        # webhook.
        job = await submitted(alice, titles(url="https://hooks.example/in", events=["cancelled"]))
        assert (await alice.post(f"/api/jobs/{job}/cancel")).json()["status"] == "cancelled"
        [pending] = (await alice.get(f"/api/jobs/{job}/webhooks")).json()["deliveries"]
        assert (pending["id"], pending["event"], pending["status"]) == (message_id(job, "cancelled"), "job.cancelled",
                                                                         "pending")  # fmt: skip
        assert pending["attempts"] == 0 and pending["next_attempt_at"] and pending["responses"] == []
        retried = await alice.post(f"/api/jobs/{job}/retry")
        assert retried.status_code == 202 and retried.json()["webhook"] == {
            "url": "https://hooks.example/in",
            "events": ["cancelled"],
        }


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("::ffff:192.168.0.1", "private"),
        ("fe80::1%eth0", "link-local"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "private"),  # documentation range
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:93.184.216.34", None),
    ],
)
def test_what_an_address_is_judged_as(address: str, why: str | None) -> None:
    assert refusal(address) == why
    assert refusal(address, [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]) is None, "allowed"


async def test_the_resolved_address_is_checked_again_at_delivery_and_redirects_are_not_followed(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = hook_settings(redis_server, tmp_path)
    answers = iter([["93.184.216.34"]])  # public when submitted; afterwards the name points inside

    def flip() -> Sequence[str]:
        return next(answers, ["10.0.0.7"])

    names = resolver({"flip.test": flip})
    receiver = Receiver()
    assert settings.redis_url
    async with (
        serve(receiver.app()) as hooks,
        serve(create_app(settings, redis_url=settings.redis_url, resolver=names)) as live,
        run_worker(settings, resolver=names),
        api(live, settings, "alice") as alice,
    ):
        receiver.secret = (await alice.get("/api/webhooks/secret")).json()["secret"]
        rebound = await submitted(alice, titles(url="http://flip.test/hook"))
        moved = await submitted(alice, titles(url=f"{hooks.url}/moved"))
        record = await delivery_of(alice, rebound, "failed")
        assert record["attempts"] == 1, "a refused address is not tried again"
        assert "webhook_url_refused" in record["last_error"] and "10.0.0.7 (private)" in record["last_error"]
        assert record["last_status_code"] is None, "nothing was sent"
        record = await delivery_of(alice, moved, "failed")
        assert (record["attempts"], record["last_status_code"]) == (1, 307)
        assert "redirects are not followed" in record["last_error"]
        assert [s.path for s in receiver.seen] == ["/moved"], "the Location was never asked"


async def test_a_delivery_cut_off_by_a_worker_crash_is_sent_by_the_next_worker_with_the_same_id(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """The outbox is in the store: killing the worker in the middle of a delivery loses nothing."""
    settings = hook_settings(redis_server, tmp_path, webhook_timeout=2.0)  # a claim lapses 4 s after it is taken
    receiver = Receiver(hang_first=True)
    env = {
        "AIJOBS_DATA_DIR": str(settings.data_dir),  # the web's server key: the worker signs with the same secret
        "WEBHOOK_ALLOW_NETS": "127.0.0.0/8",
        "WEBHOOK_TIMEOUT": "2",
        "WEBHOOK_POLL_SECONDS": "0.05",
        "WEBHOOK_RETRY_BASE": "0.05",
    }
    assert settings.redis_url
    async with (
        serve(receiver.app()) as hooks,
        serve(create_app(settings, redis_url=settings.redis_url)) as live,
        api(live, settings, "alice") as alice,
    ):
        receiver.secret = (await alice.get("/api/webhooks/secret")).json()["secret"]
        with workers(settings, tmp_path) as started:
            first = spawn(started, settings, tmp_path, **env)
            job = await submitted(alice, titles(url=f"{hooks.url}/hook", events=["completed"]))
            await asyncio.wait_for(receiver.arrived.wait(), 30)  # the first try is in the receiver's hands
            first.signal(signal.SIGKILL)
            await first.wait_exit()
            spawn(started, settings, tmp_path, **env)
            record = await delivery_of(alice, job, "delivered")
            receiver.release.set()
        [cut, sent] = receiver.of(message_id(job, "completed"))
        assert cut.body == sent.body and sent.answered == 200 and cut.verified and sent.verified
        assert record["attempts"] == 1 and [a["status_code"] for a in record["responses"]] == [200]
        assert len(receiver.seen) == 2


async def test_a_stopping_worker_gives_its_claims_back_at_once(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    settings = hook_settings(redis_server, tmp_path)
    receiver = Receiver(hang_first=True)
    assert settings.redis_url
    async with (
        serve(receiver.app()) as hooks,
        serve(create_app(settings, redis_url=settings.redis_url)) as live,
        api(live, settings, "alice") as alice,
    ):
        receiver.secret = (await alice.get("/api/webhooks/secret")).json()["secret"]
        async with run_worker(settings):
            job = await submitted(alice, titles(url=f"{hooks.url}/hook", events=["completed"]))
            await asyncio.wait_for(receiver.arrived.wait(), 30)
            [claimed] = store_sql(settings, "SELECT claim_token, next_at FROM webhook_deliveries")
            assert claimed["claim_token"] and claimed["next_at"] > time.time(), "leased while it is being sent"
        [released] = store_sql(settings, "SELECT claim_token, next_at, status FROM webhook_deliveries")
        assert (
            released["claim_token"] is None and released["next_at"] <= time.time() and released["status"] == "pending"
        )
        receiver.release.set()
        async with run_worker(settings):
            record = await delivery_of(alice, job, "delivered")
        assert record["attempts"] == 1 and [s.id for s in receiver.seen] == [message_id(job, "completed")] * 2
