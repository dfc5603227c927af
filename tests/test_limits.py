"""Per-user limits: refused with a clear error (429 + Retry-After where waiting helps); nothing accepted is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from service.api.app import create_app
from service.config import Settings

from .conftest import WAIT_SECONDS, LiveServer, run_worker, serve, until, user_client, wait_for_status


@contextlib.asynccontextmanager
async def app_with(settings: Settings, **overrides: object) -> AsyncIterator[tuple[Settings, LiveServer]]:
    limited = dataclasses.replace(settings, **overrides)  # type: ignore[arg-type]
    assert limited.redis_url
    async with serve(create_app(limited, redis_url=limited.redis_url)) as live:
        yield limited, live


async def test_submissions_per_minute_429_with_retry_after_and_nothing_dropped(settings: Settings) -> None:
    async with app_with(settings, submissions_per_minute=3) as (s, live):
        async with user_client(live, s, "eve") as eve, user_client(live, s, "frank") as frank:
            accepted = []
            for i in range(3):
                r = await eve.post("/api/jobs", json={"type": "titles", "input": {"text": f"t{i}"}})
                assert r.status_code == 202
                accepted.append(r.json()["job_id"])
            over = await eve.post("/api/jobs", json={"type": "titles", "input": {"text": "one too many"}})
            assert over.status_code == 429
            assert over.json()["error"]["code"] == "rate_limited"
            assert "3 jobs per minute" in over.json()["error"]["message"]
            assert 1 <= int(over.headers["retry-after"]) <= 60
            # Another user is not slowed down by eve.
            assert (await frank.post("/api/jobs", json={"type": "titles", "input": {"text": "f"}})).status_code == 202
            async with run_worker(s):
                for job_id in accepted:
                    assert (await wait_for_status(eve, job_id, {"completed", "failed"}))["status"] == "completed"
            history = (await eve.get("/api/jobs")).json()
            assert sorted(j["job_id"] for j in history["jobs"]) == sorted(accepted)  # the refused one left no trace


async def test_active_jobs_cap_frees_up_as_jobs_finish(settings: Settings) -> None:
    async with app_with(settings, max_active_jobs=2) as (s, live):
        async with user_client(live, s, "gina") as gina:
            first = [
                (await gina.post("/api/jobs", json={"type": "titles", "input": {"text": f"a{i}"}})).json()["job_id"]
                for i in range(2)
            ]
            over = await gina.post("/api/jobs", json={"type": "titles", "input": {"text": "third"}})
            assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_active_jobs"
            assert over.headers["retry-after"]
            async with run_worker(s):
                for job_id in first:
                    await wait_for_status(gina, job_id, {"completed"})
                again = await gina.post("/api/jobs", json={"type": "titles", "input": {"text": "third"}})
                assert again.status_code == 202
                await wait_for_status(gina, again.json()["job_id"], {"completed"})


async def test_input_over_the_per_type_byte_cap_is_413(settings: Settings) -> None:
    async with app_with(settings, max_input_bytes="titles=200") as (s, live):
        async with user_client(live, s, "hal") as hal:
            ok = await hal.post("/api/jobs", json={"type": "titles", "input": {"text": "short"}})
            assert ok.status_code == 202
            big = await hal.post("/api/jobs", json={"type": "titles", "input": {"text": "é" * 150}})  # 300 bytes
            assert big.status_code == 413
            assert big.json()["error"]["code"] == "input_too_large" and "200 bytes" in big.json()["error"]["message"]
            other_type = await hal.post("/api/jobs", json={"type": "summary", "input": {"text": "é" * 150}})
            assert other_type.status_code == 202  # caps are per type


async def test_open_streams_are_capped_per_user_and_released(settings: Settings) -> None:
    async with app_with(settings, max_streams=2) as (s, live):
        async with user_client(live, s, "ivy") as ivy, user_client(live, s, "jon") as jon:
            job = (await ivy.post("/api/jobs", json={"type": "titles", "input": {"text": "queued, no worker"}})).json()
            url = f"/api/jobs/{job['job_id']}/events"
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(2):
                    r = await stack.enter_async_context(ivy.stream("GET", url))
                    assert r.status_code == 200
                third = await ivy.get(url)
                assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
                assert third.headers["retry-after"]
                other = (await jon.post("/api/jobs", json={"type": "titles", "input": {"text": "j"}})).json()
                async with jon.stream("GET", f"/api/jobs/{other['job_id']}/events") as theirs:
                    assert theirs.status_code == 200  # per user, not per process
            # Closed streams give their slots back (the server sees the disconnect; poll with a deadline).
            deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
            while True:
                async with ivy.stream("GET", url) as again:
                    if again.status_code == 200:
                        break
                assert asyncio.get_running_loop().time() < deadline, "stream slots were not released"
                await asyncio.sleep(0.05)


async def test_a_websocket_over_the_stream_cap_gets_429_too_many_streams(settings: Settings) -> None:
    """As the README's table says: over MAX_STREAMS a WebSocket handshake is answered `429 too_many_streams` (JSON,
    Retry-After) instead of the upgrade, not the 403 of a foreign origin or a missing sign-in."""
    import websockets

    async with app_with(settings, max_streams=2) as (s, live):
        async with user_client(live, s, "kim") as kim:
            url = live.url.replace("http://", "ws://") + "/api/ws"
            headers = {"Authorization": kim.headers["authorization"]}
            async with (
                websockets.connect(url, additional_headers=headers),
                websockets.connect(url, additional_headers=headers),
            ):
                with pytest.raises(websockets.exceptions.InvalidStatus) as info:
                    async with websockets.connect(url, additional_headers=headers):
                        pass
                response = info.value.response
                assert response.status_code == 429 and response.headers["retry-after"]
                error = json.loads(response.body)["error"]
                assert error["code"] == "too_many_streams" and "poll" in error["message"]

            async def slot_free() -> bool:
                try:
                    async with websockets.connect(url, additional_headers=headers):
                        return True
                except websockets.exceptions.InvalidStatus:
                    return False

            await until(slot_free, what="the closed WebSockets to give their slots back")


@pytest.mark.parametrize("value", ["titles", "titles=-1", "x=abc"])
def test_bad_byte_caps_name_the_variable(value: str) -> None:
    from service.config import SettingsError

    with pytest.raises(SettingsError, match="MAX_INPUT_BYTES"):
        Settings.from_env({"MAX_INPUT_BYTES": value})


def test_bad_prices_name_the_variable() -> None:
    from service.config import SettingsError

    with pytest.raises(SettingsError, match="AI_PRICES"):
        Settings.from_env({"AI_PRICES": "gpt=cheap"})


async def test_two_users_hammering_never_lose_an_accepted_job(settings: Settings) -> None:
    """Both users submit past their per-minute budget at once: every 202 completes, every refusal is a 429."""
    async with app_with(settings, submissions_per_minute=5) as (s, live):
        async with user_client(live, s, "kim") as kim, user_client(live, s, "lee") as lee, run_worker(s):

            async def burst(c: httpx.AsyncClient, name: str) -> list[httpx.Response]:
                return await asyncio.gather(
                    *(c.post("/api/jobs", json={"type": "titles", "input": {"text": f"{name}{i}"}}) for i in range(8))
                )

            for c, answers in ((kim, await burst(kim, "k")), (lee, await burst(lee, "l"))):
                codes = sorted(r.status_code for r in answers)
                assert codes == [202] * 5 + [429] * 3
                for r in answers:
                    if r.status_code == 202:
                        assert (await wait_for_status(c, r.json()["job_id"], {"completed"}))["status"] == "completed"


async def test_active_cap_holds_under_a_concurrent_burst(settings: Settings) -> None:
    """The insert itself checks the cap: ten submissions at once, cap 3, exactly three are taken."""
    async with app_with(settings, max_active_jobs=3) as (s, live):
        async with user_client(live, s, "mia") as mia:
            answers = await asyncio.gather(
                *(mia.post("/api/jobs", json={"type": "titles", "input": {"text": f"m{i}"}}) for i in range(10))
            )
            codes = sorted(r.status_code for r in answers)
            assert codes == [202] * 3 + [429] * 7
            assert {r.json()["error"]["code"] for r in answers if r.status_code == 429} == {"too_many_active_jobs"}
            assert len((await mia.get("/api/jobs")).json()["jobs"]) == 3  # the refused ones left no trace


async def test_a_refusal_at_the_active_cap_spends_no_budget_and_frees_its_key(settings: Settings) -> None:
    async with app_with(settings, max_active_jobs=1, submissions_per_minute=2) as (s, live):
        async with user_client(live, s, "noa") as noa:
            first = await noa.post("/api/jobs", json={"type": "titles", "input": {"text": "one"}})
            assert first.status_code == 202
            again = {"type": "titles", "input": {"text": "two"}}
            for _ in range(3):  # each spends a per-minute entry first, given back when the store refuses it
                over = await noa.post("/api/jobs", json=again, headers={"Idempotency-Key": "k-two"})
                assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_active_jobs"
            async with run_worker(s):
                await wait_for_status(noa, first.json()["job_id"], {"completed"})
                # Budget 2, one used: accepted. The key refused three times is free again, not stuck or a 503.
                second = await noa.post("/api/jobs", json=again, headers={"Idempotency-Key": "k-two"})
                assert second.status_code == 202 and "idempotent-replayed" not in second.headers
                await wait_for_status(noa, second.json()["job_id"], {"completed"})


async def test_retry_counts_against_the_active_cap(settings: Settings) -> None:
    """Retrying a cancelled job again and again is one more active job each time: the cap holds (issue 15.1)."""
    async with app_with(settings, max_active_jobs=3) as (s, live):
        async with user_client(live, s, "oli") as oli:
            job_id = (await oli.post("/api/jobs", json={"type": "titles", "input": {"text": "o"}})).json()["job_id"]
            assert (await oli.post(f"/api/jobs/{job_id}/cancel")).json()["status"] == "cancelled"
            answers = [await oli.post(f"/api/jobs/{job_id}/retry") for _ in range(6)]
            assert [r.status_code for r in answers] == [202] * 3 + [429] * 3
            refused = answers[-1]
            assert refused.json()["error"]["code"] == "too_many_active_jobs" and refused.headers["retry-after"]
            active = (await oli.get("/api/jobs", params={"status": "queued,processing"})).json()["jobs"]
            assert len(active) == 3 and {j["retry_of"] for j in active} == {job_id}


async def test_retry_counts_against_the_per_minute_budget(settings: Settings) -> None:
    async with app_with(settings, submissions_per_minute=2) as (s, live):
        async with user_client(live, s, "pia") as pia:
            job_id = (await pia.post("/api/jobs", json={"type": "titles", "input": {"text": "p"}})).json()["job_id"]
            await pia.post(f"/api/jobs/{job_id}/cancel")
            assert (await pia.post(f"/api/jobs/{job_id}/retry")).status_code == 202  # the second of two
            over = await pia.post(f"/api/jobs/{job_id}/retry")
            assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(over.headers["retry-after"]) <= 60
            # and a retry spent the budget a new submission would have used
            assert (await pia.post("/api/jobs", json={"type": "titles", "input": {"text": "q"}})).status_code == 429
