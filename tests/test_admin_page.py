"""The operator page (/admin) in real headless Chromium, under the app's own Content-Security-Policy.

An operator finds another user's failed job, presses Retry, and watches the new job complete in the page; the
charts are drawn SVG (bars and lines) with text alternatives; the page fits a 390 px phone. A user who is not an
operator gets the 404 of an unknown path. Screenshots go to test-artifacts/ (page-admin-*.png).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.embedded import EmbeddedRedis
from service.store import open_users

from .conftest import LiveServer, fast_settings, make_user, serve_with_worker, wait_for_status
from .test_page import DESKTOP, PHONE, T, shot


@pytest.fixture(scope="module")
def admin_settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return fast_settings(redis_server, tmp_path_factory.mktemp("admin-page"))


@pytest.fixture(scope="module")
async def live(admin_settings: Settings) -> AsyncIterator[LiveServer]:
    async with serve_with_worker(admin_settings) as server:
        yield server


async def signed_in(chromium: Any, url: str, token: str, **options: Any) -> tuple[Any, Any, list[str]]:
    """A browser context signed in with the token (POST /api/session, as the page's sign-in form does), under
    the page's real CSP; the page, and the errors and CSP refusals it reports."""
    context = await chromium.new_context(bypass_csp=False, **options)
    r = await context.request.post(
        f"{url}/api/session", data={"token": token}, headers={"Origin": url, "Content-Type": "application/json"}
    )
    assert r.ok, await r.text()
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    return context, page, problems


async def test_an_operator_retries_a_failed_job_and_watches_it_complete(
    chromium: Any, live: LiveServer, admin_settings: Settings
) -> None:
    alice = await make_user(admin_settings, "alice")
    async with open_users(admin_settings) as users:
        _, root = await users.create("root", operator=True)
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {alice}"}) as api:
        text = f"A post that fails once {uuid.uuid4().hex[:6]} [[fail:400:times=1]]"
        failed = (await api.post("/api/jobs", json={"type": "titles", "input": {"text": text}})).json()["job_id"]
        await wait_for_status(api, failed, {"failed"}, timeout=T / 1000)

    context, page, problems = await signed_in(chromium, live.url, root, viewport=DESKTOP)
    try:
        response = await page.goto(f"{live.url}/admin")
        assert response.status == 200 and "default-src 'self'" in response.headers["content-security-policy"]
        row = page.locator(f'#failed tr[data-job-id="{failed}"]')
        await row.wait_for(timeout=T)
        assert await row.locator("td").nth(1).text_content() == "alice"
        assert "provider_bad_request" in await row.locator(".error-cell").text_content()
        bars = page.locator("#chart-finished svg rect.bar.k-failed")
        await bars.first.wait_for(timeout=T)  # the failure is drawn

        await row.get_by_role("button", name="Retry").click()
        done = page.locator('#job-detail article[data-status="completed"]')
        await done.wait_for(timeout=T)  # the new job, followed in the page until it ended
        assert failed in await done.text_content(), "it names the job it retries"
        assert (await page.locator("#notice").text_content()).startswith("Retried titles job")
        record = page.locator("#actions tbody tr").first
        assert [await record.locator("td").nth(i).text_content() for i in (1, 2, 3)] == ["root", "retry", failed[:8]]

        # The charts were redrawn when it ended: its completion is a bar, its wait and run are lines with points.
        await page.locator("#chart-finished svg rect.bar.k-completed").first.wait_for(timeout=T)
        assert await page.locator("#chart-times svg path.line.k-run").count() == 2  # mean and p95
        assert await page.locator("#chart-times svg circle.dot").count() >= 4
        for chart in ("#chart-finished", "#chart-times"):
            svg = page.locator(f"{chart} svg")
            assert await svg.get_attribute("role") == "img"
            name = await svg.evaluate(
                "s => s.getAttribute('aria-labelledby').split(' ').map(i => document.getElementById(i).textContent)"
            )
            assert name[0] and name[1].startswith("In the last hour"), name
            await page.locator(f"{chart} details summary").click()
            assert await page.locator(f"{chart} details table tbody tr").count() >= 1, "the numbers as a table"
        desc = await page.locator("#chart-finished .chart-desc").text_content()
        assert "1 completed, 1 failed" in desc, desc
        await shot(page, "admin-retried")

        await page.set_viewport_size(PHONE)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px)"
        await shot(page, "admin-phone")
        assert not problems, problems
    finally:
        await context.close()


async def test_a_user_who_is_not_an_operator_gets_404(
    chromium: Any, live: LiveServer, admin_settings: Settings
) -> None:
    token = await make_user(admin_settings, "mallory")
    context, page, _ = await signed_in(chromium, live.url, token)
    try:
        response = await page.goto(f"{live.url}/admin")
        assert response.status == 404
        assert await response.json() == {"error": {"code": "not_found", "message": "No such endpoint: GET /admin"}}
        assert (await page.goto(f"{live.url}/")).status == 200, "signed in: the user's own page still opens"
    finally:
        await context.close()
