"""Who may call: Bearer tokens for API clients, a signed HttpOnly cookie for browsers, 401 for everyone else."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.config import Settings
from service.crypto import KeyBox, SessionSigner

from .conftest import WAIT_SECONDS, LiveServer, make_user, serve
from .sse import collect

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/jobs"),
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/x"),
        ("GET", "/api/jobs/x/events"),
        ("GET", "/api/stats"),
        ("GET", "/api/me"),
    ],
)
async def test_no_credentials_is_401_saying_how_to_get_a_token(web: LiveServer, method: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=web.url) as anon:
        r = await anon.request(method, path, json={"type": "titles", "input": {"text": "x"}})
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["code"] == "unauthenticated"
    assert "aijobs users create" in err["message"] and "Bearer" in err["message"]
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer aij_not-a-real-token", "Basic dXNlcjpwdw==", "Bearer"])
async def test_bad_credentials_are_refused(web: LiveServer, header: str) -> None:
    async with httpx.AsyncClient(base_url=web.url, headers={"Authorization": header}) as c:
        r = await c.get("/api/stats")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


async def test_a_wrong_token_says_what_to_do_at_sign_in_and_on_the_api(web: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=web.url, headers={"Origin": web.url}) as anon:
        signin = await anon.post("/api/session", json={"token": "aij_mistyped"})
        api = await anon.get("/api/me", headers={"Authorization": "Bearer aij_mistyped"})
    for r in (signin, api):
        assert r.status_code == 401
        assert "revoked" in r.json()["error"]["message"] and "--new-token" in r.json()["error"]["message"]


async def test_public_routes_stay_public(web: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=web.url) as anon:
        assert (await anon.get("/healthz")).status_code == 200
        assert (await anon.get("/api/openapi.json")).status_code == 200
        page = await anon.get("/")
    assert page.status_code == 200 and "set-cookie" not in page.headers  # no demo login outside dev


async def test_session_cookie_is_httponly_and_lets_eventsource_in(
    web: LiveServer, settings: Settings, worker: object
) -> None:
    token = await make_user(settings, "carol")
    async with httpx.AsyncClient(base_url=web.url, timeout=10, headers={"Origin": web.url}) as browser:
        r = await browser.post("/api/session", json={"token": token})
        assert r.status_code == 200 and r.json()["user"]["name"] == "carol"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert token not in r.headers["set-cookie"]  # the cookie is a signed session, not the token
        job = (await browser.post("/api/jobs", json={"type": "titles", "input": {"text": "cookies"}})).json()
        events, resp = await collect(browser, f"/api/jobs/{job['job_id']}/events")  # no header, no token in URL
        assert resp.status_code == 200 and events[-1].data["status"] == "completed"
        assert (await browser.request("DELETE", "/api/session", json={})).status_code == 204
        assert (await browser.get("/api/me")).status_code == 401


async def test_forged_or_expired_cookies_are_refused(web: LiveServer, settings: Settings) -> None:
    signer = SessionSigner(b"some other secret entirely, 32+ bytes long", 60)
    forged = signer.sign("anyone")
    async with httpx.AsyncClient(base_url=web.url, cookies={"aijobs_session": forged}) as c:
        r = await c.get("/api/me")
    assert r.status_code == 401 and "session" in r.json()["error"]["message"]
    assert signer.verify(signer.sign("u1", "e1", now=1000.0), now=1000.0 + 61) is None
    assert signer.verify(signer.sign("u1", "e1", now=1000.0), now=1000.0 + 59)[:2] == ("u1", "e1")


def test_keybox_binds_user_and_job() -> None:
    box = KeyBox(b"x" * 40)
    sealed = box.seal("sk-secret", user_id="u1", job_id="j1")
    assert b"sk-secret" not in sealed
    assert box.open(sealed, user_id="u1", job_id="j1") == "sk-secret"
    assert box.open(sealed, user_id="u1", job_id="j2") is None  # moved to another job
    assert box.open(sealed, user_id="u2", job_id="j1") is None  # moved to another user
    assert KeyBox(b"y" * 40).open(sealed, user_id="u1", job_id="j1") is None  # another server secret
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert box.open(tampered, user_id="u1", job_id="j1") is None


async def test_demo_login_signs_the_page_in(settings: Settings) -> None:
    demo = dataclasses.replace(settings, demo_login=True)
    assert demo.redis_url
    async with serve(create_app(demo, redis_url=demo.redis_url)) as live:
        async with httpx.AsyncClient(base_url=live.url, headers={"Origin": live.url}) as browser:
            assert (await browser.get("/api/me")).status_code == 401
            page = await browser.get("/")
            assert "aijobs_session" in page.headers["set-cookie"]
            me = await browser.get("/api/me")
            assert me.status_code == 200 and me.json()["user"]["name"] == "demo"
            assert (
                await browser.post("/api/jobs", json={"type": "titles", "input": {"text": "hi"}})
            ).status_code == 202


async def test_secret_file_is_private(web: LiveServer, settings: Settings) -> None:
    mode = (settings.data_dir / "secret_key").stat().st_mode & 0o777
    assert mode == 0o600


def test_cli_creates_users_and_prints_the_token_once(settings: Settings) -> None:
    env = dict(os.environ, DATABASE_URL=settings.database_url, AIJOBS_DATA_DIR=str(settings.data_dir))
    cli = [sys.executable, "-m", "service.cli", "users"]
    made = subprocess.run([*cli, "create", "dave"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = next(w for w in made.stdout.split() if w.startswith("aij_"))
    again = subprocess.run([*cli, "create", "dave"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already exists" in again.stderr
    listed = subprocess.run([*cli, "list"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "dave" in listed.stdout and token not in listed.stdout
    if settings.uses_postgres:
        from .procs import store_sql

        rows = store_sql(settings, "SELECT * FROM users WHERE name = 'dave'")
        assert len(rows) == 1 and token not in repr(rows)  # only its hash is kept
    else:
        db = settings.sqlite_path.read_bytes()
        assert token.encode() not in db  # only its hash is kept


async def test_current_user_works_for_websocket_connections_too(settings: Settings) -> None:
    """The push gateway's WebSocket handler calls current_user(ws): refused before accept, or the user id."""
    from starlette.exceptions import WebSocketException
    from starlette.websockets import WebSocket

    from service.api.auth import AuthMiddleware, current_user

    token = await make_user(settings, "wendy")
    seen: list[str] = []

    async def ws_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        try:
            seen.append(current_user(WebSocket(scope, receive, send)))
        except WebSocketException as exc:
            seen.append(f"refused {exc.code}")

    # The middleware needs the app's accounts, which live in the lifespan state of the running app.
    import redis.asyncio as aioredis

    from service.api.accounts import STATE_KEY, build_accounts
    from service.store import open_store

    assert settings.redis_url
    store, r = open_store(settings), aioredis.from_url(settings.redis_url)
    await store.open()
    try:
        state = {STATE_KEY: build_accounts(settings, store, r)}
        mw = AuthMiddleware(ws_app)
        for headers in ([], [(b"authorization", f"Bearer {token}".encode())]):
            scope = {"type": "websocket", "path": "/api/ws", "headers": headers, "state": state}
            await mw(scope, None, None)  # type: ignore[arg-type]
    finally:
        await store.close()
        await r.aclose()
    assert seen[0] == "refused 1008" and len(seen[1]) == 32


async def revoke_with_cli(settings: Settings, name: str) -> str:
    """`aijobs users revoke NAME --new-token` as an operator runs it; returns the new token."""
    assert settings.redis_url
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "AIJOBS_DATA_DIR": str(settings.data_dir),
    }
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "service.cli", "users", "revoke", name, "--new-token"],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert b"Could not reach Redis" not in err
    return next(w for w in out.decode().split() if w.startswith("aij_"))


async def test_revoked_token_is_refused_at_once_by_every_web_process(settings: Settings) -> None:
    """`aijobs users revoke` (a separate process) reaches the token cache of each running web process."""
    assert settings.redis_url
    token = await make_user(settings, "rex")
    bearer = {"Authorization": f"Bearer {token}"}
    async with (
        serve(create_app(settings, redis_url=settings.redis_url)) as one,
        serve(create_app(settings, redis_url=settings.redis_url)) as two,
    ):
        for live in (one, two):  # both remember the valid token now
            async with httpx.AsyncClient(base_url=live.url, headers=bearer) as c:
                assert (await c.get("/api/me")).status_code == 200
        fresh = await revoke_with_cli(settings, "rex")
        # Well within the 30 s cache: only the broadcast can make this happen.
        for live in (one, two):
            async with httpx.AsyncClient(base_url=live.url, headers=bearer) as c:
                deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
                while (r := await c.get("/api/me")).status_code != 401:
                    assert asyncio.get_running_loop().time() < deadline, "the revoked token still works"
                    await asyncio.sleep(0.05)
                assert r.json()["error"]["code"] == "unauthenticated"
            async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {fresh}"}) as c:
                assert (await c.get("/api/me")).json()["user"]["name"] == "rex"


async def test_revoking_a_token_signs_out_the_browser_sessions_made_with_it(settings: Settings) -> None:
    """A session cookie carries the epoch of the token it was made from; a revocation changes it."""
    assert settings.redis_url
    token = await make_user(settings, "sally")
    async with serve(create_app(settings, redis_url=settings.redis_url)) as live:
        async with httpx.AsyncClient(base_url=live.url, headers={"Origin": live.url}) as browser:
            assert (await browser.post("/api/session", json={"token": token})).status_code == 200
            assert (await browser.get("/api/me")).json()["user"]["name"] == "sally"
            fresh = await revoke_with_cli(settings, "sally")
            deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
            while (r := await browser.get("/api/me")).status_code != 401:
                assert asyncio.get_running_loop().time() < deadline, "the session outlived its token"
                await asyncio.sleep(0.05)
            assert "revoked" in r.json()["error"]["message"]
            # The new token makes a new session that works.
            assert (await browser.post("/api/session", json={"token": fresh})).status_code == 200
            assert (await browser.get("/api/me")).json()["user"]["name"] == "sally"
