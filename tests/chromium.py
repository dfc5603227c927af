"""Debian's chromium under Playwright for the browser tests (never a downloaded browser build)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Browser:
    """Playwright's Browser, with pages that bypass the app's Content-Security-Policy unless asked not to.

    Playwright runs a string predicate (`wait_for_function("...")`) through `eval`, which the page's CSP
    (no 'unsafe-eval') refuses; `page.evaluate` is not affected. Tests that check the page under its real policy
    pass `bypass_csp=False` and wait with `evaluate` (test_browser_security.py)."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser

    def __getattr__(self, name: str) -> Any:
        return getattr(self._browser, name)

    async def new_context(self, **options: Any) -> Any:
        options.setdefault("bypass_csp", True)
        return await self._browser.new_context(**options)

    async def new_page(self, **options: Any) -> Any:
        options.setdefault("bypass_csp", True)
        return await self._browser.new_page(**options)


class OwnContexts:
    """A browser shared by a module, lent to one test: its pages and contexts are new ones (cookies, storage and
    routes of their own), all closed when the test ends, so nothing of one test reaches the next."""

    def __init__(self, browser: Browser) -> None:
        self._browser = browser
        self._contexts: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._browser, name)

    async def new_context(self, **options: Any) -> Any:
        context = await self._browser.new_context(**options)
        self._contexts.append(context)
        return context

    async def new_page(self, **options: Any) -> Any:
        """A page in a new context of its own, as Playwright's `Browser.new_page` makes it."""
        return await (await self.new_context(**options)).new_page()

    async def close(self) -> None:
        while self._contexts:
            with contextlib.suppress(Exception):  # a context a test closed itself
                await self._contexts.pop().close()


@contextlib.asynccontextmanager
async def own_contexts(browser: Browser) -> AsyncIterator[OwnContexts]:
    lent = OwnContexts(browser)
    try:
        yield lent
    finally:
        await lent.close()


@contextlib.asynccontextmanager
async def launch_chromium() -> AsyncIterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium (apt-get install -y chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield Browser(browser)
        finally:
            await browser.close()
