"""The React example page (/static/examples/react.html: useCreateJob and useJob from static/react/use-job.js, React
from static/vendor, no build step) in real headless Chromium against the real app and worker, under the app's own
CSP: it submits a titles job and follows it live to its result; a new job id re-subscribes and unmounting
disconnects (counted by the server's /healthz and by the page's own EventSources); with SSE and WebSocket blocked it
polls; the model's words stay text. Screenshots go to test-artifacts/."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.headers import IMPORT_MAP_PAGE, IMPORT_MAP_SHA256
from service.config import Settings
from service.embedded import EmbeddedRedis

from .conftest import LiveServer, fast_settings, serve_with_worker, until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PAGE = ROOT / "static" / "examples" / "react.html"
T = 20  # seconds: the longest any single wait may take
VIEW = "section.job"

# Before any page script: CSP violations and the page's open EventSources, counted as the page opens and closes them.
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
window.__open = new Set();
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(...args) { super(...args); window.__open.add(this); }
  close() { window.__open.delete(this); super.close(); }
};
"""


@pytest.fixture(scope="module")
def example_settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return fast_settings(redis_server, tmp_path_factory.mktemp("react"), demo_login=True)


@pytest.fixture(scope="module")
async def live(example_settings: Settings) -> AsyncIterator[LiveServer]:
    async with serve_with_worker(example_settings) as server:
        yield server


@pytest.fixture
async def page(chromium: Any, live: LiveServer) -> AsyncIterator[Any]:
    """The example under the server's real policy (no bypass), signed in by the demo login, with nothing refused."""
    context = await chromium.new_context(bypass_csp=False, viewport={"width": 900, "height": 800})
    await context.add_init_script(WATCH)
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # Refusals a test expects, by URL part: "who am I?" before the demo login signs the browser in, and what a
    # test blocks itself (it adds to this set).
    pg.expected_failures = {"/api/me"}

    def console(m: Any) -> None:
        url = m.location.get("url", "")
        if m.type == "error" and not any(part in url for part in pg.expected_failures):
            errors.append(f"{m.text} ({url})")

    pg.on("console", console)
    response = await pg.goto(live.url + IMPORT_MAP_PAGE)
    assert f"script-src 'self' 'sha256-{IMPORT_MAP_SHA256}'" in response.headers["content-security-policy"]
    await pg.wait_for_selector("text=Signed in as demo.", timeout=T * 1000)
    try:
        yield pg
    finally:
        csp = await pg.evaluate("window.__csp")
        await context.close()
    assert csp == [], f"CSP violations: {csp}"
    assert not errors, f"errors in the page: {errors}"


async def js_until(page: Any, expr: str) -> None:
    """`wait_for_function` without `eval` (the CSP forbids it): `evaluate` runs outside the page's policy."""

    async def holds() -> bool:
        return bool(await page.evaluate(expr))

    await until(holds, timeout=T, what=expr)


async def submit(page: Any, text: str) -> str:
    before = await page.get_attribute(VIEW, "data-job-id") if await page.locator(VIEW).count() else None
    await page.fill("#text", text)
    await page.click("button[type=submit]")
    await js_until(page, f"(document.querySelector('{VIEW}')?.dataset.jobId ?? null) !== {json.dumps(before)}")
    job_id: str = await page.get_attribute(VIEW, "data-job-id")
    return job_id


def streams(live: LiveServer, n: int) -> Callable[[], Awaitable[bool]]:
    """A check: the server has exactly `n` live job streams (its /healthz counts them)."""

    async def check() -> bool:
        async with httpx.AsyncClient(base_url=live.url) as c:
            return bool((await c.get("/healthz")).json()["gateway"]["connections"] == n)

    return check


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"react-{name}.png"), full_page=True)


def test_the_policy_allows_exactly_the_pages_import_map() -> None:
    """The hash in headers.py is the import map's: the page's one inline script, and nothing else inline."""
    html = PAGE.read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    inline = [(attrs, body) for attrs, body in scripts if "src=" not in attrs]
    assert len(inline) == 1 and 'type="importmap"' in inline[0][0]
    digest = base64.b64encode(hashlib.sha256(inline[0][1].encode()).digest()).decode()
    assert digest == IMPORT_MAP_SHA256, "the import map changed: put its new sha256 in service/api/headers.py"
    sources = " ".join((ROOT / "static" / p).read_text() for p in ("react/use-job.js", "examples/react-app.js"))
    assert not re.search(r"dangerouslySetInnerHTML\s*:|innerHTML\s*=", sources), "AI output goes in as text only"


async def test_the_example_follows_a_job_live_to_its_titles(page: Any) -> None:
    job_id = await submit(page, "Why queues make AI features feel fast [[slow:2]]")
    view = f'{VIEW}[data-job-id="{job_id}"]'
    await js_until(
        page,
        f"""(() => {{
          const v = document.querySelector('{view}');
          return v.dataset.status === 'processing' && v.querySelector('progress').value > 0
            && v.querySelector('.step').textContent === 'Generating titles…'
            && v.querySelector('.output')?.textContent.length > 0;
        }})()""",
    )
    assert await page.text_content(f"{view} .transport") == "live via SSE"
    assert await page.text_content(f"{view} .status") == "Working on it"
    assert await page.text_content(f"{view} .attempt") == "Attempt 1 of 3"
    await shot(page, "running")
    await page.wait_for_selector(f'{view}[data-status="completed"]', timeout=T * 1000)
    titles = await page.locator(f"{view} .titles li").all_text_contents()
    assert len(titles) == 5 and all(titles)
    assert await page.evaluate(f"document.querySelector('{view} progress').value") == 100
    assert await page.text_content(f"{view} .transport") == "finished"
    assert await page.locator(f"{view} .cancel").count() == 0 and await page.locator(f"{view} .output").count() == 0
    await shot(page, "completed")


async def test_a_new_id_resubscribes_and_unmounting_disconnects(page: Any, live: LiveServer) -> None:
    first = await submit(page, "The first of two [[slow:8]]")
    await page.wait_for_selector(f'{VIEW}[data-job-id="{first}"][data-status="processing"]', timeout=T * 1000)
    await until(streams(live, 1), timeout=T, what="one live stream")
    second = await submit(page, "The second replaces it [[slow:8]]")
    await page.wait_for_selector(f'{VIEW}[data-job-id="{second}"][data-status="processing"]', timeout=T * 1000)
    # the first watch was closed when the id changed: one stream, not two, on either side
    await until(streams(live, 1), timeout=T, what="the first stream closed")
    assert await page.evaluate("window.__open.size") == 1
    await page.click(f"{VIEW} .close")
    assert await page.locator(VIEW).count() == 0
    assert await page.evaluate("window.__open.size") == 0
    await until(streams(live, 0), timeout=T, what="no stream after unmount")
    async with httpx.AsyncClient(base_url=live.url, headers={"Origin": live.url}) as c:
        await c.post("/api/session", json={})
        for job_id in (first, second):  # closing the view stops watching, not the job
            assert (await c.get(f"/api/jobs/{job_id}")).json()["status"] in {"processing", "completed"}
            cancelled = await c.post(f"/api/jobs/{job_id}/cancel", headers={"Content-Type": "application/json"})
            assert cancelled.status_code == 200, cancelled.text  # don't leave them running


async def test_with_sse_and_websocket_blocked_the_hook_polls_to_the_end(page: Any) -> None:
    page.expected_failures.update({"/events", "/api/ws"})
    await page.route("**/events*", lambda route: route.abort())
    await page.route_web_socket("**/api/ws", lambda ws: ws.close())
    job_id = await submit(page, "Polling still works [[slow:1]]")
    view = f'{VIEW}[data-job-id="{job_id}"]'
    await page.wait_for_selector(f'{view}[data-transport="poll"]', timeout=T * 1000)
    await page.wait_for_selector(f'{view}[data-status="completed"]', timeout=T * 1000)
    assert await page.locator(f"{view} .titles li").count() == 5
    assert await page.evaluate("window.__open.size") == 0


async def test_the_models_words_stay_text(page: Any) -> None:
    job_id = await submit(page, "[[echo:<img src=x onerror=window.__pwned=1>\n<b>bold</b>]]")
    view = f'{VIEW}[data-job-id="{job_id}"]'
    await page.wait_for_selector(f'{view}[data-status="completed"]', timeout=T * 1000)
    titles = await page.locator(f"{view} .titles li").all_text_contents()
    assert any("<img src=x" in t for t in titles) and any("<b>bold</b>" in t for t in titles), titles
    assert await page.locator(f"{view} img, {view} b").count() == 0
    assert await page.evaluate("window.__pwned") is None
