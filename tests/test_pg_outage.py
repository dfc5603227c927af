"""PostgreSQL restarted under load (issue 16, point 11): a private embedded server is stopped (fast shutdown) while
a real worker process runs jobs and a real web process takes requests, then started again.

Meanwhile the API answers 503 store_unavailable JSON with Retry-After (a submit, a read, an SSE stream: the caller's
token lookup itself needs the store), never a 500 or a hang; the worker holds its writes; once the server is back
every job completes, on its first attempt, with exactly one terminal event in its stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.embedded import EmbeddedRedis

from .conftest import assert_ended_once, fast_settings, make_user, submit_all, until, wait_for_status
from .postgres import EmbeddedPostgres, migrate
from .procs import spawn, store_row, web_process, workers

JOBS = 6


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "store_unavailable", r.text
    assert int(r.headers["retry-after"]) >= 1


async def assert_ws_refused(url: str, token: str) -> None:
    """The WebSocket handshake is refused with the same 503 JSON (before the upgrade), not a dropped connection."""
    import websockets
    from websockets.exceptions import InvalidStatus

    ws_url = url.replace("http://", "ws://") + "/api/ws"
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}):
            pass
    response = refused.value.response
    assert response.status_code == 503, response
    assert json.loads(response.body or b"{}")["error"]["code"] == "store_unavailable", response.body


async def test_postgres_restart_under_load(
    private_postgres: EmbeddedPostgres, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    await migrate(private_postgres.url)
    settings: Settings = fast_settings(redis_server, tmp_path, database_url=private_postgres.url)
    token = await make_user(settings, "alice")
    # bob's token is first seen during the outage: the web has not cached it, so its lookup needs the store.
    bob = await make_user(settings, "bob")
    # A lease longer than the outage: the worker keeps its jobs through it (a shorter one would hand them over).
    env = {"LEASE_SECONDS": "60", "HEARTBEAT_SECONDS": "1", "WORKER_CONCURRENCY": str(JOBS)}
    with workers(settings, tmp_path) as started:
        worker = spawn(started, settings, tmp_path, **env)
        async with (
            web_process(settings, tmp_path / "web.log") as web,
            httpx.AsyncClient(base_url=web.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c,
        ):
            ids = await submit_all(
                c, [{"type": "summary", "input": {"text": f"Job {i}. [[slow:8]]"}} for i in range(JOBS)]
            )

            # 8 s each: on a loaded machine the six may start seconds apart, and all must still run at the halt.
            async def all_running() -> bool:
                return all(store_row(settings, j)["status"] == "processing" for j in ids)

            await until(all_running, timeout=30, what="every job running")

            private_postgres.halt()
            try:
                bob_auth = {"Authorization": f"Bearer {bob}"}
                answers = await asyncio.gather(  # at once: each waits up to the pool's 5 s for a connection
                    c.post("/api/jobs", json={"type": "summary", "input": {"text": "During the outage."}}),
                    c.get(f"/api/jobs/{ids[0]}"),
                    c.get(f"/api/jobs/{ids[0]}/events"),
                    c.get("/api/jobs", headers=bob_auth),  # the token lookup itself fails
                    c.get("/api/events", headers=bob_auth),
                )
                for r in answers:
                    assert_unavailable(r)
                await assert_ws_refused(web.url, bob)

                async def writes_held() -> bool:
                    return "write held until it answers" in worker.log()

                # The jobs' provider calls end during the outage: their final writes wait for the store.
                await until(writes_held, timeout=30, what="the worker holding a write")
                assert worker.proc.poll() is None, worker.log()[-3000:]
            finally:
                private_postgres.resume()

            async def api_back() -> bool:
                r = await c.get(f"/api/jobs/{ids[0]}")
                if r.status_code != 200:
                    assert_unavailable(r)  # until the pool has a connection again: still the 503, never a 500
                return r.status_code == 200

            await until(api_back, timeout=30, what="the API answering again")
            for job_id in ids:
                done = await wait_for_status(c, job_id, {"completed", "failed", "cancelled"}, timeout=60)
                assert done["status"] == "completed", done
                assert done["attempt"] == 1, done  # the worker kept its jobs: no take-over, no retry
            assert (await c.post("/api/jobs", json={"type": "summary", "input": {"text": "After."}})).status_code == 202

    await assert_ended_once(redis_server.url, ids, "completed")
    assert "Traceback" not in (tmp_path / "web.log").read_text(), (tmp_path / "web.log").read_text()[-3000:]
