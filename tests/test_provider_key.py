"""A user's own provider key: used for that job alone, found nowhere at rest (SQLite, Redis, logs, responses)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from service.api.app import create_app
from service.config import Settings
from service.embedded import EmbeddedRedis

from .conftest import run_worker, serve, user_client, wait_for_status
from .fake_openai import serve_fake_openai
from .procs import store_sql


def sealed_keys(s: Settings) -> int:
    return int(store_sql(s, "SELECT COUNT(*) AS n FROM job_secrets")[0]["n"])


async def _redis_values(r: aioredis.Redis) -> list[bytes]:
    """Every value of every key, read by type, so compression in a dump cannot hide anything."""
    out: list[bytes] = []
    async for key in r.scan_iter(count=500):
        out.append(key)
        kind = (await r.type(key)).decode()
        if kind == "string":
            out.append(await r.get(key) or b"")
        elif kind == "list":
            out += await r.lrange(key, 0, -1)
        elif kind == "hash":
            out += [b for kv in (await r.hgetall(key)).items() for b in kv]
        elif kind == "set":
            out += list(await r.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in await r.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            out += [b for _, fields in await r.xrange(key) for kv in fields.items() for b in kv]
    return out


async def test_user_key_is_used_for_its_job_and_found_nowhere_at_rest(
    settings: Settings, redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user_key = f"sk-user-{secrets.token_hex(16)}"
    async with serve_fake_openai() as fake:
        s = dataclasses.replace(settings, ai_base_url=fake.base_url, ai_api_key="sk-server-key", ai_model="gpt-4o-mini")
        assert s.redis_url
        async with serve(create_app(s, redis_url=s.redis_url)) as live, user_client(live, s, "mia") as mia:
            body = {"type": "titles", "input": {"text": "Keys at rest"}, "user_provided_key": user_key}
            accepted = await mia.post("/api/jobs", json=body)
            assert accepted.status_code == 202, accepted.text
            header_job = await mia.post(
                "/api/jobs", json={"type": "summary", "input": {"text": "Header"}}, headers={"X-Provider-Key": user_key}
            )
            plain_job = await mia.post("/api/jobs", json={"type": "summary", "input": {"text": "Server key"}})
            ids = [accepted.json()["job_id"], header_job.json()["job_id"], plain_job.json()["job_id"]]
            assert sealed_keys(s) == 2  # sealed before the worker can see the job
            async with run_worker(s):
                finals = [await wait_for_status(mia, job_id, {"completed", "failed"}) for job_id in ids]
            assert [f["status"] for f in finals] == ["completed"] * 3, finals
            auth = sorted(r.headers["authorization"] for r in fake.requests)
            assert auth == sorted([f"Bearer {user_key}", f"Bearer {user_key}", "Bearer sk-server-key"])
            assert finals[0]["usage"]["prompt_tokens"] == 11 and finals[0]["usage"]["estimated"] is False

            responses = [accepted.text, header_job.text]
            responses += [(await mia.get(f"/api/jobs/{job_id}")).text for job_id in ids]
            responses += [(await mia.get("/api/jobs")).text, (await mia.get("/api/stats")).text]
            async with mia.stream("GET", f"/api/jobs/{ids[0]}/events") as stream:
                responses.append((await stream.aread()).decode())
        assert sealed_keys(s) == 0  # gone once the jobs ended

    needle = user_key.encode()
    if s.uses_postgres:  # every row of every table, as the server holds them
        tables = ("jobs", "job_secrets", "users", "idempotency_keys")
        at_rest = repr([store_sql(s, f"SELECT * FROM {t}") for t in tables]).encode()
    else:
        files = [p for p in (s.sqlite_path, Path(f"{s.sqlite_path}-wal"), Path(f"{s.sqlite_path}-shm")) if p.exists()]
        at_rest = b"".join(p.read_bytes() for p in files)
    assert b"Keys at rest" in at_rest  # control: the scan does see what the jobs stored
    assert needle not in at_rest, "key found in the SQLite files"
    r = aioredis.from_url(redis_server.url)
    try:
        assert not any(needle in v for v in await _redis_values(r)), "key found in a Redis value"
        await r.config_set("rdbcompression", "no")
        canary = f"canary-{secrets.token_hex(8)}"
        await r.set(f"aijobs:test:canary:{canary}", canary, ex=60)
        await r.save()
        dump = (Path(redis_server.data_dir) / "dump.rdb").read_bytes()
        assert canary.encode() in dump  # control: the dump is fresh and readable
        assert needle not in dump, "key found in the Redis dump"
    finally:
        await r.config_set("rdbcompression", "yes")
        await r.aclose()
    logged = "\n".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
    assert "job completed" in logged  # the worker's own log lines were captured
    assert user_key not in logged and user_key not in caplog.text
    assert not any(user_key in text for text in responses)


async def test_bad_provider_keys_are_refused_without_echoing_them(client: httpx.AsyncClient) -> None:
    bad = "has spaces in it"
    r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "x"}, "user_provided_key": bad})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_provider_key" and bad not in r.text
    r = await client.post(
        "/api/jobs",
        json={"type": "titles", "input": {"text": "x"}, "user_provided_key": "sk-a"},
        headers={"X-Provider-Key": "sk-b"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "provider_key_twice"
    assert "sk-a" not in r.text and "sk-b" not in r.text


async def test_the_same_key_in_body_and_header_is_one_key(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/jobs",
        json={"type": "titles", "input": {"text": "x"}, "user_provided_key": "sk-a"},
        headers={"X-Provider-Key": "sk-a"},
    )
    assert r.status_code == 202, r.text


async def test_a_key_that_no_longer_opens_fails_the_job_instead_of_using_the_server_key(settings: Settings) -> None:
    async with serve_fake_openai() as fake:
        s = dataclasses.replace(settings, ai_base_url=fake.base_url, ai_api_key="sk-server-key")
        assert s.redis_url
        async with serve(create_app(s, redis_url=s.redis_url)) as live, user_client(live, s, "ned") as ned:
            r = await ned.post(
                "/api/jobs", json={"type": "summary", "input": {"text": "x"}, "user_provided_key": "sk-user-1"}
            )
            job_id = r.json()["job_id"]
            # as if the server secret had changed since
            store_sql(s, "UPDATE job_secrets SET ciphertext = ? WHERE job_id = ?", (b"\x01" + b"\x00" * 40, job_id))
            async with run_worker(s):
                final = await wait_for_status(ned, job_id, {"completed", "failed"})
        assert final["status"] == "failed" and final["error"]["code"] == "provider_auth"
        assert fake.requests == []  # the server's key was never used in its place


async def test_a_retry_of_a_job_on_the_users_key_needs_that_key_again(settings: Settings) -> None:
    """The sealed key is gone once the job ends: a retry without it is refused, never run on the server's key."""
    first_key, again_key = f"sk-user-{secrets.token_hex(8)}", f"sk-user-{secrets.token_hex(8)}"
    async with serve_fake_openai() as fake:
        s = dataclasses.replace(settings, ai_base_url=fake.base_url, ai_api_key="sk-server-key")
        assert s.redis_url
        async with serve(create_app(s, redis_url=s.redis_url)) as live, user_client(live, s, "ola") as ola:
            body = {"type": "summary", "input": {"text": "Mine to pay for"}, "user_provided_key": first_key}
            old = (await ola.post("/api/jobs", json=body)).json()
            assert old["own_provider_key"] is True
            assert (await ola.post(f"/api/jobs/{old['job_id']}/cancel")).json()["status"] == "cancelled"

            refused = await ola.post(f"/api/jobs/{old['job_id']}/retry")
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["code"] == "provider_key_required" and error["field"] == "user_provided_key"
            assert "send the key again" in error["message"]
            assert (await ola.get("/api/jobs", params={"status": "queued"})).json()["jobs"] == []  # nothing made

            by_body = await ola.post(f"/api/jobs/{old['job_id']}/retry", json={"user_provided_key": again_key})
            assert by_body.status_code == 202, by_body.text
            retried = by_body.json()
            assert retried["retry_of"] == old["job_id"] and retried["own_provider_key"] is True
            assert again_key not in by_body.text
            # The retried job is itself retryable only with a key; the header works as on submit.
            await ola.post(f"/api/jobs/{retried['job_id']}/cancel")
            by_header = await ola.post(f"/api/jobs/{retried['job_id']}/retry", headers={"X-Provider-Key": again_key})
            assert by_header.status_code == 202, by_header.text
            unknown = await ola.post(f"/api/jobs/{old['job_id']}/retry", json={"priority": 9})
            assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "priority"
            async with run_worker(s):
                final = await wait_for_status(ola, by_header.json()["job_id"], {"completed", "failed"})
        assert final["status"] == "completed", final
        assert [r.headers["authorization"] for r in fake.requests] == [f"Bearer {again_key}"]  # never the server's
        assert sealed_keys(s) == 0


async def test_a_job_on_the_server_key_retries_without_one(client: httpx.AsyncClient) -> None:
    job = (await client.post("/api/jobs", json={"type": "titles", "input": {"text": "server pays"}})).json()
    assert job["own_provider_key"] is False
    await client.post(f"/api/jobs/{job['job_id']}/cancel")
    again = await client.post(f"/api/jobs/{job['job_id']}/retry")
    assert again.status_code == 202 and again.json()["own_provider_key"] is False
