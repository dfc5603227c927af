"""The page at / in real headless Chromium (Debian's package, driven by Playwright), against the real app and worker.

One app, worker and browser for the whole module (each test gets a fresh browser context: new cookies, new
localStorage); the app runs with demo login on, as `scripts/dev` does. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.config import Settings
from service.embedded import EmbeddedRedis

from .axe import assert_accessible
from .conftest import LiveServer, fast_settings, make_user, run_worker, serve, serve_with_worker

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}
T = 20_000  # ms: the longest any single wait may take


@pytest.fixture(scope="module")
def page_settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return fast_settings(redis_server, tmp_path_factory.mktemp("page"), demo_login=True)


@pytest.fixture(scope="module")
async def live(page_settings: Settings) -> AsyncIterator[LiveServer]:
    async with serve_with_worker(page_settings) as server:
        yield server


@pytest.fixture
async def page(chromium: Any, live: LiveServer, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    viewport = getattr(request, "param", DESKTOP)
    context = await chromium.new_context(viewport=viewport)
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    await pg.goto(live.url + "/")
    await pg.wait_for_selector("#form-titles", timeout=T)
    try:
        yield pg
    finally:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"page-{name}.png"), full_page=True)


async def submit(page: Any, job_type: str, text: str) -> str:
    """Fill the job type's main field, press its button, and return the new card's job id."""
    await page.click(f"label[for=pick-{job_type}]")
    field = {"titles": "#titles-text", "summary": "#summary-text", "chat": "#chat-message", "image": "#image-prompt"}
    await page.fill(field[job_type], text)
    before = await page.locator(".job").count()
    await page.click(f"#form-{job_type} button[type=submit]")
    await page.wait_for_function(f"document.querySelectorAll('.job').length > {before}", timeout=T)
    return await page.locator(".job").first.get_attribute("data-job-id")


async def sign_in_with_token(page: Any, url: str, token: str) -> None:
    """Open the page without demo login and sign in through its form, as a user pasting a token does."""
    await page.goto(url + "/")
    await page.fill("#token", token)
    await page.click("form.signin button[type=submit]")
    await page.wait_for_selector("#form-titles", timeout=T)


def card(page: Any, job_id: str) -> Any:
    return page.locator(f'.job[data-job-id="{job_id}"]')


async def wait_status(page: Any, job_id: str, status: str) -> None:
    await page.wait_for_selector(f'.job[data-job-id="{job_id}"][data-status="{status}"]', timeout=T)


async def test_generate_watch_live_progress_then_titles(page: Any) -> None:
    job_id = await submit(page, "titles", "Why queues make AI features feel fast [[slow:2]]")
    c = card(page, job_id)
    await page.wait_for_function(
        f"""() => {{
          const c = document.querySelector('.job[data-job-id="{job_id}"]');
          return c.dataset.status === 'processing' && c.querySelector('.step').textContent === 'Generating titles…'
            && c.querySelector('progress').value > 20 && c.querySelector('.output').textContent.length > 0;
        }}""",
        timeout=T,
    )
    assert await c.locator(".transport").text_content() == "live via SSE"
    assert (await c.locator(".attempt").text_content()) == "Attempt 1 of 3"
    assert await c.locator(".status[aria-live=polite]").text_content() == "Working on it"
    await shot(page, "running")
    await wait_status(page, job_id, "completed")
    titles = await c.locator(".titles .title-text").all_text_contents()
    assert len(titles) == 5 and all(titles)
    assert await c.locator("progress").get_attribute("value") == "100"
    assert await c.locator(".cancel").is_hidden() and await c.locator(".retry").is_hidden()
    await shot(page, "completed")


async def test_a_job_waiting_for_the_providers_rate_limit_says_so(page: Any) -> None:
    text = f"A post the provider refuses once {uuid.uuid4().hex[:6]} [[fail:429:retry_after=2:times=1]]"
    job_id = await submit(page, "titles", text)
    c = card(page, job_id)
    await page.wait_for_function(
        f"""() => {{
          const c = document.querySelector('.job[data-job-id="{job_id}"]');
          return c.dataset.status === 'queued'
            && c.querySelector('.step').textContent.startsWith("Waiting for the provider's rate limit, about")
            && c.querySelector('.eta').textContent.startsWith('next try in about');
        }}""",
        timeout=T,
    )
    assert await c.locator(".attempt").text_content() == "Attempt 1 of 3"  # a 429 spends no attempt
    await shot(page, "rate-limited")
    await wait_status(page, job_id, "completed")
    assert await c.locator(".titles li").count() == 5


async def test_cancel_a_running_job(page: Any) -> None:
    job_id = await submit(page, "chat", "Tell me about queues [[slow:6]]")
    c = card(page, job_id)
    await wait_status(page, job_id, "processing")
    await c.locator(".cancel").click()
    await wait_status(page, job_id, "cancelled")
    assert await c.locator(".status").text_content() == "Cancelled"
    assert "You cancelled this job." in await c.locator(".problem").text_content()
    assert await c.locator(".retry").is_visible() and await c.locator(".cancel").is_hidden()
    await shot(page, "cancelled")


async def test_failure_reads_plainly_then_retry_succeeds(page: Any) -> None:
    job_id = await submit(page, "titles", f"A post that fails once {uuid.uuid4().hex[:6]} [[fail:400:times=1]]")
    c = card(page, job_id)
    await wait_status(page, job_id, "failed")
    problem = await c.locator(".problem").text_content()
    assert problem.startswith("The AI service could not handle this request. Change the text a little, then Retry.")
    assert "Details: Simulated bad request" in problem and "null" not in problem
    await shot(page, "failed")
    await c.locator(".retry").click()
    # The new job takes the old card's place and completes (the simulated failure happens only once).
    await page.wait_for_function(
        f"""() => !document.querySelector('.job[data-job-id="{job_id}"]')
             && document.querySelector('.job')?.dataset.status === 'completed'""",
        timeout=T,
    )
    assert await page.locator(".job").first.locator(".titles li").count() == 5


async def test_reload_mid_job_resumes_the_live_view(page: Any) -> None:
    job_id = await submit(page, "chat", "Explain retries slowly [[slow:4]]")
    c = card(page, job_id)
    await page.wait_for_function(
        f"""document.querySelector('.job[data-job-id="{job_id}"] .output').textContent.length > 20""", timeout=T
    )
    written = await c.locator(".output").text_content()
    await page.reload()
    # Back with the text written so far (from the snapshot), then live again until the end.
    await page.wait_for_selector(f'.job[data-job-id="{job_id}"] .output:not([hidden])', timeout=T)
    resumed = await c.locator(".output").text_content()
    assert resumed.startswith(written) or (await c.get_attribute("data-status")) == "completed"
    await page.wait_for_function(
        f"""document.querySelector('.job[data-job-id="{job_id}"]').dataset.transport === 'sse'""", timeout=T
    )
    await shot(page, "resumed")
    await wait_status(page, job_id, "completed")
    reply = await c.locator(".reply").text_content()
    assert reply.startswith(resumed), "the final reply is the text that streamed in"


async def test_sse_and_websocket_blocked_the_page_polls_and_completes(page: Any) -> None:
    await page.route("**/events*", lambda route: route.abort())
    await page.route_web_socket("**/api/ws", lambda ws: ws.close())
    job_id = await submit(page, "titles", "Polling still works [[slow:3]]")
    await page.wait_for_selector(f'.job[data-job-id="{job_id}"][data-transport="poll"]', timeout=T)
    assert await card(page, job_id).locator(".transport").text_content() == "live via polling"
    await shot(page, "polling")
    await wait_status(page, job_id, "completed")
    assert await card(page, job_id).locator(".titles li").count() == 5


async def test_sse_blocked_the_page_uses_websocket(page: Any, live: LiveServer) -> None:
    await page.route("**/events*", lambda route: route.abort())
    job_id = await submit(page, "titles", "WebSocket works [[slow:2]]")
    await page.wait_for_selector(f'.job[data-job-id="{job_id}"][data-transport="ws"]', timeout=T)
    await wait_status(page, job_id, "completed")


async def test_ai_output_is_text_never_html(page: Any) -> None:
    job_id = await submit(page, "chat", "[[echo:<img src=x onerror=window.__xss=1>]]")
    c = card(page, job_id)
    await wait_status(page, job_id, "completed")
    assert await c.locator(".reply").text_content() == "<img src=x onerror=window.__xss=1>"
    assert await page.evaluate("window.__xss") is None
    assert await page.locator(".job img, #history img").count() == 0
    await page.reload()  # and again from the snapshot and the history list
    await wait_status(page, job_id, "completed")
    assert await page.evaluate("window.__xss") is None
    assert await page.locator(".job img, #history img").count() == 0


@pytest.mark.parametrize("page", [PHONE], indirect=True)
async def test_phone_several_jobs_history_pages_queue_and_labels(page: Any, live: LiveServer) -> None:
    # Earlier jobs of this user, made through the API, fill more than one history page.
    async with httpx.AsyncClient(base_url=live.url, timeout=10, headers={"Origin": live.url}) as api:
        assert (await api.post("/api/session", json={})).status_code == 200
        for i in range(9):
            r = await api.post("/api/jobs", json={"type": "summary", "input": {"text": f"Earlier post {i}"}})
            assert r.status_code == 202, r.text
    titles_id = await submit(page, "titles", "Two at once [[slow:1]]")
    image_id = await submit(page, "image", "A small red boat")
    await wait_status(page, titles_id, "completed")
    await wait_status(page, image_id, "completed")
    img = card(page, image_id).locator(".images img")
    assert await img.count() == 1 and (await img.get_attribute("src")).startswith("data:image/")

    await page.wait_for_function("document.querySelector('[data-key=workers]').textContent.startsWith('1 ')", timeout=T)
    first = await page.locator(".history-list li").first.get_attribute("data-job-id")
    assert first in {titles_id, image_id}
    assert await page.locator(".history-list li").count() == 8
    await page.click("text=Older →")
    await page.wait_for_function("document.querySelector('.page-label').textContent === 'Page 2'", timeout=T)
    assert first not in await page.locator(".history-list li").evaluate_all("els => els.map(e => e.dataset.jobId)")
    await page.locator(".history-list li button").first.click()  # open an earlier job as a card
    await page.wait_for_function("document.querySelectorAll('.job').length === 3", timeout=T)

    # Nothing wider than the phone; every control has a label; the keyboard reaches the type picker and Generate.
    wide = await page.evaluate(
        """[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1)
             .map(e => e.tagName + '.' + e.className)"""
    )
    assert wide == [], f"wider than the phone: {wide}"
    unlabeled = await page.evaluate(
        """[...document.querySelectorAll('input, textarea, select')].filter(e => !e.labels.length).map(e => e.id)"""
    )
    assert unlabeled == []
    await page.focus("#pick-titles")
    await page.keyboard.press("ArrowRight")
    assert await page.evaluate("document.activeElement.id") == "pick-summary"
    assert await page.is_visible("#form-summary") and await page.is_hidden("#form-titles")
    await assert_accessible(page, "on a phone with three cards and page 2 of the history")
    await shot(page, "phone")


async def test_retry_of_a_job_on_the_users_own_key_asks_for_the_key(page: Any) -> None:
    """The server keeps no copy of a user's provider key: the card asks for it instead of retrying on the server's."""
    old = await page.evaluate(
        """async () => {
          const r = await fetch('/api/jobs', {method: 'POST', headers: {'content-type': 'application/json'},
            body: JSON.stringify({type: 'titles', input: {text: 'On my key [[fail:400]]'},
                                  user_provided_key: 'sk-page-user-key'})});
          return (await r.json()).job_id;
        }"""
    )
    await page.evaluate(f"localStorage.setItem('aijobs.open', JSON.stringify(['{old}']))")
    await page.reload()
    await wait_status(page, old, "failed")
    c = card(page, old)
    assert await c.locator(".retry").text_content() == "Retry with my key…"
    await c.locator(".retry").click()
    await c.locator(".key-retry").wait_for(timeout=T)
    assert "does not keep" in await c.locator(".key-retry p").text_content()
    assert await c.get_by_label("Your provider key").get_attribute("type") == "password"
    await c.get_by_label("Your provider key").fill("sk-page-user-key")
    await c.locator(".key-retry button").click()
    await page.wait_for_function(
        f"""() => !document.querySelector('.job[data-job-id="{old}"]') && document.querySelector('.job')""",
        timeout=T,
    )
    fresh = await page.locator(".job").first.get_attribute("data-job-id")
    job = await page.evaluate(f"fetch('/api/jobs/{fresh}').then(r => r.json())")
    assert job["retry_of"] == old and job["own_provider_key"] is True
    await shot(page, "retry-own-key")


async def test_reload_keeps_open_cards(page: Any) -> None:
    ids = [await submit(page, "summary", f"Keep me {i}") for i in range(2)]
    for job_id in ids:
        await wait_status(page, job_id, "completed")
    await page.reload()
    for job_id in ids:
        await wait_status(page, job_id, "completed")
    order = await page.locator(".job").evaluate_all("els => els.map(e => e.dataset.jobId)")
    assert order == ids[::-1], "newest on top, as before the reload"
    await card(page, ids[0]).locator(".close").click()
    await page.reload()
    await wait_status(page, ids[1], "completed")
    assert await card(page, ids[0]).count() == 0, "a removed card stays removed"


async def test_sign_in_with_a_token_then_a_queued_job_waits_for_a_worker(
    chromium: Any, web: LiveServer, settings: Settings
) -> None:
    """Without demo login the page asks for a token; with no worker a job shows its place and says why it waits."""
    token = await make_user(settings, "carol")
    context = await chromium.new_context(viewport=DESKTOP)
    try:
        page = await context.new_page()
        await sign_in_with_token(page, web.url, token)
        assert await page.text_content("#who") == "Signed in as carol"
        job_id = await submit(page, "titles", "Waiting for a worker")
        c = card(page, job_id)
        assert await c.get_attribute("data-status") == "queued"
        await page.wait_for_function(
            f"""document.querySelector('.job[data-job-id="{job_id}"] .eta').textContent.includes('no worker')""",
            timeout=T,
        )
        assert await c.locator(".step").text_content() == "Waiting for a worker…"
        await page.wait_for_selector("#queue >> text=No worker is running", timeout=T)
        await shot(page, "queued")
        async with run_worker(settings):
            await wait_status(page, job_id, "completed")
        assert await c.locator(".titles li").count() == 5
    finally:
        await context.close()


async def test_signed_out_in_another_tab_the_page_asks_to_sign_in_again(
    chromium: Any, web: LiveServer, settings: Settings
) -> None:
    """The server ends a signed-out session's open streams; the page stops following and shows the sign-in form."""
    token = await make_user(settings, "tabby")
    context = await chromium.new_context(viewport=DESKTOP)
    try:
        page = await context.new_page()
        await sign_in_with_token(page, web.url, token)
        job_id = await submit(page, "titles", "Followed until signed out")  # no worker: it stays queued
        await page.wait_for_function(
            f"""document.querySelector('.job[data-job-id="{job_id}"]').textContent.includes('live via SSE')""",
            timeout=T,
        )
        cookie = next(c for c in await context.cookies() if c["name"] == "aijobs_session")
        headers = {"Cookie": f"aijobs_session={cookie['value']}", "Origin": web.url, "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=web.url, headers=headers) as other_tab:
            assert (await other_tab.delete("/api/session")).status_code == 204
        await page.wait_for_selector("form.signin", timeout=T)
        assert "signed out" in (await page.text_content("#who") or "")
    finally:
        await context.close()


async def test_queued_card_follows_its_place_as_the_queue_drains(chromium: Any, settings: Settings) -> None:
    """Over SSE the card's place and wait come from pushed `position` events (its 3 s poll is off there)."""
    from dataclasses import replace

    s = replace(settings, worker_concurrency=1, position_push_seconds=0.2)
    assert s.redis_url
    token = await make_user(s, "quinn")
    context = await chromium.new_context(viewport=DESKTOP)
    async with serve(create_app(s, redis_url=s.redis_url)) as web:
        try:
            async with httpx.AsyncClient(base_url=web.url, headers={"Authorization": f"Bearer {token}"}) as api:
                for i, slow in enumerate((1.5, 1.5, 4)):  # the last one long: the page has time to say "next in line"
                    body = {"type": "titles", "input": {"text": f"Ahead {i} [[slow:{slow}]]"}}
                    assert (await api.post("/api/jobs", json=body)).status_code == 202
            page = await context.new_page()
            await sign_in_with_token(page, web.url, token)
            job_id = await submit(page, "titles", "Behind three others")
            eta = f"""document.querySelector('.job[data-job-id="{job_id}"] .eta').textContent"""
            # No worker yet: the three stay ahead however long the page took to load (with one running, they
            # could all be done before the job was even submitted).
            await page.wait_for_function(f"{eta}.includes('3 ahead in the queue')", timeout=T)
            assert "live via SSE" in (await card(page, job_id).text_content() or "")
            await shot(page, "queue-position")
            async with run_worker(s):
                await page.wait_for_function(f"{eta}.includes('next in line')", timeout=T)
                await wait_status(page, job_id, "completed")
        finally:
            await context.close()


async def test_a_page_load_asks_for_nothing_that_is_missing(chromium: Any, live: LiveServer) -> None:
    """Every request the page makes answers (the icon included: no /favicon.ico 404 on each load)."""
    context = await chromium.new_context(viewport=DESKTOP)
    failed: list[str] = []
    try:
        pg = await context.new_page()
        pg.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        await pg.goto(live.url + "/", wait_until="networkidle")
        await pg.wait_for_selector("#form-titles", timeout=T)
        icon = await pg.evaluate(
            "fetch('/static/favicon.svg').then(r => r.status + ' ' + r.headers.get('content-type'))"
        )
    finally:
        await context.close()
    assert not failed, failed
    assert icon.startswith("200 image/svg+xml")
    async with httpx.AsyncClient(base_url=live.url) as http:
        legacy = await http.get("/favicon.ico")  # what browsers ask for on pages without a <link rel=icon>
    assert legacy.status_code == 200 and legacy.headers["content-type"].startswith("image/svg+xml")
