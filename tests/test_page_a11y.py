"""The pages' accessibility audit: axe-core's WCAG 2.1 A and AA rules (and best practices) over every state of the
main page, and over the operator page (/admin) with every list and chart filled.

Real headless Chromium (Debian's), the real app and a real worker, in the light and the dark colour scheme (the
page follows the system's). Each run signs a new user in through the token form, so "empty" really is empty.
A failure prints each broken rule with the elements that break it (tests/axe.py). A card that does not reach a
status in time fails with what the page, the store and the app's and worker's logs (INFO, captured by pytest and
shown with the failure) said about it, so a failure on a loaded CI machine says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from service.api.app import create_app
from service.config import Settings
from service.coordination import ProviderBackoff
from service.embedded import EmbeddedRedis
from service.events import EventLog
from service.store import open_users

from .axe import assert_accessible, audit, report
from .conftest import LiveServer, fast_settings, make_user, run_worker, serve, wait_for_status
from .procs import store_row, store_sql
from .test_page import DESKTOP, PHONE, T, card, shot, submit


@pytest.fixture(autouse=True)
def _app_and_worker_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The app's and the worker's INFO lines (both run in this process) go into the failure report."""
    caplog.set_level(logging.INFO, logger="aijobs")
    caplog.set_level(logging.INFO, logger="arq")


async def wait_status(page: Any, settings: Settings, job_id: str, status: str) -> None:
    """Wait for the card to show `status`; on a timeout, fail with the card's state and the job's row."""
    try:
        await page.wait_for_selector(f'.job[data-job-id="{job_id}"][data-status="{status}"]', timeout=T)
    except Exception as exc:
        shown = await page.evaluate(
            """(id) => { const c = document.querySelector(`.job[data-job-id="${id}"]`);
                         return c && {status: c.dataset.status, transport: c.dataset.transport,
                                      meta: c.querySelector('.meta').textContent}; }""",
            job_id,
        )
        row = store_row(settings, job_id)
        keys = ("status", "attempts", "seq", "worker_id", "started_at", "completed_at")
        stored = {k: row[k] for k in keys if k in row}
        redis = Redis.from_url(settings.redis_url or "")
        try:
            logged = [(e.seq, e.kind.value, e.data.get("status")) for e in await EventLog(redis).read_after(job_id, 0)]
        finally:
            await redis.aclose()
        raise AssertionError(
            f"card {job_id} not {status} after {T} ms: card {shown}, store {stored}, its events in Redis {logged}"
        ) from exc


@pytest.fixture(scope="module")
def a11y_settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return fast_settings(redis_server, tmp_path_factory.mktemp("a11y"))


@pytest.fixture(scope="module")
async def app_only(a11y_settings: Settings) -> AsyncIterator[LiveServer]:
    """The app with no worker yet: a job stays queued until a test starts one."""
    assert a11y_settings.redis_url
    async with serve(create_app(a11y_settings, redis_url=a11y_settings.redis_url)) as server:
        yield server


async def signed_in_page(chromium: Any, url: str, token: str, scheme: str) -> tuple[Any, Any]:
    context = await chromium.new_context(viewport=DESKTOP, color_scheme=scheme)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url + "/")
    await page.wait_for_selector("#token", timeout=T)
    await assert_accessible(page, f"asking for a token ({scheme})")
    await page.fill("#token", "aij_not-a-token")
    await page.click("form.signin button[type=submit]")
    await page.wait_for_function("document.querySelector('form.signin .form-error').textContent.length > 0")
    await assert_accessible(page, f"refusing a token ({scheme})")
    await page.fill("#token", token)
    await page.click("form.signin button[type=submit]")
    await page.wait_for_selector("#form-titles", timeout=T)
    return context, page


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_every_state_of_the_page_passes_wcag21_aa(
    chromium: Any, app_only: LiveServer, a11y_settings: Settings, scheme: str
) -> None:
    token = await make_user(a11y_settings, f"axe-{scheme}")
    context, page = await signed_in_page(chromium, app_only.url, token, scheme)
    try:
        # Empty: no card, no history, the queue panel says no worker runs.
        await page.wait_for_selector("#history >> text=No jobs yet", timeout=T)
        await page.wait_for_selector("#queue >> text=No worker is running", timeout=T)
        await assert_accessible(page, f"empty ({scheme})")

        # Queued with no worker: the card says where it stands.
        queued = await submit(page, "titles", "Waiting for a worker [[slow:3]]")
        await page.wait_for_function(
            f"""document.querySelector('.job[data-job-id="{queued}"] .eta').textContent.includes('no worker')""",
            timeout=T,
        )
        await assert_accessible(page, f"with a queued job ({scheme})")

        async with run_worker(a11y_settings):
            # Running: progress, step, streamed text, attempt, transport, Cancel.
            await page.wait_for_function(
                f"""() => {{
                  const c = document.querySelector('.job[data-job-id="{queued}"]');
                  return c.dataset.status === 'processing' && c.querySelector('.output').textContent.length > 0;
                }}""",
                timeout=T,
            )
            await assert_accessible(page, f"with a running job ({scheme})")
            await shot(page, f"a11y-running-{scheme}")

            # Done: titles with Copy buttons, a summary, an image; history filled, pager buttons disabled.
            done = [queued, await submit(page, "summary", "A short text"), await submit(page, "image", "A red boat")]
            for job_id in done:
                await wait_status(page, a11y_settings, job_id, "completed")
            await page.wait_for_function("document.querySelectorAll('.history-list li').length === 3", timeout=T)
            await assert_accessible(page, f"with finished jobs ({scheme})")

            # Failed and cancelled: the problem in words, Retry and Remove.
            failed = await submit(page, "titles", "This one fails [[fail:400]]")
            await wait_status(page, a11y_settings, failed, "failed")
            cancelled = await submit(page, "chat", "Cancel me [[slow:6]]")
            await wait_status(page, a11y_settings, cancelled, "processing")
            await card(page, cancelled).locator(".cancel").click()
            await wait_status(page, a11y_settings, cancelled, "cancelled")
            await assert_accessible(page, f"with a failed and a cancelled job ({scheme})")
            await shot(page, f"a11y-failed-{scheme}")
    finally:
        await context.close()


async def test_the_operator_page_passes_wcag21_aa(chromium: Any, app_only: LiveServer, a11y_settings: Settings) -> None:
    """/admin with something in every list (queued, running, stuck, failed, expired, an action, a pause), its charts
    and their tables of numbers open, a job in the detail panel: light on a desktop, dark on a 390 px phone."""
    user = await make_user(a11y_settings, "axe-owner")
    async with open_users(a11y_settings) as users:
        _, token = await users.create("axe-operator", operator=True)
    url = app_only.url
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {user}"}) as api:
        async with run_worker(a11y_settings):
            failed = (await api.post("/api/jobs", json={"type": "summary", "input": {"text": "x [[fail:400]]"}})).json()
            done = (await api.post("/api/jobs", json={"type": "summary", "input": {"text": "fine"}})).json()
            slow = {"type": "chat", "input": {"messages": [{"role": "user", "content": "hold [[slow:60]]"}]}}
            running = (await api.post("/api/jobs", json=slow)).json()
            for job, status in ((failed, "failed"), (done, "completed"), (running, "processing")):
                await wait_for_status(api, job["job_id"], {status})
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as root:
                assert (await root.post(f"/api/admin/jobs/{failed['job_id']}/retry")).status_code == 202
                await wait_for_status(api, running["job_id"], {"processing"})
                await root.post(f"/api/admin/jobs/{running['job_id']}/cancel")
        late = (await api.post("/api/jobs", json={"type": "summary", "input": {"text": "late"}})).json()["job_id"]
        expire = "UPDATE jobs SET status = 'expired', completed_at = ? WHERE id = ?"
        store_sql(a11y_settings, expire, (time.time(), late))
        await api.post("/api/jobs", json={"type": "summary", "input": {"text": "waiting"}, "priority": 8})
        lost = (await api.post("/api/jobs", json={"type": "summary", "input": {"text": "lost"}})).json()["job_id"]
        store_sql(a11y_settings, "UPDATE jobs SET status = 'processing', attempts = 1, worker_id = 'gone:1:x', "
                  "lease_token = 'x', started_at = ?, lease_expires_at = ? WHERE id = ?",
                  (time.time() - 9, time.time() - 1, lost))  # fmt: skip
    redis = Redis.from_url(a11y_settings.redis_url or "")
    try:
        await ProviderBackoff(redis).pause("simulated", "sim-1", 120)
    finally:
        await redis.aclose()
    context = await chromium.new_context(viewport=DESKTOP, color_scheme="light")
    try:
        await context.request.post(
            f"{url}/api/session", data={"token": token}, headers={"Origin": url, "Content-Type": "application/json"}
        )
        page = await context.new_page()
        await page.goto(f"{url}/admin")
        for part in ("#failed tbody tr", "#expired tbody tr", "#stuck tbody tr", "#queue tbody tr",
                     "#backoff tbody tr", "#actions tbody tr", "#chart-finished svg rect.bar",
                     "#chart-times svg path.line"):  # fmt: skip
            await page.locator(part).first.wait_for(state="attached", timeout=T)
        for summary in await page.locator("details summary").all():
            await summary.click()
        await page.locator("#failed .job-link").first.click()
        await page.locator("#job-detail article").wait_for(timeout=T)
        await assert_accessible(page, "/admin (light)")
        await shot(page, "a11y-admin-light")
        # The other scheme and the phone layout (rows stacked) in one more pass over the same page.
        await page.emulate_media(color_scheme="dark")
        await page.set_viewport_size(PHONE)
        await assert_accessible(page, "/admin (dark, 390 px)")
        await shot(page, "a11y-admin-dark-phone")
    finally:
        await context.close()


async def test_the_audit_runs_under_the_pages_csp_and_finds_bad_contrast(chromium: Any, app_only: LiveServer) -> None:
    """The engine is live under the page's own Content-Security-Policy (no inline script), and reports the old grey.

    #777 on white (4.47:1), the page's grey before, is the one violation found, on the one element that has it.
    """
    context = await chromium.new_context(viewport=DESKTOP, color_scheme="light", bypass_csp=False)
    try:
        page = await context.new_page()
        response = await page.goto(app_only.url + "/")
        assert "default-src 'self'" in (await response.all_headers())["content-security-policy"]
        await page.wait_for_selector("#token", timeout=T)
        inline = "() => { const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
        assert await page.evaluate(inline + " document.head.append(s); return window.__inline; }") is None, "no CSP"
        await page.evaluate(
            """() => { const p = document.createElement('p'); p.id = 'grey'; p.textContent = 'Signed in as x';
                       p.style.color = '#777'; p.style.background = '#fff';
                       document.querySelector('header').append(p); }"""
        )
        violations = await audit(page)
        assert [v["id"] for v in violations] == ["color-contrast"], report(violations)
        assert [n["target"] for n in violations[0]["nodes"]] == [["#grey"]]
    finally:
        await context.close()
