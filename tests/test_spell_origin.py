"""Every spell of a job logs the id of the request that submitted it: a retry the runner enqueues again, and a run
whose worker died, enqueued again by another worker's sweeper (real worker processes, their JSON log lines)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx

from service.config import Settings

from .conftest import wait_for_status
from .procs import WorkerProcess, spawn, store_row, workers


def lines_about(worker: WorkerProcess, job_id: str) -> list[dict[str, Any]]:
    out = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("job_id") == job_id:
                out.append(record)
    return out


async def submit(client: httpx.AsyncClient, text: str, request_id: str) -> str:
    r = await client.post(
        "/api/jobs", json={"type": "summary", "input": {"text": text}}, headers={"X-Request-ID": request_id}
    )
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


async def test_every_spell_of_a_job_logs_the_submitting_requests_id(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    with workers(settings, tmp_path) as started:
        a = spawn(started, settings, tmp_path, LOG_JSON="true")
        # A retry: the runner enqueues the job again (service/runner/run.py `_enqueue`).
        retried = await submit(client, "Fails once. [[fail:500:times=1]]", "req-of-the-retried-job")
        done = await wait_for_status(client, retried, {"completed", "failed", "cancelled"})
        assert done["status"] == "completed" and done["attempt"] == 2, done
        started_lines = [r for r in lines_about(a, retried) if r["msg"] == "job started"]
        assert [r["attempt"] for r in started_lines] == [1, 2], lines_about(a, retried)
        assert {r.get("request_id") for r in lines_about(a, retried)} == {"req-of-the-retried-job"}

        # A worker dies mid-run: another worker's sweeper takes the job over and enqueues it again.
        lost = await submit(client, "Outlives its worker. [[slow:3]]", "req-of-the-lost-run")
        deadline = asyncio.get_running_loop().time() + 30
        while store_row(settings, lost)["status"] != "processing":
            assert asyncio.get_running_loop().time() < deadline, store_row(settings, lost)
            await asyncio.sleep(0.05)
        a.signal(signal.SIGKILL)
        await a.wait_exit()
        b = spawn(started, settings, tmp_path, LOG_JSON="true")
        done = await wait_for_status(client, lost, {"completed", "failed", "cancelled"}, timeout=30)
        assert done["status"] == "completed" and done["attempt"] == 2, done
        second = [r for r in lines_about(b, lost) if r.get("attempt") == 2 and r["msg"] != "lapsed lease taken over"]
        assert any(r["msg"] == "job started" for r in second), lines_about(b, lost)
        for record in second:  # every line of the second spell, on the worker that took it over
            assert record.get("request_id") == "req-of-the-lost-run", record
