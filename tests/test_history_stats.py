"""History (seed 001: "see my AI request history") and stats (seed 002's shape), through real parts."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import pytest
import redis.asyncio as aioredis

from service.config import Settings, parse_prices
from service.coordination import live_workers
from service.usage import PriceTable

from .conftest import WAIT_SECONDS, run_worker, wait_for_status

pytestmark = pytest.mark.usefixtures("worker")


async def _submit(client: httpx.AsyncClient, job_type: str, job_input: dict) -> str:
    r = await client.post("/api/jobs", json={"type": job_type, "input": job_input})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


async def test_history_pages_newest_first_with_filters(client: httpx.AsyncClient) -> None:
    ids = [await _submit(client, "titles", {"text": f"post number {i}"}) for i in range(5)]
    failed = await _submit(client, "summary", {"text": "broken [[fail:400]]"})
    for job_id in ids:
        await wait_for_status(client, job_id, {"completed"})
    await wait_for_status(client, failed, {"failed"})

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/jobs", params=params)).json()
        assert len(page["jobs"]) <= 2
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [failed, *reversed(ids)], "newest first, every job once, across pages"

    only_failed = (await client.get("/api/jobs", params={"status": "failed"})).json()["jobs"]
    assert [j["job_id"] for j in only_failed] == [failed]
    assert only_failed[0]["error"]["code"] == "provider_bad_request"
    titles = (await client.get("/api/jobs", params={"type": "titles", "status": "completed,failed"})).json()
    assert {j["job_id"] for j in titles["jobs"]} == set(ids)
    future = (await client.get("/api/jobs", params={"since": str(time.time() + 60)})).json()
    assert future["jobs"] == [] and future["totals"]["jobs"] == 0
    iso_since = (await client.get("/api/jobs", params={"since": "2000-01-01T00:00:00Z"})).json()
    assert len(iso_since["jobs"]) == 6


async def test_history_item_has_summary_durations_usage_and_cost(client: httpx.AsyncClient) -> None:
    long_text = "A very long post about queues. " * 20
    job_id = await _submit(client, "titles", {"text": long_text})
    await wait_for_status(client, job_id, {"completed"})
    page = (await client.get("/api/jobs")).json()
    item = page["jobs"][0]
    assert item["job_id"] == job_id and item["status"] == "completed"
    assert item["input_summary"].startswith("A very long post") and len(item["input_summary"]) <= 120
    assert "input" not in item
    assert item["durations"]["wait"] >= 0 and item["durations"]["run"] > 0
    assert item["attempt"] == 1 and item["model"] == "sim-1"
    assert item["usage"]["prompt_tokens"] > 0 and item["usage"]["estimated"] is True
    expected = PriceTable(parse_prices("sim-1=0.10/0.20")).job_cost("sim-1", item["usage"])
    assert expected and item["cost"] == pytest.approx(expected)
    assert item["result"]["titles"]
    assert page["totals"]["prompt_tokens"] == item["usage"]["prompt_tokens"]
    assert page["totals"]["cost"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"status": "done"}, "invalid_status"),
        ({"type": "poem"}, "invalid_type"),
        ({"since": "yesterday"}, "invalid_since"),
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "101"}, "invalid_limit"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"status": "failed, completed"}, "invalid_status"),
        ({"status": "failed,"}, "invalid_status"),
        ({"since": "2026-13-31"}, "invalid_since"),  # a date, but not a real one
        ({"since": "2026-01-31T09:00:00"}, "invalid_since"),
        ({"since": "٣"}, "invalid_since"),  # a digit, but not an ASCII one
        ({"limit": ""}, "invalid_limit"),
    ],
)
async def test_bad_history_queries_are_400(client: httpx.AsyncClient, params: dict, code: str) -> None:
    r = await client.get("/api/jobs", params=params)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


async def test_stats_counts_timings_workers_and_my_totals(client: httpx.AsyncClient, settings: Settings) -> None:
    done = [await _submit(client, "titles", {"text": f"stats {i}"}) for i in range(2)]
    failed = await _submit(client, "summary", {"text": "no [[fail:400]]"})
    for job_id in done:
        await wait_for_status(client, job_id, {"completed"})
    await wait_for_status(client, failed, {"failed"})
    s = (await client.get("/api/stats")).json()
    assert s["total_completed"] >= 2 and s["total_failed"] >= 1
    assert {"total_queued", "total_processing", "total_cancelled", "total_expired"} <= set(s)
    titles = next(t for t in s["by_type"] if t["type"] == "titles")
    assert titles["completed"] >= 2 and titles["average_run_time"] > 0 and titles["average_wait_time"] >= 0
    assert s["average_wait_time"] is not None and s["window_seconds"] == settings.stats_window_seconds
    assert s["workers"] == {"live": 1, "capacity": settings.worker_concurrency}
    assert s["estimated_wait_time"] == 0.0  # nothing queued, a free worker
    assert s["user"]["by_status"] == {
        "queued": 0,
        "processing": 0,
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
        "expired": 0,
    }
    assert s["user"]["jobs"] == 3 and s["user"]["prompt_tokens"] > 0 and s["user"]["cost"] > 0


async def test_worker_heartbeat_is_visible_and_goes_away(settings: Settings) -> None:
    own = dataclasses.replace(settings, queue_name=settings.queue_name + ":hb", worker_concurrency=7)
    assert own.redis_url
    r = aioredis.from_url(own.redis_url)
    try:
        async with run_worker(own):
            deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
            while not (workers := await live_workers(r, own.queue_name)):
                assert asyncio.get_running_loop().time() < deadline, "no heartbeat"
                await asyncio.sleep(0.02)
            assert len(workers) == 1 and workers[0]["concurrency"] == 7
            assert 0 < workers[0]["alive_until"] - time.time() <= 3 * own.heartbeat_seconds
        assert await live_workers(r, own.queue_name) == []  # a clean stop removes it; a crash lets it expire
    finally:
        await r.aclose()


def test_price_table() -> None:
    prices = PriceTable(parse_prices("gpt-4o-mini=0.15/0.60,gpt-4o=2.50/10.00"))
    assert prices.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert prices.price("gpt-4o-mini-2024-07-18") == (0.15, 0.60)  # longest listed prefix
    assert prices.price("gpt-4o-2024-08-06") == (2.50, 10.00)
    assert prices.cost("llama3", 10, 10) is None


async def test_empty_filters_mean_no_filter_and_any_cursor_of_the_documented_shape_is_a_place(
    client: httpx.AsyncClient,
) -> None:
    """What the OpenAPI contract allows is accepted: an HTML form's blank fields, and a cursor made by hand."""
    ids = [await _submit(client, "titles", {"text": f"blank {i}"}) for i in range(3)]
    everything = (await client.get("/api/jobs")).json()
    blank = await client.get("/api/jobs", params={"status": "", "type": "", "since": "", "cursor": ""})
    assert blank.status_code == 200, blank.text
    assert [j["job_id"] for j in blank.json()["jobs"]] == [j["job_id"] for j in everything["jobs"]]
    first = (await client.get("/api/jobs", params={"limit": 1})).json()
    assert first["next_cursor"].endswith("_" + ids[-1])
    rest = (await client.get("/api/jobs", params={"cursor": first["next_cursor"]})).json()
    assert [j["job_id"] for j in rest["jobs"]] == ids[-2::-1]
    # Any (time, id) place: a cursor just after the newest job's time gives every job.
    newest = float(first["next_cursor"].split("_")[0])
    assert len((await client.get("/api/jobs", params={"cursor": f"{newest + 1}_z"})).json()["jobs"]) == 3
    for since in ("2000-01-01t00:00:00z", "2000-01-01T00:00:60+01:00", "946684800", "946684800.5", "2000-01-01"):
        r = await client.get("/api/jobs", params={"since": since})
        assert r.status_code == 200 and len(r.json()["jobs"]) == 3, (since, r.text)
