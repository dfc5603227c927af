"""The whole path through real parts: POST → arq worker → events → GET completed."""

from __future__ import annotations

import json

import httpx
import pytest

from service.config import Settings

from .conftest import wait_for_status
from .procs import store_row

pytestmark = pytest.mark.usefixtures("worker")

INPUTS = {
    "titles": {"text": "Async job queues keep web pages responsive while slow AI calls run in the background."},
    "summary": {"text": "Redis streams keep a log. Pub/sub wakes listeners. Together they make push reliable."},
    "chat": {"messages": [{"role": "user", "content": "Tell me about job queues"}]},
    "image": {"prompt": "a lighthouse at dusk", "n": 2},
}


@pytest.mark.parametrize("job_type", sorted(INPUTS))
async def test_each_job_type_completes(client: httpx.AsyncClient, job_type: str) -> None:
    r = await client.post("/api/jobs", json={"type": job_type, "input": INPUTS[job_type]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert body["links"]["self"] == f"/api/jobs/{body['job_id']}"
    assert body["links"]["events"] == f"/api/jobs/{body['job_id']}/events"
    done = await wait_for_status(client, body["job_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert done["progress"]["percentage"] == 100
    assert done["attempt"] == 1
    assert done["model"].startswith("sim")
    assert done["usage"] is not None
    result = done["result"]
    if job_type == "titles":
        assert len(result["titles"]) == 5 and all(isinstance(t, str) and t for t in result["titles"])
    elif job_type == "summary":
        assert result["summary"]
    elif job_type == "chat":
        assert len(result["reply"]) > 20
    else:
        assert len(result["images"]) == 2 and all(i.startswith("data:image/") for i in result["images"])


async def test_progress_visible_while_processing(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "slow one [[slow:1.5]]"}})
    job_id = r.json()["job_id"]
    running = await wait_for_status(client, job_id, {"processing"})
    seen_steps = set()
    while running["status"] == "processing":
        seen_steps.add(running["progress"]["current_step"])
        assert running["model"] is None and running["usage"] is None  # as the README's example shows: set at the end
        running = (await client.get(f"/api/jobs/{job_id}")).json()
    assert "Generating titles…" in seen_steps
    assert running["status"] == "completed"
    assert running["progress"]["current_step"] == "Done" and running["model"] and running["usage"]


async def test_failing_task_ends_failed_with_its_message(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": "nope [[fail:400]]"}})
    done = await wait_for_status(client, r.json()["job_id"], {"completed", "failed"})
    assert done["status"] == "failed" and done["progress"]["current_step"] == "Failed"
    assert done["error"]["code"] == "provider_bad_request"
    assert done["error"]["retryable"] is False
    assert done["error"]["message"]
    assert done["attempt"] == 1


async def test_store_row_matches_last_event(client: httpx.AsyncClient, settings: Settings) -> None:
    r = await client.post("/api/jobs", json={"type": "titles", "input": INPUTS["titles"]})
    job_id = r.json()["job_id"]
    done = await wait_for_status(client, job_id, {"completed"})
    row = store_row(settings, job_id)
    status, seq, result = row["status"], row["seq"], row["result"]
    assert status == "completed" and seq == done["last_seq"]
    assert json.loads(result) == done["result"]


async def test_polling_etag_and_interval(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/jobs", json={"type": "image", "input": {"prompt": "x"}})
    job_id = r.json()["job_id"]
    done = await wait_for_status(client, job_id, {"completed"})
    r1 = await client.get(f"/api/jobs/{job_id}")
    assert r1.headers["etag"] == f'W/"{done["last_seq"]}"'
    r2 = await client.get(f"/api/jobs/{job_id}", headers={"If-None-Match": r1.headers["etag"]})
    assert r2.status_code == 304 and r2.content == b""
    queued = (await client.post("/api/jobs", json={"type": "image", "input": {"prompt": "y"}})).json()
    assert queued["poll_interval"] == 5.0


async def test_a_summary_keeps_to_max_sentences(client: httpx.AsyncClient) -> None:
    body = {"type": "summary", "input": {"text": INPUTS["summary"]["text"], "max_sentences": 1}}
    r = await client.post("/api/jobs", json=body)
    done = await wait_for_status(client, r.json()["job_id"], {"completed", "failed"})
    summary = done["result"]["summary"]
    assert summary.count(". ") == 0 and summary.endswith("."), summary
