"""Cancel (queued and running, on another process), retries, model fallback, idempotency, retry endpoint."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace
from pathlib import Path

import httpx

from service.config import Settings
from service.queue import JobQueue

from .conftest import WAIT_SECONDS, run_worker, wait_for_status
from .procs import spawn, store_row, store_sql, workers


async def test_cancel_queued_job_never_starts(client: httpx.AsyncClient, settings: Settings) -> None:
    r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "never run me"}})
    job_id = r.json()["job_id"]
    c = await client.post(f"/api/jobs/{job_id}/cancel")
    assert c.status_code == 200 and c.json()["status"] == "cancelled"
    again = await client.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"  # idempotent
    async with run_worker(settings):
        other = (await client.post("/api/jobs", json={"type": "summary", "input": {"text": "run me"}})).json()
        await wait_for_status(client, other["job_id"], {"completed"})
    row = store_row(settings, job_id)
    assert row["status"] == "cancelled" and row["started_at"] is None and row["attempts"] == 0


async def test_cancel_running_job_on_another_process(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    with workers(settings, tmp_path) as started:
        spawn(started, settings, tmp_path, HEARTBEAT_SECONDS="5", LEASE_SECONDS="30")  # the message must do it
        body = {
            "type": "chat",
            "input": {"messages": [{"role": "user", "content": "Tell me a long story [[slow:20]]"}]},
        }
        job_id = (await client.post("/api/jobs", json=body)).json()["job_id"]
        deadline = time.monotonic() + WAIT_SECONDS
        while not (await client.get(f"/api/jobs/{job_id}")).json()["partial_output"]:
            assert time.monotonic() < deadline, "the job never streamed any output"
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        c = await client.post(f"/api/jobs/{job_id}/cancel")
        took = time.monotonic() - t0
        assert c.status_code == 200, c.text
        job = c.json()
        assert job["status"] == "cancelled", (took, job)
        assert job["partial_output"] and job["result"] is None
        assert job["attempts"][-1]["error"] == "cancelled"
        print(f"running job cancelled on another process in {took:.3f} s")
        finished = await client.post(f"/api/jobs/{job_id}/cancel")
        assert finished.status_code == 200 and finished.json()["status"] == "cancelled"


async def test_cancel_finished_job_is_409(client: httpx.AsyncClient, worker: object) -> None:
    job_id = (await client.post("/api/jobs", json={"type": "summary", "input": {"text": "quick"}})).json()["job_id"]
    await wait_for_status(client, job_id, {"completed"})
    r = await client.post(f"/api/jobs/{job_id}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    missing = await client.post("/api/jobs/nope/cancel")
    assert missing.status_code == 404


async def test_retryable_errors_retry_then_succeed(client: httpx.AsyncClient, settings: Settings) -> None:
    async with run_worker(replace(settings, retry_base=0.1, retry_cap=0.3)):
        r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "flaky [[fail:500:times=2]]"}})
        done = await wait_for_status(client, r.json()["job_id"], {"completed", "failed"})
        assert done["status"] == "completed" and done["attempt"] == 3
        assert [h["error"] for h in done["attempts"]] == ["provider_server_error", "provider_server_error", None]


async def test_permanent_error_fails_at_once(client: httpx.AsyncClient, worker: object) -> None:
    r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "bad [[fail:400]]"}})
    done = await wait_for_status(client, r.json()["job_id"], {"completed", "failed"})
    assert done["status"] == "failed" and done["attempt"] == 1
    assert done["error"]["code"] == "provider_bad_request" and not done["error"]["retryable"]


async def test_retry_after_wins_and_the_wait_is_shown_without_spending_an_attempt(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with run_worker(replace(settings, retry_base=0.1, retry_cap=0.2)):
        r = await client.post(
            "/api/jobs", json={"type": "summary", "input": {"text": "busy [[fail:429:retry_after=1.5:times=1]]"}}
        )
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + WAIT_SECONDS
        waiting = (await client.get(f"/api/jobs/{job_id}")).json()
        while not (waiting["status"] == "queued" and waiting["error"]):
            assert time.monotonic() < deadline, waiting
            await asyncio.sleep(0.02)
            waiting = (await client.get(f"/api/jobs/{job_id}")).json()
        assert waiting["next_attempt_at"] and waiting["error"]["code"] == "rate_limited", waiting
        assert waiting["attempt"] == 0 and waiting["attempts"] == []  # a 429 is no attempt
        assert waiting["progress"]["current_step"].startswith("Waiting for the provider's rate limit")
        done = await wait_for_status(client, job_id, {"completed", "failed"})
        assert done["status"] == "completed" and done["attempt"] == 1
        assert [a["error"] for a in done["attempts"]] == [None]
        row = store_row(settings, job_id)
        assert row["completed_at"] - row["started_at"] >= 1.5  # it waited the provider's Retry-After


async def test_computed_backoff_is_honoured_before_the_next_attempt(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with run_worker(replace(settings, retry_base=1.0, retry_cap=1.0)):
        r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "flaky [[fail:500:times=1]]"}})
        done = await wait_for_status(client, r.json()["job_id"], {"completed", "failed"})
    assert done["status"] == "completed" and done["attempt"] == 2, done
    first, second = done["attempts"][0], done["attempts"][1]
    assert first["error"] == "provider_server_error" and second["error"] is None
    row = store_row(settings, r.json()["job_id"])
    # full jitter over the upper half of base × 2^0 = 1 s: the second attempt waited at least 0.5 s
    assert row["completed_at"] - row["started_at"] >= 0.5


async def test_model_fallback_chain(client: httpx.AsyncClient, settings: Settings) -> None:
    chained = replace(
        settings, ai_model="sim-fail-400", ai_fallback_models=("sim-fail-500", "sim-2"), retry_base=0.05, retry_cap=0.1
    )
    async with run_worker(chained):
        r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "fallbacks"}})
        done = await wait_for_status(client, r.json()["job_id"], {"completed", "failed"})
    assert done["status"] == "completed" and done["model"] == "sim-2", done
    tried = [(h["model"], h["error"]) for h in done["attempts"]]
    assert tried == [
        ("sim-fail-400", "provider_bad_request"),
        ("sim-fail-500", "provider_server_error"),
        ("sim-fail-500", "provider_server_error"),
        ("sim-fail-500", "provider_server_error"),
        ("sim-2", None),
    ]
    assert all(h["seconds"] >= 0 for h in done["attempts"])


async def test_idempotency_key(client: httpx.AsyncClient) -> None:
    body = {"type": "summary", "input": {"text": "once only"}}
    a = await client.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    b = await client.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert a.status_code == b.status_code == 202
    assert a.json()["job_id"] == b.json()["job_id"] and b.headers["Idempotent-Replayed"] == "true"
    other = await client.post("/api/jobs", json={**body, "priority": 9}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert "new key" in other.json()["error"]["message"]  # says what to do next
    # The same request with its defaults written out is the same request, not a reuse of the key.
    spelled_out = {"type": "summary", "input": {"text": "once only", "max_sentences": 3}, "priority": 5}
    same_again = await client.post("/api/jobs", json=spelled_out, headers={"Idempotency-Key": "k-1"})
    assert same_again.status_code == 202 and same_again.json()["job_id"] == a.json()["job_id"]
    reordered = {"input": body["input"], "type": body["type"]}  # same request, keys in another order
    same = await client.post("/api/jobs", json=reordered, headers={"Idempotency-Key": "k-1"})
    assert same.status_code == 202 and same.json()["job_id"] == a.json()["job_id"]
    fresh = await client.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    assert fresh.json()["job_id"] != a.json()["job_id"]


async def test_retry_endpoint_links_new_job(client: httpx.AsyncClient, worker: object) -> None:
    r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "refused [[fail:refused]]"}})
    old = await wait_for_status(client, r.json()["job_id"], {"failed", "completed"})
    assert old["status"] == "failed"
    again = await client.post(f"/api/jobs/{old['job_id']}/retry")
    assert again.status_code == 202
    new = again.json()
    assert new["retry_of"] == old["job_id"] and new["job_id"] != old["job_id"] and new["input"] == old["input"]
    ok = (await client.post("/api/jobs", json={"type": "summary", "input": {"text": "fine"}})).json()
    await wait_for_status(client, ok["job_id"], {"completed"})
    refused = await client.post(f"/api/jobs/{ok['job_id']}/retry")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_not_retryable"


async def test_cancel_seen_by_heartbeat_when_the_message_is_lost(client: httpx.AsyncClient, settings: Settings) -> None:
    """Pub/sub is at-most-once: a flag in the store alone (no message sent) still stops the run."""
    async with run_worker(replace(settings, heartbeat_seconds=0.3, lease_seconds=3)):
        body = {"type": "chat", "input": {"messages": [{"role": "user", "content": "Long story [[slow:20]]"}]}}
        job_id = (await client.post("/api/jobs", json=body)).json()["job_id"]
        await wait_for_status(client, job_id, {"processing"})
        # what the API does, minus the control message
        store_sql(settings, "UPDATE jobs SET cancel_requested = (1 = 1) WHERE id = ?", (job_id,))
        # (a run the flag did not stop would go on for 20 s)
        done = await wait_for_status(client, job_id, {"cancelled", "completed", "failed"}, timeout=15)
        assert done["status"] == "cancelled"


async def test_cancel_job_of_dead_worker(client: httpx.AsyncClient, settings: Settings, tmp_path: Path) -> None:
    """The worker died: cancel answers with the flag set, and the sweeper ends the job cancelled, not re-run."""
    with workers(settings, tmp_path) as started:
        w = spawn(started, settings, tmp_path)
        job_id = (await client.post("/api/jobs", json={"type": "summary", "input": {"text": "x [[slow:20]]"}})).json()[
            "job_id"
        ]
        await wait_for_status(client, job_id, {"processing"})
        w.signal(signal.SIGKILL)
        await w.wait_exit()
        c = await client.post(f"/api/jobs/{job_id}/cancel")
        assert c.status_code == 200 and c.json()["cancel_requested"] is True
        spawn(started, settings, tmp_path)  # its sweeper finds the lapsed lease
        done = await wait_for_status(client, job_id, {"cancelled", "completed", "failed"})
        assert done["status"] == "cancelled" and done["attempt"] == 1


async def test_cancel_closes_the_upstream_stream(settings: Settings) -> None:
    """A running job streaming from an OpenAI-compatible server: cancel → `cancelled` with its partial output, and
    the server sees the worker hang up (the HTTP stream is closed, not left to run up the bill)."""
    from service.api.app import create_app

    from .conftest import serve, user_client
    from .fake_openai import serve_fake_openai

    async with serve_fake_openai() as fake:
        s = replace(settings, ai_base_url=fake.base_url, ai_api_key="sk-server", heartbeat_seconds=5, lease_seconds=30)
        assert s.redis_url
        fake.hang()  # one "partial" delta, then nothing until the client goes away
        async with serve(create_app(s, redis_url=s.redis_url)) as live, user_client(live, s, "cy") as cy:
            async with run_worker(s):
                body = {"type": "chat", "input": {"messages": [{"role": "user", "content": "A long story"}]}}
                job_id = (await cy.post("/api/jobs", json=body)).json()["job_id"]
                deadline = time.monotonic() + WAIT_SECONDS
                while (await cy.get(f"/api/jobs/{job_id}")).json()["partial_output"] != "partial":
                    assert time.monotonic() < deadline, "the job never streamed its first piece"
                    await asyncio.sleep(0.05)
                assert not fake.client_disconnected.is_set()
                c = await cy.post(f"/api/jobs/{job_id}/cancel")
                assert c.status_code == 200, c.text
                await asyncio.wait_for(fake.client_disconnected.wait(), 10)  # the upstream stream was closed
                job = await wait_for_status(cy, job_id, {"cancelled", "completed", "failed"})
    assert job["status"] == "cancelled" and job["partial_output"] == "partial" and job["result"] is None
    assert job["attempts"][-1]["error"] == "cancelled"
    assert len(fake.requests) == 1  # and not tried again


async def test_cancel_of_a_queued_job_deletes_its_sealed_key(client: httpx.AsyncClient, settings: Settings) -> None:
    body = {"type": "summary", "input": {"text": "never run me"}, "user_provided_key": "sk-user-queued"}
    job_id = (await client.post("/api/jobs", json=body)).json()["job_id"]
    sealed = "SELECT COUNT(*) AS n FROM job_secrets WHERE job_id = ?"
    assert store_sql(settings, sealed, (job_id,))[0]["n"] == 1
    c = await client.post(f"/api/jobs/{job_id}/cancel")
    assert c.status_code == 200 and c.json()["status"] == "cancelled"
    assert store_sql(settings, sealed, (job_id,))[0]["n"] == 0


async def test_fallback_to_another_provider(settings: Settings) -> None:
    """A chain `AI_MODEL` on the primary, then `backup:gpt-b` on a second OpenAI-compatible server: the first
    exhausting its retries (500s) or failing for good (400) moves the job on; each attempt names its provider."""
    from service.api.app import create_app

    from .conftest import serve, user_client
    from .fake_openai import serve_fake_openai

    async with serve_fake_openai() as first, serve_fake_openai() as second:
        backup_url = second.base_url.replace("http://", "http://sk-backup@")
        s = replace(
            settings,
            ai_base_url=first.base_url,
            ai_api_key="sk-primary",
            ai_model="gpt-a",
            ai_providers=f"backup={backup_url}",
            ai_fallback_models=("backup:gpt-b",),
            max_attempts=2,
            retry_base=0.05,
            retry_cap=0.1,
        )
        assert s.redis_url and "sk-backup" not in repr(s)
        async with (
            serve(create_app(s, redis_url=s.redis_url)) as live,
            user_client(live, s, "fay") as fay,
            run_worker(s),
        ):

            async def run(text: str, **extra: str) -> dict:
                body = {"type": "summary", "input": {"text": text}, **extra}
                job_id = (await fay.post("/api/jobs", json=body)).json()["job_id"]
                return await wait_for_status(fay, job_id, {"completed", "failed"})

            first.next_error(500)
            first.next_error(500)
            exhausted = await run("exhaust the primary")
            first.next_error(400)
            refused = await run("refused by the primary")
            keyed_requests = len(second.requests)
            first.next_error(400)
            keyed = await run("my own key", user_provided_key="sk-user-own")

    assert exhausted["status"] == "completed", exhausted
    assert (exhausted["provider"], exhausted["model"]) == ("backup", "gpt-b")
    assert [(a["provider"], a["model"], a["error"]) for a in exhausted["attempts"]] == [
        ("openai", "gpt-a", "provider_server_error"),
        ("openai", "gpt-a", "provider_server_error"),
        ("backup", "gpt-b", None),
    ]
    assert exhausted["result"]["summary"].startswith("Hello from fake")
    assert refused["status"] == "completed" and refused["provider"] == "backup"
    assert [(a["provider"], a["error"]) for a in refused["attempts"]] == [
        ("openai", "provider_bad_request"),
        ("backup", None),
    ]
    # Each server saw its own server key.
    assert {r.headers["authorization"] for r in first.requests[:3]} == {"Bearer sk-primary"}
    assert {r.headers["authorization"] for r in second.requests} == {"Bearer sk-backup"}
    # A user's own key is for the primary alone: no fallback to another provider (nor its server key) for them.
    assert keyed["status"] == "failed" and keyed["error"]["code"] == "provider_bad_request", keyed
    assert keyed["provider"] is None and [a["provider"] for a in keyed["attempts"]] == ["openai"]
    assert first.requests[-1].headers["authorization"] == "Bearer sk-user-own"
    assert len(second.requests) == keyed_requests


async def test_a_type_chain_starting_elsewhere_keeps_a_users_key_on_its_provider(settings: Settings) -> None:
    """A type whose chain starts on another provider: a job with the user's own key skips that step (the key is
    never sent there, and no server key stands in for it) and runs on the primary with the user's key."""
    from service.api.app import create_app
    from service.tasks import TaskRegistry
    from service.tasks import summary as summary_module
    from service.tasks.summary import SummaryInput

    from .conftest import serve, user_client
    from .fake_openai import serve_fake_openai

    registry = TaskRegistry()
    registry.task("summary", input=SummaryInput, models=("backup:gpt-b", "gpt-a"))(summary_module.summary)
    async with serve_fake_openai() as primary, serve_fake_openai() as backup:
        s = replace(
            settings,
            ai_base_url=primary.base_url,
            ai_api_key="sk-primary",
            ai_providers=f"backup={backup.base_url.replace('http://', 'http://sk-backup@')}",
        )
        assert s.redis_url
        async with (
            serve(create_app(s, redis_url=s.redis_url, registry=registry)) as live,
            user_client(live, s, "gus") as gus,
            run_worker(s, registry=registry),
        ):
            plain = (await gus.post("/api/jobs", json={"type": "summary", "input": {"text": "server pays"}})).json()
            plain = await wait_for_status(gus, plain["job_id"], {"completed", "failed"})
            body = {"type": "summary", "input": {"text": "I pay"}, "user_provided_key": "sk-user-gus"}
            keyed = (await gus.post("/api/jobs", json=body)).json()
            keyed = await wait_for_status(gus, keyed["job_id"], {"completed", "failed"})
    assert (plain["status"], plain["provider"], plain["model"]) == ("completed", "backup", "gpt-b"), plain
    assert keyed["status"] == "completed" and (keyed["provider"], keyed["model"]) == ("openai", "gpt-a"), keyed
    assert [(a["provider"], a["error"]) for a in keyed["attempts"]] == [
        ("backup", "provider_key_elsewhere"),
        ("openai", None),
    ]
    assert [r.headers["authorization"] for r in backup.requests] == ["Bearer sk-backup"]  # the plain job only
    assert [r.headers["authorization"] for r in primary.requests] == ["Bearer sk-user-gus"]


async def test_a_cancel_ends_only_the_attempt_and_the_worker_runs_on(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The attempt runs in the arq job's own task: the cancel must stop it, not the job's finish or the worker."""
    began = time.time()
    async with run_worker(settings) as worker:
        body = {"type": "chat", "input": {"messages": [{"role": "user", "content": "Long story [[slow:20]]"}]}}
        job_id = (await client.post("/api/jobs", json=body)).json()["job_id"]
        await wait_for_status(client, job_id, {"processing"})
        c = await client.post(f"/api/jobs/{job_id}/cancel")
        assert c.status_code == 200 and c.json()["status"] == "cancelled", c.text
        r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "After a cancel"}})
        await wait_for_status(client, r.json()["job_id"], {"completed"})
        queue = JobQueue(worker.pool, queue_name=settings.queue_name)  # type: ignore[attr-defined]
        deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
        while await queue.depth():  # both arq jobs finished (neither left to run again)
            assert asyncio.get_running_loop().time() < deadline, "an arq job was left on the queue"
            await asyncio.sleep(0.05)
        # Two arq jobs, both finished, neither retried nor failed; and the cleanup cron's run, if the test lasted over
        # a minute's second 0 (it runs then, in some worker on the queue).
        minutes = int(time.time() // 60) - int(began // 60)
        assert (worker.jobs_retried, worker.jobs_failed) == (0, 0)  # type: ignore[attr-defined]
        assert 2 <= worker.jobs_complete <= 2 + minutes, (worker.jobs_complete, minutes)  # type: ignore[attr-defined]
