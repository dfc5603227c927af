"""The attacks of issue 15 replayed in real headless Chromium (Debian's package, under Playwright).

A second small HTTP server on another port of 127.0.0.1 plays the attacker's site: another origin on the same
site (ports don't make a site, so SameSite=Lax lets the victim's cookie go along), or, addressed as `localhost`, another
site. The app is wrapped in a recorder, so a test knows each attack request reached the server and how it was
answered before it checks (through the API, as the victim) that nothing changed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.app import create_app
from service.config import Settings

from .chromium import own_contexts
from .conftest import LiveServer, make_user, run_worker, serve, until

T = 20_000  # ms: the longest any single browser wait may take


@dataclass
class Seen:
    method: str
    path: str
    origin: str | None
    status: int = 0


@dataclass
class Recorder:
    """Pure ASGI around the app: every HTTP request it answered, with its Origin and status."""

    app: ASGIApp
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = dict(scope["headers"]).get(b"origin")
        entry = Seen(scope["method"], scope["path"], origin.decode() if origin else None)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry.status = message["status"]
                self.seen.append(entry)
            await send(message)

        await self.app(scope, receive, sending)

    def from_origin(self, origin: str, method: str = "POST") -> list[Seen]:
        return [s for s in self.seen if s.origin == origin and s.method == method]


@pytest.fixture
async def browser(chromium: Any) -> AsyncIterator[Any]:
    async with own_contexts(chromium) as b:
        yield b


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[tuple[LiveServer, Recorder]]:
    assert settings.redis_url
    recorder = Recorder(create_app(settings, redis_url=settings.redis_url))
    async with serve(recorder) as live:
        yield live, recorder


@pytest.fixture
async def attacker() -> AsyncIterator[tuple[LiveServer, dict[str, str]]]:
    """The attacker's site: serves whatever page the test puts in the dict, at /<name>."""
    pages: dict[str, str] = {}

    async def page(request: Request) -> Response:
        name = request.path_params["name"]
        return HTMLResponse(pages[name]) if name in pages else Response(status_code=404)

    async with serve(Starlette(routes=[Route("/{name}", page)])) as live:
        yield live, pages


async def sign_in_as(context: Any, live: LiveServer, token: str) -> Any:
    """The victim signs in as the page does (same-origin JSON POST), leaving the cookie in this browser."""
    page = await context.new_page()
    await page.goto(live.url + "/healthz")
    status = await page.evaluate(
        """async (token) => (await fetch('/api/session', {method: 'POST', headers: {'content-type':
        'application/json'}, body: JSON.stringify({token})})).status""",
        token,
    )
    assert status == 200
    return page


async def whoami(page: Any) -> tuple[int, str | None]:
    """As the browser is signed in now (the page is on the app's origin)."""
    return await page.evaluate(
        """async () => { const r = await fetch('/api/me');
        return [r.status, r.ok ? (await r.json()).user.name : null]; }"""
    )


@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost"], ids=["same-site-other-port", "cross-site"])
async def test_login_csrf_a_foreign_form_cannot_sign_the_browser_in(
    browser: Any,
    app: tuple[LiveServer, Recorder],
    attacker: tuple[LiveServer, dict[str, str]],
    settings: Settings,
    attacker_host: str,
) -> None:
    live, recorder = app
    site, pages = attacker
    site_origin = site.url.replace("127.0.0.1", attacker_host)
    victim, mallory = await make_user(settings, "victim"), await make_user(settings, "mallory")
    # enctype=text/plain sends `name=value`: the `=` lands in a first "token" that the second (which JSON parsers
    # keep) overrides, so the body is valid JSON naming mallory's token, sent without any preflight.
    pages["login"] = f"""<!doctype html><form id="f" method="POST" action="{live.url}/api/session"
        enctype="text/plain"><input type="hidden" name='{{"token":"x' value='","token":"{mallory}"}}'></form>
        <script>document.getElementById("f").submit()</script>"""
    context = await browser.new_context(bypass_csp=False)
    try:
        app_page = await sign_in_as(context, live, victim)
        assert await whoami(app_page) == [200, "victim"]
        evil = await context.new_page()
        await evil.goto(f"{site_origin}/login")
        await evil.wait_for_url(f"{live.url}/api/session", timeout=T)  # the form went to the app
        tried = recorder.from_origin(site_origin)
        assert [(s.path, s.status) for s in tried] == [("/api/session", 403)]
        assert "csrf_refused" in await evil.content()
        assert await whoami(app_page) == [200, "victim"], "the browser was signed in as mallory"
    finally:
        await context.close()


async def test_csrf_another_port_cannot_create_cancel_or_retry_jobs(
    browser: Any, app: tuple[LiveServer, Recorder], attacker: tuple[LiveServer, dict[str, str]], settings: Settings
) -> None:
    live, recorder = app
    site, pages = attacker
    token = await make_user(settings, "victim")
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {token}"}) as api:
        queued = (await api.post("/api/jobs", json={"type": "titles", "input": {"text": "mine"}})).json()["job_id"]
        done = (await api.post("/api/jobs", json={"type": "titles", "input": {"text": "old"}})).json()["job_id"]
        assert (await api.post(f"/api/jobs/{done}/cancel")).json()["status"] == "cancelled"
        before = (await api.get("/api/jobs")).json()["jobs"]

        job = json.dumps({"type": "titles", "input": {"text": "csrf fetch"}})
        pages["jobs"] = f"""<!doctype html>
        <iframe name="s1"></iframe><iframe name="s2"></iframe><iframe name="s3"></iframe>
        <form id="c" target="s1" method="POST" action="{live.url}/api/jobs" enctype="text/plain">
          <input type="hidden" name='{{"type":"titles","input":{{"text":"csrf form' value='"}}}}'></form>
        <form id="x" target="s2" method="POST" action="{live.url}/api/jobs/{queued}/cancel"></form>
        <form id="r" target="s3" method="POST" action="{live.url}/api/jobs/{done}/retry"></form>
        <script>
        (async () => {{
          const app = "{live.url}", o = {{method: "POST", credentials: "include", mode: "no-cors"}};
          await Promise.allSettled([
            fetch(app + "/api/jobs", {{...o, body: new Blob([{json.dumps(job)}])}}),  // a Blob: no Content-Type
            fetch(app + "/api/jobs/{queued}/cancel", o),
            fetch(app + "/api/jobs/{done}/retry", o),
            fetch(app + "/api/jobs", {{method: "POST", credentials: "include",  // JSON: needs a preflight
              headers: {{"content-type": "application/json"}}, body: {json.dumps(job)}}}),
          ]);
          for (const f of ["c", "x", "r"]) document.getElementById(f).submit();
        }})();
        </script>"""
        context = await browser.new_context(bypass_csp=False)
        try:
            await sign_in_as(context, live, token)
            evil = await context.new_page()
            await evil.goto(f"{site.url}/jobs")

            async def all_six_answered() -> bool:  # 3 fetches + 3 forms; the preflighted one never gets its POST
                return len(recorder.from_origin(site.url)) >= 6

            await until(all_six_answered, what="the attack's requests")
            tried = recorder.from_origin(site.url)
            assert sorted(s.path for s in tried) == sorted(
                ["/api/jobs", "/api/jobs", f"/api/jobs/{queued}/cancel", f"/api/jobs/{queued}/cancel"]
                + [f"/api/jobs/{done}/retry"] * 2
            )
            assert {s.status for s in tried} == {403}, [(s.path, s.status) for s in tried]
        finally:
            await context.close()
        after = (await api.get("/api/jobs")).json()["jobs"]
        assert [j["job_id"] for j in after] == [j["job_id"] for j in before], "a job was created or retried"
        assert (await api.get(f"/api/jobs/{queued}")).json()["status"] == "queued", "the job was cancelled"


async def js_until(page: Any, expr: str) -> None:
    """`wait_for_function` without `eval` (the CSP forbids it): `evaluate` runs outside the page's policy."""

    async def holds() -> bool:
        return bool(await page.evaluate(expr))

    await until(holds, timeout=T / 1000, what=expr)


CSP_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


async def test_the_page_runs_jobs_under_the_csp_with_no_violation(browser: Any, settings: Settings) -> None:
    """SSE, then WebSocket (SSE blocked), then an image (a data: URL), all end to end; then the check's own check:
    an inline script is refused, so the policy is on and the listener hears it."""
    import dataclasses

    demo = dataclasses.replace(settings, demo_login=True)
    assert demo.redis_url
    async with serve(create_app(demo, redis_url=demo.redis_url)) as live, run_worker(demo):
        context = await browser.new_context(bypass_csp=False)  # the real policy (chromium.py bypasses it by default)
        await context.add_init_script(CSP_WATCH)
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: console.append(str(exc)))
        try:
            response = await page.goto(live.url + "/")
            assert response.headers["content-security-policy"].startswith("default-src 'self'")
            await page.wait_for_selector("#form-titles", timeout=T)
            for kind, field_id, text, blocked in (
                ("titles", "#titles-text", "Under a strict policy", False),
                ("titles", "#titles-text", "Over the WebSocket [[slow:2]]", True),
                ("image", "#image-prompt", "A small red boat", False),
            ):
                if blocked:
                    await page.route("**/events*", lambda route: route.abort())
                await page.click(f"label[for=pick-{kind}]")
                await page.fill(field_id, text)
                before = await page.locator(".job").count()
                await page.click(f"#form-{kind} button[type=submit]")
                await js_until(page, f"document.querySelectorAll('.job').length > {before}")
                job_id = await page.locator(".job").first.get_attribute("data-job-id")
                card = f'.job[data-job-id="{job_id}"]'
                if blocked:  # same-origin ws: is covered by default-src 'self'
                    await page.wait_for_selector(f'{card}[data-transport="ws"]', timeout=T)
                await page.wait_for_selector(f'{card}[data-status="completed"]', timeout=T)
                if blocked:
                    await page.unroute("**/events*")
            assert await page.locator(".job .images img").count() >= 1
            assert await page.evaluate("document.querySelector('.job .images img').naturalWidth") > 0
            assert await page.evaluate("window.__csp") == []
            assert not [m for m in console if "Content Security Policy" in m], console

            await page.evaluate(
                "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
                " document.body.append(s); }"
            )
            await js_until(page, "window.__csp.length > 0")
            assert await page.evaluate("window.__ran") is None
        finally:
            await context.close()
