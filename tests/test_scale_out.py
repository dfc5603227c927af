"""Scale-out: two real web processes and a worker on one Redis; a client on web A sees every event of a job on B."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings

from .conftest import make_user
from .sse import read_events

pytestmark = pytest.mark.usefixtures("worker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:app_from_env"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def read(log: Path) -> str:
    return log.read_text()


@contextlib.asynccontextmanager
async def web_process(settings: Settings, log: Path) -> AsyncIterator[str]:
    """`uvicorn --factory service.api.app:app_from_env` as its own process, configured only by environment."""
    assert settings.redis_url
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "PORT": str(port),
        "AIJOBS_QUEUE": settings.queue_name,
        "SSE_PING_SECONDS": "1",
        "LOG_JSON": "false",
    }
    proc = start(env, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as c:
            for _ in range(300):
                if proc.poll() is not None:
                    raise AssertionError(f"web process exited: {read(log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(url + "/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("web process did not become healthy")
        yield url
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_client_on_web_a_gets_every_event_of_a_job_made_on_web_b(settings: Settings, tmp_path: Path) -> None:
    async with (
        web_process(settings, tmp_path / "a.log") as a,
        web_process(settings, tmp_path / "b.log") as b,
        httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {await make_user(settings, 'alice')}"}) as c,
    ):
        events = []
        async with c.stream("GET", a + "/api/events") as stream:  # every job of the user, on web A
            it = read_events(stream)
            r = await c.post(b + "/api/jobs", json={"type": "titles", "input": {"text": "made on B [[slow:1]]"}})
            assert r.status_code == 202
            job_id = r.json()["job_id"]

            async def until_done() -> None:
                async for event in it:
                    events.append(event)
                    if event.event == "status" and event.data["status"] == "completed":
                        return

            await asyncio.wait_for(until_done(), 20)
        final = (await c.get(a + f"/api/jobs/{job_id}")).json()
        mine = [e.data["seq"] for e in events if e.data["job_id"] == job_id]
        # A job made after the stream opened is told from its first event; the log (replayed on B) agrees.
        log = []
        async with c.stream("GET", b + f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "0"}) as s:
            log = [e.data["seq"] async for e in read_events(s)]
        assert mine == log == list(range(1, final["last_seq"] + 1)), "every event of the job, once, in order"
