"""Prometheus metrics, scraped as Prometheus would: the web's GET /metrics through real uvicorn and a worker's own
METRICS_PORT, during a small load run (jobs queued, completed, retried and failed; SSE, WebSocket and polling
clients; a store outage; Redis connections cut), each family checked to move."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from service.api.app import create_app
from service.config import Settings, SettingsError
from service.embedded import EmbeddedRedis
from service.metrics import LagHistogram, Metrics, Pollers
from service.store import open_store

from .conftest import fast_settings, make_user, run_worker, serve, until, user_client, wait_for_status
from .procs import free_port
from .sse import read_events

TOKEN = "scrape-token-for-the-tests-0123"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def has(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


async def scrape(url: str, token: str | None = TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(url, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


@contextlib.contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Another process's writer holding SQLite's write lock: the store's writes wait STORE_BUSY_TIMEOUT, then fail."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def load_settings(redis_server: EmbeddedRedis, tmp_path: Path, port: int) -> Settings:
    return fast_settings(
        redis_server,
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",  # the outage below is a SQLite write lock
        metrics_token=TOKEN,
        metrics_port=port,
        sim_delay=0.05,
        retry_base=0.05,
        retry_cap=0.1,
        store_busy_timeout=0.2,
    )


async def read_all(ws: websockets.ClientConnection) -> None:
    async for _ in ws:
        pass


async def submit(client: httpx.AsyncClient, text: str) -> str:
    r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": text}})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


async def test_a_scrape_during_a_load_run_shows_every_metric_moving(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    worker_port = free_port()
    settings = load_settings(redis_server, tmp_path, worker_port)
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as web:
        web_metrics = web.url + "/metrics"
        start = await scrape(web_metrics)
        assert value(start, "aijobs_process", role="web") == 1
        assert has(start, "process_cpu_seconds_total")  # the process's own CPU and memory
        async with user_client(web, settings, "alice") as alice:
            # No worker yet: the jobs wait, and the queue shows it.
            plain = [await submit(alice, f"Queues and workers, part {i}") for i in range(3)]
            retried = await submit(alice, "Flaky upstream [[fail:500:times=1]]")
            failed = await submit(alice, "Refused upstream [[fail:400]]")
            queued = await scrape(web_metrics)
            assert value(queued, "aijobs_jobs_submitted_total", type="titles") == 5
            assert value(queued, "aijobs_queue_depth", state="ready") == 5
            assert value(queued, "aijobs_queue_depth", state="deferred") == 0
            assert value(queued, "aijobs_queue_oldest_wait_seconds") > 0

            # Live clients: one SSE stream, one WebSocket, one job polled.
            async with alice.stream("GET", f"/api/jobs/{plain[0]}/events") as sse:
                events = read_events(sse)
                assert (await asyncio.wait_for(anext(events), 5)).event == "snapshot"
                ws_url = web.url.replace("http://", "ws://") + "/api/ws"
                auth = {"Authorization": alice.headers["authorization"]}
                async with websockets.connect(ws_url, additional_headers=auth) as ws:
                    await ws.send(json.dumps({"type": "subscribe", "job_id": plain[1]}))
                    await asyncio.wait_for(ws.recv(), 5)
                    reading = asyncio.create_task(read_all(ws))  # a client that keeps up (and so closes at once)
                    assert (await alice.get(f"/api/jobs/{plain[2]}")).status_code == 200
                    live = await scrape(web_metrics)
                    assert value(live, "aijobs_stream_clients", transport="sse") == 1
                    assert value(live, "aijobs_stream_clients", transport="ws") == 1
                    assert value(live, "aijobs_gateway_subscribers") == 2
                    assert value(live, "aijobs_polling_clients") == 1
                    assert value(live, "aijobs_poll_requests_total") == 1

                    # A store outage: SQLite's write lock held elsewhere; the submission is refused with a 503.
                    assert value(live, "aijobs_store_errors_total") == 0
                    with sqlite_write_lock(settings.sqlite_path):
                        r = await alice.post("/api/jobs", json={"type": "titles", "input": {"text": "locked"}})
                    assert r.status_code == 503, r.text
                    assert value(await scrape(web_metrics), "aijobs_store_errors_total") >= 1

                    # The worker runs everything: completions, a retry after a 500, a failure on a 400.
                    async with run_worker(settings):
                        worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
                        for job in plain + [retried]:
                            await wait_for_status(alice, job, {"completed"})
                        await wait_for_status(alice, failed, {"failed"})
                        work = await scrape(worker_metrics)

                        # Redis cuts the web gateway's subscription and the worker's wait for a wake-up (its BLPOP,
                        # cut again until one was caught waiting): each sees the error, counts it, and connects again.
                        redis = Redis.from_url(settings.redis_url)
                        await redis.client_kill_filter(_type="pubsub")

                        async def redis_errors_seen() -> bool:
                            for client in await redis.client_list():
                                if client.get("cmd") == "blpop":
                                    await redis.client_kill_filter(_id=client["id"])
                            web_now, worker_now = await scrape(web_metrics), await scrape(worker_metrics)
                            return (
                                value(web_now, "aijobs_redis_errors_total") >= 1
                                and value(worker_now, "aijobs_redis_errors_total") >= 1
                            )

                        try:
                            await until(redis_errors_seen, 10, "the cuts counted in web and worker")
                        finally:
                            await redis.aclose()
                    during = await scrape(web_metrics)
                reading.cancel()
                # the streams closed: the gauges come back down
            after = await scrape(web_metrics)

    # The web: the queue drained; the gateway fanned the workers' events out to the two watchers.
    assert value(during, "aijobs_queue_depth", state="ready") == 0
    assert value(during, "aijobs_queue_oldest_wait_seconds") == 0
    assert value(during, "aijobs_jobs_running") == 0
    assert value(during, "aijobs_gateway_messages_total") > value(live, "aijobs_gateway_messages_total")
    assert value(during, "aijobs_gateway_fanout_lag_seconds_count") > 0
    assert value(during, "aijobs_gateway_fanout_lag_seconds_sum") > 0
    assert value(after, "aijobs_stream_clients", transport="sse") == 0
    assert value(after, "aijobs_stream_clients", transport="ws") == 0
    assert value(after, "aijobs_jobs_submitted_total", type="titles") == 5  # the refused one never counted

    # The worker: five jobs ended, one retried, one failed; six attempts, each with its wait and run time.
    assert value(work, "aijobs_process", role="worker") == 1
    assert value(work, "aijobs_jobs_finished_total", type="titles", status="completed") == 4
    assert value(work, "aijobs_jobs_finished_total", type="titles", status="failed") == 1
    assert value(work, "aijobs_job_attempts_total", type="titles") == 6
    assert value(work, "aijobs_job_attempt_errors_total", code="provider_server_error") == 1
    assert value(work, "aijobs_job_attempt_errors_total", code="provider_bad_request") == 1
    assert value(work, "aijobs_job_retries_total", code="provider_server_error") == 1
    assert value(work, "aijobs_job_retries_total", code="provider_bad_request") == 0
    assert value(work, "aijobs_job_wait_seconds_count", type="titles") == 6
    assert value(work, "aijobs_job_wait_seconds_sum", type="titles") > 0
    assert value(work, "aijobs_job_run_seconds_count", type="titles") == 6
    # Upstream: every call with its outcome, latency, tokens and cost (sim-1 is priced in AI_PRICES).
    calls = {"provider": "simulated", "model": "sim-1"}
    assert value(work, "aijobs_upstream_calls_total", outcome="ok", **calls) == 4
    assert value(work, "aijobs_upstream_calls_total", outcome="provider_server_error", **calls) == 1
    assert value(work, "aijobs_upstream_calls_total", outcome="provider_bad_request", **calls) == 1
    assert value(work, "aijobs_upstream_call_seconds_count", **calls) == 6
    assert value(work, "aijobs_upstream_tokens_total", kind="prompt", **calls) > 0
    assert value(work, "aijobs_upstream_tokens_total", kind="completion", **calls) > 0
    assert value(work, "aijobs_upstream_cost_usd_total", **calls) > 0
    assert value(work, "aijobs_worker_slots") == settings.worker_concurrency
    assert has(work, "aijobs_worker_running_jobs") and has(work, "aijobs_store_errors_total")


async def test_the_scrape_needs_the_operator_token(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    worker_port = free_port()
    # ALLOWED_HOSTS names the public name only: Prometheus scrapes by IP all the same (the token is the guard)
    settings = dataclasses.replace(load_settings(redis_server, tmp_path, worker_port), allowed_hosts=("app.example",))
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as web, run_worker(settings):
        worker_url = f"http://127.0.0.1:{worker_port}/metrics"
        await until(lambda: _answers(worker_url), 5, "the worker's metrics endpoint")
        async with httpx.AsyncClient(timeout=5) as c:
            for url in (web.url + "/metrics", worker_url):
                for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
                    r = await c.get(url, headers=headers)
                    assert r.status_code == 401, (url, headers, r.text)
                    assert r.json()["error"]["code"] == "unauthenticated"
                    assert r.headers["www-authenticate"] == "Bearer"
                    assert "aijobs_" not in r.text
                ok = await c.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
                assert ok.status_code == 200 and "aijobs_process" in ok.text
            user_token = await make_user(settings, "alice")  # a user's API token is not the operator's
            refused = await c.get(web.url + "/metrics", headers={"Authorization": f"Bearer {user_token}"})
            assert refused.status_code == 401
            posted = await c.post(web.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert posted.status_code == 405
            other = await c.get(f"http://127.0.0.1:{worker_port}/", headers={"Authorization": f"Bearer {TOKEN}"})
            assert other.status_code == 404


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as c:
            await c.get(url)
    except httpx.HTTPError:
        return False
    return True


async def test_without_a_token_the_web_has_no_metrics_and_a_worker_stays_on_loopback(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = fast_settings(redis_server, tmp_path)
    assert settings.metrics_token is None and settings.metrics_port == 0  # off by default
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as web, httpx.AsyncClient() as c:
        r = await c.get(web.url + "/metrics")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with pytest.raises(SettingsError, match="METRICS_HOST"):
        Settings(metrics_port=9100, metrics_host="0.0.0.0")
    Settings(metrics_port=9100, metrics_host="0.0.0.0", metrics_token=TOKEN)  # a public bind with a token: fine
    Settings(metrics_port=9100)  # loopback without a token: fine
    with pytest.raises(SettingsError, match="METRICS_TOKEN"):
        Settings(metrics_token="short")


async def test_a_store_counts_its_failed_operations_but_not_a_unique_key_refusal(
    tmp_path: Path, postgres: object
) -> None:
    from .postgres import migrated_schema_url

    for url in (f"sqlite:///{tmp_path / 'jobs.db'}", migrated_schema_url(postgres)):  # type: ignore[arg-type]
        store = open_store(Settings(database_url=url))
        await store.open()
        try:
            assert store.errors == 0
            with pytest.raises(Exception):  # noqa: B017 (each driver raises its own)
                await store.db.execute("SELECT * FROM no_such_table")
            assert store.errors == 1, url
            await store.db.execute("INSERT INTO users (id, name, token_hash, created_at) VALUES ('u', 'u', 'h', 0)")
            with pytest.raises(Exception):  # noqa: B017
                await store.db.execute("INSERT INTO users (id, name, token_hash, created_at) VALUES ('u', 'u', 'h', 0)")
            assert store.errors == 1, url  # a unique key refused: the caller's answer, not a store failure
        finally:
            await store.close()


def test_lock_free_parts_count_what_they_see() -> None:
    lag = LagHistogram((0.01, 0.1))
    for seconds in (0.005, 0.05, 0.5, 0.01):
        lag.observe(seconds)
    family = lag.family("lag_seconds", "doc")
    buckets = {s.labels.get("le"): s.value for s in family.samples if s.name == "lag_seconds_bucket"}
    assert buckets == {"0.01": 2, "0.1": 3, "+Inf": 4}  # cumulative, and a bound counts into its own bucket
    pollers = Pollers()
    for job in ("a", "b", "a"):
        pollers.seen(job)
    assert (pollers.requests, pollers.active()) == (3, 2)
    pollers.last["a"] -= 60  # polled a minute ago: no longer a polling client
    assert pollers.active() == 1 and "a" not in pollers.last


async def test_a_price_table_prices_upstream_calls_by_the_answering_model() -> None:
    metrics = Metrics(prices={"gpt-4o-mini": (0.15, 0.60)})
    metrics.upstream_call("openai", "gpt-4o-mini", "ok", 0.2, prompt_tokens=1000, completion_tokens=500,
                          priced_as="gpt-4o-mini-2024-07-18")  # fmt: skip
    metrics.upstream_call("openai", "unpriced", "ok", 0.2, prompt_tokens=1000, completion_tokens=500)
    samples = parse((await metrics.render()).decode())
    assert value(samples, "aijobs_upstream_cost_usd_total", model="gpt-4o-mini") == pytest.approx(0.00045)
    assert value(samples, "aijobs_upstream_cost_usd_total", model="unpriced") == 0
    assert value(samples, "aijobs_upstream_tokens_total", model="unpriced", kind="completion") == 500
