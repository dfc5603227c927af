"""Coalescing: identical calls in flight share one upstream call; the result cache; never a user's own key.

The provider is the local OpenAI-compatible server, its answers held back by a gate so that every job is in
flight before the first call returns (no timing luck involved).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from redis.asyncio import Redis

from service.api.app import create_app
from service.config import Settings

from .conftest import run_worker, serve, until, user_client
from .fake_openai import FakeOpenAI, serve_fake_openai
from .procs import spawn, workers

USER_KEY = "sk-user-own-key-0123456789"
POST = {"text": "The same post, sent by everyone"}


def coalescing_settings(settings: Settings, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ai_base_url": base_url,
        "ai_api_key": f"sk-server-{uuid.uuid4().hex[:8]}",  # coalescing keys (in the shared Redis) are per server key
        "ai_model": f"gpt-test-{uuid.uuid4().hex[:8]}",
        "max_active_jobs": 1000,
        "submissions_per_minute": 1000,
        "retry_base": 0.1,
        "retry_cap": 0.2,
        "worker_concurrency": 20,
        **overrides,
    }
    return replace(settings, **values)


def chat_calls(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1/chat/completions")


async def submit(client: httpx.AsyncClient, type_: str = "titles", input_: Any = None, **extra: Any) -> str:
    r = await client.post("/api/jobs", json={"type": type_, "input": input_ or POST, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


Ref = tuple[httpx.AsyncClient, str]  # a job and its owner's client


async def all_in(jobs: list[Ref], wanted: set[str], timeout: float = 20) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal found
        found = [(await c.get(f"/api/jobs/{i}")).json() for c, i in jobs]
        return all(j["status"] in wanted for j in found)

    await until(check, timeout=timeout, what=f"every job {wanted}")
    return found


class Rig(NamedTuple):
    fake: FakeOpenAI
    settings: Settings
    ann: httpx.AsyncClient
    bob: httpx.AsyncClient


@contextlib.asynccontextmanager
async def rig(settings: Settings, *, gate: bool = True, worker: bool = True, **overrides: Any) -> AsyncIterator[Rig]:
    """The fake provider (its answers held back by its gate until the test sets it, unless gate=False), the app on
    coalescing settings (`overrides` on top), ann and bob signed in, and an in-process worker (unless worker=False)."""
    async with serve_fake_openai() as fake:
        if gate:
            fake.gate = asyncio.Event()
        s = coalescing_settings(settings, fake.base_url, **overrides)
        assert s.redis_url
        async with (
            serve(create_app(s, redis_url=s.redis_url)) as live,
            user_client(live, s, "ann") as ann,
            user_client(live, s, "bob") as bob,
            run_worker(s) if worker else contextlib.nullcontext(),
        ):
            yield Rig(fake, s, ann, bob)


DONE = {"completed", "failed", "cancelled", "expired"}


async def test_identical_jobs_of_two_users_share_one_call(settings: Settings) -> None:
    """Six identical titles jobs of two users, all in flight at once: one upstream call, six equal results; the
    leader's job is charged the call's tokens, the five others none and say `cached`."""
    async with rig(settings) as (fake, _, ann, bob):
        clients = [ann, bob] * 3
        jobs = list(zip(clients, await asyncio.gather(*(submit(c) for c in clients)), strict=True))
        await all_in(jobs, {"processing"})
        await until(lambda: asyncio.sleep(0, chat_calls(fake) == 1), what="the leader's call")
        fake.gate.set()
        done = await all_in(jobs, DONE)
    assert chat_calls(fake) == 1
    assert [j["status"] for j in done] == ["completed"] * 6, [j["error"] for j in done]
    assert len({str(j["result"]) for j in done}) == 1 and done[0]["result"]["titles"]
    assert len({j["partial_output"] for j in done}) == 1  # followers got the whole text as one delta
    leaders = [j for j in done if not j["usage"].get("cached")]
    assert len(leaders) == 1 and leaders[0]["usage"]["completion_tokens"] > 0
    for j in done:
        if j is not leaders[0]:
            assert j["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "estimated": False, "cached": True}


async def test_own_key_never_shares_nor_uses_the_cache(settings: Settings) -> None:
    """The same input with a user's own key: its own call beside the server key's one in flight, and its own call
    again after it, with the cache on."""
    async with rig(settings, result_cache_seconds=60) as (fake, _, ann, bob):
        jobs = [(ann, await submit(ann)), (bob, await submit(bob, user_provided_key=USER_KEY))]
        await until(lambda: asyncio.sleep(0, chat_calls(fake) == 2), what="both calls in flight")
        fake.gate.set()
        first = await all_in(jobs, DONE)
        again = [(bob, await submit(bob, user_provided_key=USER_KEY))]
        (second,) = await all_in(again, DONE)
    assert [j["status"] for j in first] == ["completed"] * 2
    assert chat_calls(fake) == 3
    bearers = [r.headers.get("authorization") for r in fake.requests]
    assert bearers.count(f"Bearer {USER_KEY}") == 2
    assert second["status"] == "completed" and not second["usage"].get("cached")
    assert not first[1]["usage"].get("cached")


async def test_a_type_not_opted_in_never_coalesces(settings: Settings) -> None:
    """Two identical chat jobs in flight at once, the cache on: two calls, and a third after them."""
    chat = {"messages": [{"role": "user", "content": "Hello there"}]}
    async with rig(settings, result_cache_seconds=60) as (fake, _, ann, _):
        jobs = [(ann, await submit(ann, "chat", chat)) for _ in range(2)]
        await until(lambda: asyncio.sleep(0, chat_calls(fake) == 2), what="both calls in flight")
        fake.gate.set()
        done = await all_in(jobs, DONE)
        (third,) = await all_in([(ann, await submit(ann, "chat", chat))], DONE)
    assert [j["status"] for j in done + [third]] == ["completed"] * 3
    assert chat_calls(fake) == 3
    assert not any(j["usage"].get("cached") for j in done + [third])


async def test_the_cache_serves_within_its_ttl_and_not_after(settings: Settings) -> None:
    """RESULT_CACHE_SECONDS=4: a job identical to a finished one is answered from the cache (no call, `cached`),
    and once the entry has expired in Redis, the next one calls again."""
    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    async with rig(settings, gate=False, result_cache_seconds=4) as (fake, _, ann, bob):
        post = {"text": f"A post cached {uuid.uuid4().hex}"}
        (first,) = await all_in([(ann, await submit(ann, input_=post))], DONE)
        (hit,) = await all_in([(bob, await submit(bob, input_=post))], DONE)
        assert chat_calls(fake) == 1
        entries = [k async for k in redis.scan_iter("aijobs:coal:cache:*") if post["text"] in str(await redis.get(k))]
        assert len(entries) == 1 and 0 < await redis.pttl(entries[0]) <= 4000

        async def expired() -> bool:
            return not await redis.exists(*entries)

        await until(expired, what="the cache entry to expire")
        (miss,) = await all_in([(bob, await submit(bob, input_=post))], DONE)
    await redis.aclose()
    assert [j["status"] for j in (first, hit, miss)] == ["completed"] * 3
    assert hit["usage"]["cached"] is True and hit["result"] == first["result"]
    assert chat_calls(fake) == 2 and not miss["usage"].get("cached")


async def test_a_failed_leader_hands_over_to_a_follower(settings: Settings) -> None:
    """The leader's call fails (HTTP 500): a follower takes over and calls; every job completes with one extra
    call (the leader's own retry is answered by the cache)."""
    async with rig(settings, result_cache_seconds=60) as (fake, _, ann, bob):
        fake.next_error(500)
        clients = [ann, bob, bob]
        jobs = list(zip(clients, await asyncio.gather(*(submit(c) for c in clients)), strict=True))
        await all_in(jobs, {"processing"})
        fake.gate.set()
        done = await all_in(jobs, DONE)
    assert [j["status"] for j in done] == ["completed"] * 3, [j["error"] for j in done]
    assert chat_calls(fake) == 2
    assert len({str(j["result"]) for j in done}) == 1


async def test_a_killed_leader_hands_over_when_its_lease_lapses(settings: Settings, tmp_path: Path) -> None:
    """Worker A (a real process) leads the call and is SIGKILLed mid-call: its lock lapses after its lease (2 s),
    a follower on worker B calls instead, and all three jobs complete with one extra call."""
    async with rig(settings, worker=False, result_cache_seconds=60) as (fake, s, ann, bob):
        env = {
            "AI_BASE_URL": fake.base_url,
            "AI_API_KEY": s.ai_api_key or "",
            "AI_MODEL": s.ai_model,
            "RESULT_CACHE_SECONDS": "60",
        }
        with workers(s, tmp_path) as started:
            a = spawn(started, s, tmp_path, **env)
            jobs = [(ann, await submit(ann))]
            await until(lambda: asyncio.sleep(0, chat_calls(fake) == 1), what="A's call")
            spawn(started, s, tmp_path, **env)
            jobs += [(bob, await submit(bob)), (bob, await submit(bob))]
            await all_in(jobs, {"processing"})
            assert chat_calls(fake) == 1  # the others follow
            a.signal(signal.SIGKILL)
            await a.wait_exit()
            fake.gate.set()
            done = await all_in(jobs, DONE, timeout=40)
    assert [j["status"] for j in done] == ["completed"] * 3, [j["error"] for j in done]
    assert chat_calls(fake) == 2
    assert len({str(j["result"]) for j in done}) == 1


async def test_cancelling_a_follower_leaves_the_leaders_call_alone(settings: Settings) -> None:
    """The first job leads (its call is in flight before the second is submitted); cancelling the follower ends
    it `cancelled` while the leader's call goes on and completes: one call, not a second one after a cancel."""
    async with rig(settings) as (fake, _, ann, bob):
        leader = (ann, await submit(ann))
        await until(lambda: asyncio.sleep(0, chat_calls(fake) == 1), what="the leader's call")
        follower = (bob, await submit(bob))
        await all_in([follower], {"processing"})
        assert (await bob.post(f"/api/jobs/{follower[1]}/cancel")).status_code in (200, 202)
        (cancelled,) = await all_in([follower], DONE)
        fake.gate.set()
        (led,) = await all_in([leader], DONE)
    assert cancelled["status"] == "cancelled"
    assert led["status"] == "completed" and not led["usage"].get("cached")
    assert chat_calls(fake) == 1


async def test_leads_longer_than_the_lease_keep_their_locks_with_one_renewer(settings: Settings) -> None:
    """Every lock a process leads is renewed by one shared loop: calls running for several leases keep their locks
    (an identical call that arrives late still follows, it does not call again), and the loop ends with the last
    lead."""
    from service.coalesce import Coalescer
    from service.providers.base import ChatResult, Usage

    assert settings.redis_url
    redis = Redis.from_url(settings.redis_url)
    coalescer = Coalescer(redis, lease=0.3, poll=0.02)
    gate = asyncio.Event()
    calls: list[str] = []

    def call_for(fp: str) -> Any:
        async def call() -> ChatResult:
            calls.append(fp)
            await gate.wait()
            return ChatResult(text=f"answer {fp}", model="m", usage=Usage(1, 2))

        return call

    fps = [uuid.uuid4().hex for _ in range(2)]
    try:
        leads = [asyncio.create_task(coalescer.run(fp, call_for(fp))) for fp in fps]
        await until(lambda: asyncio.sleep(0, len(calls) == 2), what="both leads calling")
        renewer = coalescer._renewer
        assert renewer is not None
        await asyncio.sleep(1.0)  # more than three leases: only renewals keep the locks
        late = [asyncio.create_task(coalescer.run(fp, call_for(fp))) for fp in fps]
        await asyncio.sleep(0.2)
        assert calls == fps, "the late calls follow the live leaders"
        gate.set()
        led = await asyncio.gather(*leads)
        followed = await asyncio.gather(*late)
        assert [(r.text, how) for r, how in led] == [(f"answer {fp}", None) for fp in fps]
        assert [(r.text, how) for r, how in followed] == [(f"answer {fp}", "call") for fp in fps]
        assert coalescer._renewer is renewer, "one renewer for every lead"
        await until(lambda: asyncio.sleep(0, renewer.done()), timeout=2, what="the renewer to end with the leads")
    finally:
        await redis.aclose()
