"""PostgreSQL down: once a connect has failed, requests answer 503 at once instead of each waiting the pool's 5 s.

A private embedded server is stopped (fast shutdown) with one job running and two queued behind it on a real
in-process worker (one job at a time), while the real app takes requests. The first request meets the outage
itself (it may wait the pool's timeout); every one after it is answered `503 store_unavailable` with Retry-After and
a message saying what to do, well within that timeout, while one probe per process tries to reconnect. Once the
server is back the API answers again and every accepted job completes: none is lost.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from service.api.app import create_app
from service.config import Settings
from service.embedded import EmbeddedRedis

from .conftest import fast_settings, make_user, run_worker, serve, submit_all, until, wait_for_status
from .postgres import EmbeddedPostgres, migrate
from .procs import store_row
from .test_pg_outage import assert_unavailable

POOL_TIMEOUT = 5.0  # PostgresJobStore's acquire_timeout: what each request waited before
FAST = 2.0  # a bound well under it (a loaded machine's round trip included), not a benchmark


async def test_requests_fail_fast_while_postgres_is_down_and_recover_after(
    private_postgres: EmbeddedPostgres,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    await migrate(private_postgres.url)
    settings: Settings = fast_settings(redis_server, tmp_path, database_url=private_postgres.url, worker_concurrency=1)
    token = await make_user(settings, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    assert settings.redis_url
    async with (
        serve(create_app(settings, redis_url=settings.redis_url)) as web,
        httpx.AsyncClient(base_url=web.url, timeout=30, headers=auth) as c,
        run_worker(settings),
    ):
        texts = ["Runs through the outage. [[slow:4]]", "Queued behind it.", "Queued too."]
        ids = await submit_all(c, [{"type": "summary", "input": {"text": text}} for text in texts])

        async def first_running() -> bool:
            return store_row(settings, ids[0])["status"] == "processing"

        await until(first_running, timeout=30, what="the slow job running")

        private_postgres.halt()
        try:
            # The first request finds the server gone (its pooled connection broken, the reconnect refused).
            assert_unavailable(await c.get(f"/api/jobs/{ids[1]}"))
            # Known down now: every request is refused at once, whatever it needs of the store.
            for method, path, body in [
                ("GET", f"/api/jobs/{ids[0]}", None),
                ("POST", "/api/jobs", {"type": "summary", "input": {"text": "During the outage."}}),
                ("GET", "/api/jobs", None),
                ("GET", f"/api/jobs/{ids[2]}/events", None),
                ("GET", f"/api/jobs/{ids[1]}", None),
            ]:
                started = time.monotonic()
                r = await c.request(method, path, json=body)
                took = time.monotonic() - started
                assert_unavailable(r)
                assert took < FAST, f"{method} {path}: 503 after {took:.2f} s (pool timeout {POOL_TIMEOUT})"
                assert "try again" in r.json()["error"]["message"].lower(), r.text
        finally:
            private_postgres.resume()

        healed = time.monotonic()

        async def api_back() -> bool:
            r = await c.get(f"/api/jobs/{ids[0]}")
            if r.status_code != 200:
                assert_unavailable(r)  # until the probe reconnects: still the 503, never a 500
            return r.status_code == 200

        await until(api_back, timeout=30, what="the API answering again")
        back_after = time.monotonic() - healed
        assert back_after < POOL_TIMEOUT + FAST, f"the API answered {back_after:.2f} s after the server was back"
        for job_id in ids:  # every job accepted before the outage completes: none lost
            done = await wait_for_status(c, job_id, {"completed", "failed", "cancelled", "expired"}, timeout=60)
            assert done["status"] == "completed", done
        r = await c.post("/api/jobs", json={"type": "summary", "input": {"text": "After."}})
        assert r.status_code == 202, r.text
