"""jobs-client.js in real headless Chromium (Debian's package, driven by Playwright): transports, fallback, resume."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings

from .chromium import own_contexts
from .conftest import LiveServer
from .procs import free_port, web_process
from .sse import collect

pytestmark = pytest.mark.usefixtures("worker")


WATCH_JS = """
async ({text, transports}) => {
  const m = await import('/static/jobs-client.js');
  window.seen = []; window.transports = []; window.states = [];
  const job = await m.createJob('titles', {text});
  window.jobId = job.job_id;
  const opts = {onEvent: (e) => window.seen.push(e), onTransport: (t) => window.transports.push(t),
                onConnection: (s, t) => window.states.push(`${s}:${t}`)};
  if (transports) opts.transports = transports;
  window.result = m.watchJob(job.job_id, opts).then((r) => (window.done = r));
  return job.job_id;
}
"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """As `aijobs dev` runs it: opening / signs the browser in as the demo user, so fetch/EventSource are authed."""
    return dataclasses.replace(settings, demo_login=True)


@pytest.fixture
async def client(web: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """Signed in as the demo user, like the page (POST /api/session with an empty body), to read its jobs' logs."""
    async with httpx.AsyncClient(base_url=web.url, timeout=10, headers={"Origin": web.url}) as c:
        r = await c.post("/api/session", json={})
        assert r.status_code == 200, r.text
        yield c


@pytest.fixture
async def browser(chromium: Any) -> AsyncIterator[Any]:
    async with own_contexts(chromium) as b:
        yield b


async def wait_js(page: Any, expr: str, timeout: float = 20) -> Any:
    await page.wait_for_function(expr, timeout=timeout * 1000)
    return await page.evaluate(expr)


async def full_log(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    log, _ = await collect(client, f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "0"})
    return [e.data for e in log]


def assert_once_in_order(seen: list[dict[str, Any]], log: list[dict[str, Any]]) -> None:
    """Once each, in order, nothing missed; the gateway may coalesce progress (latest wins) and merge deltas."""
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(set(seqs)), f"in order, each once: {seqs}"
    start = seqs[0] if seen[0]["kind"] == "snapshot" else 0
    after = [e for e in log if e["seq"] > start]
    seen_after = [e for e in seen if e["seq"] > start]
    assert set(seqs[1:] if start else seqs) <= {e["seq"] for e in after}, "nothing the job did not say"

    def of(kind: str, events: list[dict[str, Any]]) -> list[Any]:
        return [e["seq"] for e in events if e["kind"] == kind]

    assert of("status", seen_after) == of("status", after), "every state change, the terminal one included"

    def text(events: list[dict[str, Any]]) -> str:
        return "".join(e.get("text", "") for e in events if e["kind"] == "delta")

    assert text(seen_after) == text(after), "every piece of streamed text, once"
    assert seen[-1]["seq"] == log[-1]["seq"], "ends on the job's last event"


async def test_page_submits_and_shows_result(browser: Any, web: LiveServer) -> None:
    page = await browser.new_page()
    await page.goto(web.url + "/")
    await page.click("button[type=submit]")
    await page.wait_for_selector(".job .result li", timeout=20_000)
    assert await page.locator(".job .result li").count() == 5
    assert await page.get_attribute(".job", "data-status") == "completed"
    await page.screenshot(path=os.environ.get("AIJOBS_SCREENSHOT", "/tmp/aijobs-page.png"))


async def test_sse_blocked_falls_back_to_websocket(browser: Any, web: LiveServer, client: httpx.AsyncClient) -> None:
    page = await browser.new_page()
    await page.route("**/events*", lambda route: route.abort())
    await page.goto(web.url + "/")
    job_id = await page.evaluate(WATCH_JS, {"text": "fallback [[slow:1]]", "transports": None})
    result = await wait_js(page, "window.done")
    assert len(result["titles"]) == 5
    transports = await page.evaluate("window.transports")
    assert transports[0] == "sse" and "ws" in transports and "poll" not in transports
    assert_once_in_order(await page.evaluate("window.seen"), await full_log(client, job_id))


async def test_sse_and_websocket_blocked_falls_back_to_polling(browser: Any, web: LiveServer) -> None:
    page = await browser.new_page()
    await page.route("**/events*", lambda route: route.abort())
    await page.route_web_socket("**/api/ws", lambda ws: ws.close())
    await page.goto(web.url + "/")
    await page.evaluate(WATCH_JS, {"text": "polling [[slow:1]]", "transports": None})
    result = await wait_js(page, "window.done", timeout=30)
    assert len(result["titles"]) == 5
    assert (await page.evaluate("window.transports"))[-1] == "poll"


class CuttableProxy:
    """A TCP proxy in front of the web server whose connections can be cut and refused, like a network drop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.up = True
        self.pipes: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.cuts = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.pipes -= {writer, up_writer}

    def cut(self) -> None:
        self.up = False
        self.cuts += 1
        for w in list(self.pipes):
            w.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_network_cut_mid_job_every_step_once_in_order(
    browser: Any, web: LiveServer, client: httpx.AsyncClient, transport: str
) -> None:
    proxy = CuttableProxy(int(web.url.rsplit(":", 1)[1]))
    port = await proxy.start()
    try:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{port}/")
        job_id = await page.evaluate(WATCH_JS, {"text": "cut me [[slow:2]]", "transports": [transport, "poll"]})
        await page.wait_for_function("window.seen.length >= 3", timeout=15_000)
        proxy.cut()  # every open connection dropped; new ones refused
        await asyncio.sleep(1.0)
        proxy.up = True
        result = await wait_js(page, "window.done", timeout=30)
        assert len(result["titles"]) == 5
        seen = await page.evaluate("window.seen")
        assert_once_in_order(seen, await full_log(client, job_id))
        transports = await page.evaluate("window.transports")
        assert transports.count(transport) >= 2, f"reconnected and resumed: {transports}"
        assert "poll" not in transports, "a cut is not a block: the client resumed on the same transport"
    finally:
        await proxy.close()


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_web_process_restarted_mid_job_every_step_once_in_order(
    browser: Any, settings: Settings, client: httpx.AsyncClient, tmp_path: Path, transport: str
) -> None:
    """The web process the tab talks to is SIGKILLed mid-job and started again on the same port: the tab resumes
    where it was (its cookie still good), sees every step once and in order, and ends on the result."""
    port, log = free_port(), tmp_path / "web.log"
    async with web_process(settings, log, port=port, AIJOBS_DEMO_LOGIN="true") as web:
        page = await browser.new_page()
        await page.goto(web.url + "/")
        job_id = await page.evaluate(WATCH_JS, {"text": "restart me [[slow:3]]", "transports": [transport, "poll"]})
        await page.wait_for_function("window.seen.length >= 3", timeout=15_000)
        web.proc.kill()  # no goodbye to any client
        await asyncio.to_thread(web.proc.wait, 10)
    before = len(await page.evaluate("window.seen"))
    async with web_process(settings, log, port=port, AIJOBS_DEMO_LOGIN="true"):
        result = await wait_js(page, "window.done", timeout=30)
    assert len(result["titles"]) == 5
    seen = await page.evaluate("window.seen")
    assert len(seen) > before, "events after the restart arrived"
    assert_once_in_order(seen, await full_log(client, job_id))
    transports = await page.evaluate("window.transports")
    assert transports.count(transport) >= 2, f"reconnected and resumed: {transports}"
    states = await page.evaluate("window.states")
    lost = states.index(f"reconnecting:{transport}")
    assert states[0] == f"live:{transport}" and f"live:{transport}" in states[lost:], f"told the page: {states}"
