"""Every bad request gets a JSON error with a stable code and a human message, never a 500."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_body"),
        (b'{"input": {}}', 422, "missing_type"),
        (b'{"type": "poem", "input": {}}', 422, "unknown_type"),
        (b'{"type": "titles"}', 422, "invalid_input"),
        (b'{"type": "titles", "input": {}}', 422, "invalid_input"),
        (b'{"type": "titles", "input": {"text": 5}}', 422, "invalid_input"),
        (b'{"type": "titles", "input": {"text": ""}}', 422, "invalid_input"),
        (b'{"type": "titles", "input": {"text": "x", "count": 99}}', 422, "invalid_input"),
        (b'{"type": "titles", "input": {"text": "x", "colour": 1}}', 422, "invalid_input"),
        (b'{"type": "chat", "input": {"messages": [{"role": "robot", "content": "x"}]}}', 422, "invalid_input"),
        (b'{"type": "titles", "input": {"text": "x"}, "priority": 11}', 422, "invalid_priority"),
        (b'{"type": "titles", "input": {"text": "x"}, "owner": "me"}', 422, "unknown_field"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'{"type": "summary", "input": {"text": "x", "max_sentences": 1.5}}', 422, "invalid_input"),
        (b'{"type": "titles", "input": {"text": "x"}, "priority": 5.5}', 422, "invalid_priority"),
        (b'{"type": "titles", "input": {"text": "x"}, "priority": true}', 422, "invalid_priority"),
        (b'{"type": "titles", "input": {"text": "x"}, "user_provided_key": null}', 422, "invalid_provider_key"),
    ],
)
async def test_bad_submissions(client: httpx.AsyncClient, body: bytes, status: int, code: str) -> None:
    r = await client.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and len(error["message"]) > 5
    assert "Traceback" not in r.text


async def test_integers_may_be_written_as_integral_numbers(client: httpx.AsyncClient) -> None:
    """JSON has one number type, and JSON Schema counts 1.0 as an integer: so does the server."""
    body = {"type": "summary", "input": {"text": "x", "max_sentences": 1.0}, "priority": 7.0}
    r = await client.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["input"]["max_sentences"] == 1 and job["priority"] == 7
    assert isinstance(job["input"]["max_sentences"], int) and isinstance(job["priority"], int)


async def test_field_errors_name_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": "x", "count": 99}})
    assert r.json()["error"]["field"] == "input.count"
    assert "at most 10" in r.json()["error"]["message"]


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, settings) -> None:
    big = "x" * (settings.max_body_bytes + 10)
    r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": big}})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/jobs", content=b"text=hi", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415
    assert r.json()["error"]["code"] == "unsupported_media_type"


async def test_unknown_routes_and_methods_are_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.delete("/api/jobs")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    # Allow names every method of the path, not just those of one of its handlers
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    r = await client.put("/api/session")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"POST", "DELETE"}
    r = await client.get("/api/jobs/not-a-job")
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"


async def test_healthz_checks_redis_and_store(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"redis": "ok", "store": "ok"}
