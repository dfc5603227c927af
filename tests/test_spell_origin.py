"""A job's retry logs the id of the request that submitted it, as its first spell did (real worker processes, their
JSON log lines). A spell enqueued again by another worker's sweeper after its worker died does not carry it yet:
README, "Logs"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from service.config import Settings

from .conftest import wait_for_status
from .procs import WorkerProcess, spawn, workers


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


async def test_a_retried_job_logs_the_submitting_requests_id_in_every_attempt(
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
