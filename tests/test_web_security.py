"""What a browser's cookie may do, which Host the app answers, the headers every response carries, and sign-out.

Each check runs against the real app under uvicorn (the headers and the rules must hold on the SSE and WebSocket
routes served before the middleware stack too); the attacks in a real browser are in test_browser_security.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from service.api.app import create_app
from service.api.headers import CSP
from service.api.origins import csrf_refusal, loopback_request, origin_allowed, parse_origin
from service.config import Settings, SettingsError

from .conftest import LiveServer, make_user, serve, until
from .procs import free_port

ROOT = Path(__file__).resolve().parent.parent
JOB = {"type": "titles", "input": {"text": "csrf"}}
JSON = {"Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def signed_in(live: LiveServer, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client holding a session cookie (made as the page makes it), sending no Origin unless a test adds one."""
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as c:
        r = await c.post("/api/session", json={"token": token}, headers={"Origin": live.url})
        assert r.status_code == 200, r.text
        yield c


def refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "csrf_refused"
    for word in words:
        assert word in err["message"], err["message"]


async def raw_handshake(live: LiveServer, headers: dict[str, str]) -> int:  # websockets can't set Host
    """The HTTP status a WebSocket handshake to /api/ws gets, with exactly these headers (Host included)."""
    host, port = live.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /api/ws HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return int(status.split()[1])


# --- CSRF ---------------------------------------------------------------------------------------------------------


async def test_cookie_changes_need_json_and_the_apps_own_origin(web: LiveServer, settings: Settings) -> None:
    token = await make_user(settings, "victim")
    bearer = {"Authorization": f"Bearer {token}"}
    async with signed_in(web, token) as browser, httpx.AsyncClient(base_url=web.url, headers=bearer) as api:
        own = {"Origin": web.url}
        refused(await browser.post("/api/jobs", json=JOB), "Origin")  # no Origin: not from a browser page
        refused(await browser.post("/api/jobs", json=JOB, headers={"Origin": "http://127.0.0.1:1"}), "ALLOWED_ORIGINS")
        refused(await browser.post("/api/jobs", json=JOB, headers={"Origin": "null"}))  # sandboxed frame, file:
        text = {**own, "Content-Type": "text/plain"}
        refused(await browser.post("/api/jobs", content=b'{"type": "titles", "input": {"text": "x"}}', headers=text))
        refused(await browser.post("/api/jobs", content=b"{}", headers=own), "application/json")  # no type (Blob)
        assert (await api.get("/api/jobs")).json()["jobs"] == []  # nothing got through

        made = await browser.post("/api/jobs", json=JOB, headers=own)
        assert made.status_code == 202, made.text
        job_id = made.json()["job_id"]
        refused(await browser.post(f"/api/jobs/{job_id}/cancel", headers=own), "application/json")
        assert (await api.get(f"/api/jobs/{job_id}")).json()["status"] == "queued"
        cancelled = await browser.post(f"/api/jobs/{job_id}/cancel", headers={**own, **JSON})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        refused(await browser.post(f"/api/jobs/{job_id}/retry", headers={"Origin": "http://evil.example", **JSON}))
        assert len((await api.get("/api/jobs")).json()["jobs"]) == 1
        assert (await browser.post(f"/api/jobs/{job_id}/retry", headers={**own, **JSON})).status_code == 202

        refused(await browser.request("DELETE", "/api/session", headers={"Origin": "http://127.0.0.1:1", **JSON}))
        assert (await browser.get("/api/me")).status_code == 200  # not signed out by another site
        assert (await browser.request("DELETE", "/api/session", headers={**own, **JSON})).status_code == 204
        assert len((await api.get("/api/jobs")).json()["jobs"]) == 2


async def test_bearer_requests_need_neither_json_nor_origin(client: httpx.AsyncClient) -> None:
    made = await client.post("/api/jobs", json=JOB, headers={"Origin": "http://evil.example"})
    assert made.status_code == 202, made.text
    r = await client.post(f"/api/jobs/{made.json()['job_id']}/cancel")  # no Content-Type, no Origin
    assert r.status_code == 200, r.text


async def test_login_needs_json_and_the_apps_own_origin(web: LiveServer, settings: Settings) -> None:
    """Login CSRF: another site's form must not sign the browser into the attacker's account."""
    token = await make_user(settings, "mallory")
    body = f'{{"token": "{token}"}}'.encode()
    async with httpx.AsyncClient(base_url=web.url) as anon:
        for headers in (
            {"Origin": web.url, "Content-Type": "text/plain"},  # a form (enctype=text/plain) from anywhere
            {"Origin": "http://localhost:1", **JSON},
            JSON,  # no Origin
        ):
            r = await anon.post("/api/session", content=body, headers=headers)
            refused(r)
            assert "set-cookie" not in r.headers
        r = await anon.post("/api/session", content=body, headers={"Origin": web.url, **JSON})
        assert r.status_code == 200 and "aijobs_session" in r.headers["set-cookie"]


async def test_allowed_origins_may_use_the_cookie(settings: Settings) -> None:
    extra = dataclasses.replace(settings, allowed_origins=("https://app.example",))
    assert extra.redis_url
    token = await make_user(settings, "olga")
    async with serve(create_app(extra, redis_url=extra.redis_url)) as live, signed_in(live, token) as browser:
        ok = await browser.post("/api/jobs", json=JOB, headers={"Origin": "https://app.example"})
        assert ok.status_code == 202, ok.text
        refused(await browser.post("/api/jobs", json=JOB, headers={"Origin": "https://app.example:8443"}))
        refused(await browser.post("/api/jobs", json=JOB, headers={"Origin": "http://app.example"}))


def scope_for(method: str, path: str, headers: dict[str, str], scheme: str = "http") -> dict:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "scheme": scheme,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


def test_origin_rules() -> None:
    assert parse_origin("http://Example.com") == ("http", "example.com", 80)
    assert parse_origin("https://[::1]:8443") == ("https", "::1", 8443)
    assert parse_origin("null") is None and parse_origin("http://a.example/path") is None
    own = scope_for("POST", "/api/jobs", {"host": "127.0.0.1:80"})
    assert origin_allowed(own, "http://127.0.0.1", ())  # default port either way
    assert not origin_allowed(own, "https://127.0.0.1", ())  # another scheme is another origin
    assert not origin_allowed(own, "http://127.0.0.1:8080", ())
    assert origin_allowed(own, "http://127.0.0.1:8080", ("http://127.0.0.1:8080",))
    ws = {**own, "type": "websocket", "scheme": "wss", "headers": [(b"host", b"app.example")]}
    assert origin_allowed(ws, "https://app.example", ()) and not origin_allowed(ws, "http://app.example", ())
    # Safe methods and non-API paths are never refused; a Bearer header exempts a request.
    cookie_get = scope_for("GET", "/api/jobs", {"host": "a"})
    assert csrf_refusal(cookie_get, by_cookie=True, allowed=()) is None
    assert csrf_refusal(scope_for("POST", "/api/jobs", {"host": "a"}), by_cookie=False, allowed=()) is None
    bearer = scope_for("POST", "/api/session", {"host": "a", "authorization": "Bearer x"})
    assert csrf_refusal(bearer, by_cookie=False, allowed=()) is None
    login = scope_for("POST", "/api/session", {"host": "a"})
    assert csrf_refusal(login, by_cookie=False, allowed=()) is not None  # login CSRF, with no cookie yet
    mounted = {**login, "root_path": "/aijobs", "path": "/aijobs/api/session"}  # uvicorn --root-path /aijobs
    assert csrf_refusal(mounted, by_cookie=False, allowed=()) is not None
    assert csrf_refusal({**mounted, "path": "/aijobs/api/jobs"}, by_cookie=True, allowed=()) is not None


async def test_the_routes_served_before_the_middleware_take_only_gets_and_handshakes(settings: Settings) -> None:
    """Why the CSRF rule (in AuthMiddleware) needs no copy on the direct SSE/WS path: nothing unsafe goes there. (The
    submit, also served before the middleware, applies the rule itself: test_cookie_changes_need_json_and_...)"""
    assert settings.redis_url
    app = create_app(settings, redis_url=settings.redis_url)
    direct = app.direct  # type: ignore[attr-defined]
    for path in ("/api/events", "/api/jobs/x/events"):
        assert direct.match(scope_for("GET", path, {})) is not None
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert direct.match(scope_for(method, path, {})) is None
    assert direct.match({"type": "websocket", "path": "/api/ws", "headers": []}) is not None


# --- Security headers -----------------------------------------------------------------------------------------------


def assert_security_headers(r: httpx.Response, *, https: bool = False) -> None:
    where = f"{r.request.method} {r.request.url.path} ({r.status_code})"
    assert r.headers.get("content-security-policy") == CSP, where
    assert r.headers.get("x-content-type-options") == "nosniff", where
    assert r.headers.get("referrer-policy") == "no-referrer", where
    assert r.headers.get("x-frame-options") == "DENY", where
    assert ("strict-transport-security" in r.headers) is https, where


async def test_security_headers_on_the_page_the_api_errors_static_files_and_streams(
    web: LiveServer, client: httpx.AsyncClient
) -> None:
    assert "frame-ancestors 'none'" in CSP and "object-src 'none'" in CSP and "base-uri 'none'" in CSP
    for https in (False, True):
        # uvicorn trusts X-Forwarded-Proto from 127.0.0.1 (FORWARDED_ALLOW_IPS' default): a TLS proxy in front.
        headers = {"X-Forwarded-Proto": "https"} if https else {}
        async with httpx.AsyncClient(base_url=web.url, headers=headers) as anon:
            for path in ("/", "/healthz", "/static/app.js", "/api/openapi.json", "/api/me", "/nope", "/api/events"):
                assert_security_headers(await anon.get(path), https=https)  # /api/events: a direct-path 401
        submitted = await client.post("/api/jobs", json=JOB, headers=headers)  # served before the middleware
        assert submitted.status_code == 202
        assert_security_headers(submitted, https=https)
        job_id = submitted.json()["job_id"]
        async with httpx.AsyncClient(base_url=web.url, headers=headers) as anon:  # its refusals too
            refused = await anon.post("/api/jobs", json=JOB)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
            assert_security_headers(refused, https=https)
        bad = await client.post("/api/jobs", content=b"{", headers={**headers, **JSON})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        assert_security_headers(bad, https=https)
        assert_security_headers(await client.get(f"/api/jobs/{job_id}", headers=headers), https=https)
        assert_security_headers(await client.get("/api/jobs/nope/events", headers=headers), https=https)
        for path in (f"/api/jobs/{job_id}/events", "/api/events"):  # streams: pre-encoded headers
            async with client.stream("GET", path, headers=headers) as stream:
                assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
                assert_security_headers(stream, https=https)
                async for _ in stream.aiter_bytes():  # the snapshot: closing before it can leave the stream
                    break  # task behind (seen on main too), which then holds up the server's shutdown


# --- Host allow-list and the demo login -----------------------------------------------------------------------------


async def test_allowed_hosts_refuses_other_hosts_on_every_route(settings: Settings) -> None:
    strict = dataclasses.replace(settings, allowed_hosts=("app.example", "*.apps.example"))
    assert strict.redis_url
    token = await make_user(settings, "hana")
    auth = {"Authorization": f"Bearer {token}"}
    async with serve(create_app(strict, redis_url=strict.redis_url)) as live:
        port = live.url.rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=live.url, headers=auth) as c:
            for host in (f"app.example:{port}", "app.example", "eu.apps.example"):
                assert (await c.get("/api/me", headers={"Host": host})).status_code == 200, host
            for path in ("/", "/api/me", "/api/events", "/api/jobs/x/events"):  # the last two: direct routes
                for host in ("evil.example", f"127.0.0.1:{port}", "apps.example.evil.example"):
                    r = await c.get(path, headers={"Host": host})
                    assert r.status_code == 400, (path, host, r.text)
                    assert r.json()["error"]["code"] == "host_not_allowed" and "ALLOWED_HOSTS" in r.text
                    assert_security_headers(r)
            assert (await c.get("/healthz", headers={"Host": "10.0.0.5:8000"})).status_code == 200  # probes
        assert await raw_handshake(live, {"Host": "evil.example", **auth}) == 400
        assert await raw_handshake(live, {"Host": "app.example", **auth}) == 101


async def test_demo_login_answers_only_a_loopback_host(settings: Settings) -> None:
    """DNS rebinding: a page at evil.example (resolving to 127.0.0.1) is same-origin with itself, so Origin checks
    pass; only the Host tells the server it is not being addressed as itself."""
    demo = dataclasses.replace(settings, demo_login=True)
    assert demo.redis_url
    async with serve(create_app(demo, redis_url=demo.redis_url)) as live:
        port = live.url.rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=live.url) as c:
            rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
            page = await c.get("/", headers=rebound)
            assert page.status_code == 200 and "set-cookie" not in page.headers
            r = await c.post("/api/session", json={}, headers=rebound)
            assert r.status_code == 401 and "set-cookie" not in r.headers
            assert "loopback" in r.json()["error"]["message"]
            assert not c.cookies
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
                async with httpx.AsyncClient(base_url=live.url) as fresh:
                    got = await fresh.get("/", headers={"Host": host})
                    assert "aijobs_session" in got.headers.get("set-cookie", ""), host


def test_loopback_request_needs_a_loopback_host_and_connection() -> None:
    def scope(host: str, server: tuple[str, int | None] | None) -> dict:
        return {"type": "http", "headers": [(b"host", host.encode())], "server": server}

    assert loopback_request(scope("127.0.0.1:8000", ("127.0.0.1", 8000)))
    assert loopback_request(scope("localhost", ("::1", 8000)))
    assert not loopback_request(scope("evil.example", ("127.0.0.1", 8000)))
    assert not loopback_request(scope("127.0.0.1:8000", ("192.168.1.5", 8000)))  # came in over the LAN
    assert not loopback_request(scope("127.0.0.1.evil.example", ("127.0.0.1", 8000)))


def test_origin_and_host_lists_are_checked_at_start() -> None:
    Settings(
        allowed_origins=("https://app.example", "http://127.0.0.1:8080"), allowed_hosts=("a.example", "*.b.example")
    )
    for bad in ("app.example", "https://app.example/path", "ftp://app.example", "https://app.example:99999"):
        with pytest.raises(SettingsError, match="ALLOWED_ORIGINS"):
            Settings(allowed_origins=(bad,))
    for bad in ("https://a.example", "a.example:8000", "a.*.example"):
        with pytest.raises(SettingsError, match="ALLOWED_HOSTS"):
            Settings(allowed_hosts=(bad,))


def test_demo_login_needs_a_loopback_bind() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        Settings(demo_login=True, host=host)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        with pytest.raises(SettingsError, match="AIJOBS_DEMO_LOGIN.*loopback"):
            Settings(demo_login=True, host=host)
        Settings(host=host)  # fine without the demo login


@pytest.mark.parametrize(
    "cmd",
    [
        ["-m", "service.cli", "web"],  # `aijobs web`, as the Procfile runs it
        ["-m", "uvicorn", "--factory", "service.api.app:app_from_env", "--host", "0.0.0.0", "--port", "PORT"],
    ],
    ids=["aijobs-web", "uvicorn-factory"],
)
def test_demo_login_on_a_public_bind_refuses_to_start(settings: Settings, cmd: list[str]) -> None:
    port = str(free_port())
    env = {
        **os.environ,
        "HOST": "0.0.0.0",
        "PORT": port,
        "AIJOBS_DEMO_LOGIN": "true",
        "REDIS_URL": settings.redis_url or "",
        "DATABASE_URL": settings.database_url,
        "AIJOBS_DATA_DIR": str(settings.data_dir),
        "LOG_JSON": "false",
    }
    args = [sys.executable, *(port if a == "PORT" else a for a in cmd)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "AIJOBS_DEMO_LOGIN" in done.stderr and "loopback" in done.stderr and "HOST=127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr


# --- Cookies: Secure by default, sign-out recorded on the server ------------------------------------------------------


async def test_cookie_is_secure_by_default(settings: Settings) -> None:
    assert Settings().cookie_secure is True
    token = await make_user(settings, "sam")
    secure = dataclasses.replace(settings, cookie_secure=True)
    assert secure.redis_url
    async with serve(create_app(secure, redis_url=secure.redis_url)) as live:
        async with httpx.AsyncClient(base_url=live.url) as c:  # plain http, no proxy header: Secure all the same
            r = await c.post("/api/session", json={"token": token}, headers={"Origin": live.url})
            assert r.status_code == 200 and "; secure" in r.headers["set-cookie"].lower()
    async with serve(create_app(settings, redis_url=settings.redis_url or "")) as live:  # COOKIE_SECURE=false
        async with httpx.AsyncClient(base_url=live.url) as c:
            r = await c.post("/api/session", json={"token": token}, headers={"Origin": live.url})
            assert "secure" not in r.headers["set-cookie"].lower()
            https = {"Origin": live.url.replace("http://", "https://"), "X-Forwarded-Proto": "https"}
            r = await c.post("/api/session", json={"token": token}, headers=https)
            assert r.status_code == 200 and "; secure" in r.headers["set-cookie"].lower()  # https: always


async def test_a_copied_cookie_stops_working_at_sign_out_on_every_web_process(settings: Settings) -> None:
    assert settings.redis_url
    token = await make_user(settings, "copycat")
    bearer = {"Authorization": f"Bearer {token}"}
    async with (
        serve(create_app(settings, redis_url=settings.redis_url)) as one,
        serve(create_app(settings, redis_url=settings.redis_url)) as two,
        httpx.AsyncClient(base_url=one.url, headers=bearer) as api,
    ):
        job_id = (await api.post("/api/jobs", json=JOB)).json()["job_id"]
        async with signed_in(one, token) as browser:
            cookie = f"aijobs_session={browser.cookies['aijobs_session']}"
            for live in (one, two):  # the copy works everywhere, and each process now remembers it as valid
                async with httpx.AsyncClient(base_url=live.url, headers={"Cookie": cookie}) as copy:
                    assert (await copy.get("/api/me")).status_code == 200
            signed_out = await browser.request("DELETE", "/api/session", headers={"Origin": one.url, **JSON})
            assert signed_out.status_code == 204 and 'aijobs_session=""' in signed_out.headers["set-cookie"]

        with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db:
            rows = db.execute("SELECT user_id, expires_at FROM signed_out_sessions").fetchall()
        assert len(rows) == 1 and rows[0][1] > time.time() + 6 * 86400  # kept until the cookie expires anyway

        for live in (one, two):
            async with httpx.AsyncClient(base_url=live.url, headers={"Cookie": cookie}) as copy:

                async def me_refused(copy: httpx.AsyncClient = copy) -> bool:
                    return (await copy.get("/api/me")).status_code == 401

                # Well within the 30 s cache on `two`: only the broadcast can make this happen.
                await until(me_refused, timeout=20, what="the copied cookie to be refused")
                r = await copy.get("/api/me")
                assert "signed out" in r.json()["error"]["message"]
                for path in ("/api/events", f"/api/jobs/{job_id}/events"):  # SSE, on the direct path
                    assert (await copy.get(path)).status_code == 401, path
                again = await copy.request("DELETE", "/api/session", headers={"Origin": live.url, **JSON})
                assert again.status_code == 204  # signing out twice is fine (one record)
            with pytest.raises(websockets.exceptions.InvalidStatus) as info:
                url = live.url.replace("http://", "ws://") + "/api/ws"
                async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": live.url}):
                    pass
            assert info.value.response.status_code == 401 and b"signed out" in info.value.response.body

        # Signing in again makes a new session; an expired sign-out record is purged at the next sign-out.
        with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db, db:
            db.execute("INSERT INTO signed_out_sessions VALUES ('old', 'x', ?)", (time.time() - 1,))
        async with signed_in(two, token) as again:
            assert (await again.get("/api/me")).status_code == 200
            assert (
                await again.request("DELETE", "/api/session", headers={"Origin": two.url, **JSON})
            ).status_code == 204
        with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db:
            assert [r[0] for r in db.execute("SELECT session_id FROM signed_out_sessions")].count("old") == 0
            assert db.execute("SELECT COUNT(*) FROM signed_out_sessions").fetchone()[0] == 2
