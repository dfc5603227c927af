"""Every request body is capped at MAX_BODY_BYTES, on every route, before anyone is identified (issue 15.3).

Real uvicorn, raw sockets: a client streams a 64 MB body and the refusal must come while it is still sending
(the server stopped reading near the cap), not after the server swallowed it all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from service.config import Settings

from .conftest import LiveServer, make_user

TOTAL = 64 * 1024 * 1024
PIECE = b" " * 65536  # JSON whitespace: the body stays "valid" for as long as a server cares to read it


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def push_huge_body(
    url: str, method: str, path: str, *, chunked: bool, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict, int]:
    """Send `method path` with a 64 MB body as fast as the server takes it; stop when the answer arrives or the
    server closes. Returns (status, headers, JSON body, bytes of body sent by then)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {TOTAL}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = asyncio.create_task(_read_response(reader))
    sent = 0
    try:
        while sent < TOTAL and not answer.done():
            writer.write(b"%x\r\n%s\r\n" % (len(PIECE), PIECE) if chunked else PIECE)
            await writer.drain()
            sent += len(PIECE)
        if chunked and sent >= TOTAL:
            writer.write(b"0\r\n\r\n")
    except (ConnectionError, OSError):
        pass  # the server closed on us: what a refusal does
    try:
        status, got, body = await asyncio.wait_for(answer, 30)
    finally:
        writer.close()
    return status, got, json.loads(body), sent


@pytest.fixture
async def token(web: LiveServer, settings: Settings) -> AsyncIterator[str]:
    yield await make_user(settings, "bo")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_sign_in_refuses_a_huge_body_before_reading_it(web: LiveServer, chunked: bool) -> None:
    origin = {"Origin": web.url}  # as a browser signs in (CSRF rule)
    status, _, body, sent = await push_huge_body(web.url, "POST", "/api/session", chunked=chunked, headers=origin)
    assert status == 413 and body["error"]["code"] == "body_too_large", body
    assert "MAX_BODY_BYTES" in body["error"]["message"]
    assert sent < TOTAL // 4, f"the client got to send {sent} bytes: the server kept reading"


# cancel and the event stream never read a body: a declared one over the cap is refused all the same, and an
# unread chunked one stops at uvicorn's own 64 KiB buffer (it pauses reading).
@pytest.mark.parametrize(
    ("route", "chunked"),
    [("submit", False), ("submit", True), ("retry", False), ("retry", True), ("cancel", False), ("events", False)],
)
async def test_job_routes_refuse_a_huge_body(
    web: LiveServer, token: str, settings: Settings, route: str, chunked: bool
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=web.url, headers=auth) as c:
        job = (await c.post("/api/jobs", json={"type": "titles", "input": {"text": "x"}})).json()["job_id"]
        await c.post(f"/api/jobs/{job}/cancel")
    method, path = {
        "submit": ("POST", "/api/jobs"),
        "retry": ("POST", f"/api/jobs/{job}/retry"),
        "cancel": ("POST", f"/api/jobs/{job}/cancel"),
        "events": ("GET", "/api/events"),
    }[route]
    status, _, body, sent = await push_huge_body(web.url, method, path, chunked=chunked, headers=auth)
    assert status == 413 and body["error"]["code"] == "body_too_large", body
    assert sent < TOTAL // 4, f"the client got to send {sent} bytes: the server kept reading"


async def test_bodies_within_the_cap_still_work_chunked_or_not(web: LiveServer, token: str) -> None:
    padded = json.dumps({"token": token}) + " " * 200_000  # under the 256,000-byte default

    async def pieces() -> AsyncIterator[bytes]:  # httpx sends an async iterator chunked
        yield json.dumps({"type": "titles", "input": {"text": "chunked"}}).encode()

    async with httpx.AsyncClient(base_url=web.url) as c:
        browser = {"content-type": "application/json", "Origin": web.url}
        signed_in = await c.post("/api/session", content=padded, headers=browser)
        assert signed_in.status_code == 200, signed_in.text
        job = await c.post(
            "/api/jobs",
            content=pieces(),
            headers={"content-type": "application/json", "Authorization": f"Bearer {token}"},
        )
        assert job.status_code == 202, job.text


async def test_a_client_still_sending_gets_the_413_not_a_reset(web: LiveServer) -> None:
    """The refusal leaves the connection open: closing it with unread bytes resets it, and the client (still
    writing its 2 MB) would see a read error instead of the JSON that says what to do."""
    async with httpx.AsyncClient(base_url=web.url) as c:
        r = await c.post("/api/session", content=b" " * 2_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
