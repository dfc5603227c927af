"""The front end's TypeScript: static/api-types.d.ts is what the live contract generates, the hand-written .d.ts files
declare every export of their modules, and tsc (pinned in tests/ts, installed by scripts/test) compiles them, a
typed client (tests/ts/usage.tsx), and the running server's real answers written out as typed constants: a job,
a page of history, stats, who-am-I, health, an API error, and every SSE event kind of a job that queued behind
another, streamed text, completed, and of one that failed. An answer the contract's types do not admit (a field
missing, a wrong type, a field the contract closes out) fails the compile."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.embedded import EmbeddedRedis

from .conftest import LiveServer, fast_settings, make_user, serve_with_worker
from .sse import SseEvent, read_events

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
TS = ROOT / "tests" / "ts"
TSC = TS / "node_modules" / ".bin" / "tsc"
TERMINAL = {"completed", "failed", "cancelled", "expired"}


def api_types() -> Any:
    spec = importlib.util.spec_from_file_location("api_types", ROOT / "scripts" / "api_types.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need_tsc() -> Path:
    if not TSC.exists() or not shutil.which("node"):
        pytest.fail("tsc is missing: scripts/test installs it (node and npm, then `npm ci` in tests/ts)")
    return TSC


@pytest.fixture(scope="module")
def types_settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # one job at a time, so a second one queues and gets `position` events
    base = fast_settings(redis_server, tmp_path_factory.mktemp("types"))
    return dataclasses.replace(base, worker_concurrency=1, position_push_seconds=0.1)


@pytest.fixture(scope="module")
async def live(types_settings: Settings) -> AsyncIterator[LiveServer]:
    async with serve_with_worker(types_settings) as server:
        yield server


@pytest.fixture(scope="module")
async def token(types_settings: Settings) -> str:
    return await make_user(types_settings, "tess")


@pytest.fixture
async def client(live: LiveServer, token: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=live.url, timeout=20, headers=headers) as c:
        yield c


async def test_api_types_are_what_the_live_contract_generates(client: httpx.AsyncClient) -> None:
    contract = (await client.get("/api/openapi.json")).json()
    generated = api_types().render(contract)
    committed = (STATIC / "api-types.d.ts").read_text()
    assert generated == committed, "static/api-types.d.ts is out of date with the contract: run scripts/api-types"
    for name in ("Job", "HistoryJob", "History", "Stats", "ApiError", "SubmitJobRequest", "JobEvent", "Operations"):
        assert re.search(rf"^export (interface|type) {name}\b", committed, re.M), name


def test_the_generator_refuses_what_it_cannot_map() -> None:
    """A contract change it does not understand fails loudly instead of becoming `unknown`."""
    gen = api_types()
    contract = gen.built_contract()
    contract["components"]["schemas"]["Job"]["properties"]["extra"] = {"allOf": [{"type": "string"}]}
    with pytest.raises(SystemExit, match="allOf"):
        gen.render(contract)


def exports(path: Path) -> set[str]:
    text = path.read_text()
    if path.suffix == ".ts":
        return set(re.findall(r"^export (?:declare )?(?:async )?(?:function|class|const) (\w+)", text, re.M))
    names = set(re.findall(r"^export (?:async )?(?:function|class|const) (\w+)", text, re.M))
    return names


@pytest.mark.parametrize("module", ["jobs-client", "react/use-job"])
def test_each_declaration_file_declares_exactly_its_modules_exports(module: str) -> None:
    js, dts = exports(STATIC / f"{module}.js"), exports(STATIC / f"{module}.d.ts")
    assert js and js == dts, f"{module}: exported {sorted(js)}, declared {sorted(dts)}"


def test_vendored_react_is_the_pinned_npm_build() -> None:
    """static/vendor holds npm's React 18.3.1 UMD files byte for byte (the versions tests/ts pins and locks)."""
    need_tsc()
    lock = json.loads((TS / "package-lock.json").read_text())["packages"]
    for package, name in (("react", "react"), ("react-dom", "react-dom")):
        assert lock[f"node_modules/{package}"]["version"] == "18.3.1"
        npm = TS / "node_modules" / package / "umd" / f"{name}.production.min.js"
        assert (STATIC / "vendor" / npm.name).read_bytes() == npm.read_bytes(), npm.name


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/jobs", json=body)
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    return job


async def wait_status(client: httpx.AsyncClient, job_id: str, statuses: set[str]) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            job: dict[str, Any] = (await client.get(f"/api/jobs/{job_id}")).json()
            if job["status"] in statuses:
                return job
            await asyncio.sleep(0.05)


async def stream(client: httpx.AsyncClient, job_id: str) -> list[SseEvent]:
    """Every event of a job's stream until the server closes it after the last."""
    out: list[SseEvent] = []
    async with asyncio.timeout(30), client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        async for event in read_events(response):
            out.append(event)
    return out


def sse_item(event: SseEvent) -> dict[str, Any]:
    item = {"event": event.event, "data": event.data}
    return item if event.id is None else {**item, "id": event.id}


async def test_tsc_compiles_the_declarations_a_typed_client_and_the_servers_real_answers(
    client: httpx.AsyncClient, live: LiveServer, token: str, tmp_path: Path
) -> None:
    tsc = need_tsc()
    ahead = await submit(client, {"type": "titles", "input": {"text": "ahead [[slow:1]]"}})
    await wait_status(client, ahead["job_id"], {"processing"})
    message = {"role": "user", "content": "hi [[slow:0.5]]"}
    chat = await submit(client, {"type": "chat", "input": {"messages": [message]}})
    failing = await submit(client, {"type": "summary", "input": {"text": "no [[fail:400]]"}, "priority": 9})
    chat_events, failed_events = await asyncio.gather(stream(client, chat["job_id"]), stream(client, failing["job_id"]))
    kinds = {e.event for e in chat_events}
    assert kinds == {"snapshot", "position", "status", "progress", "delta"}, kinds
    assert failed_events[-1].data["status"] == "failed" and failed_events[-1].data["error"]["code"]
    async with httpx.AsyncClient(base_url=live.url, timeout=10, headers={"Origin": live.url}) as browser:
        session = await browser.post("/api/session", json={"token": token})
        assert session.status_code == 200, session.text
    answers = {
        "submitted: Job": chat,
        "job: Job": (await client.get(f"/api/jobs/{chat['job_id']}")).json(),
        "failedJob: Job": (await client.get(f"/api/jobs/{failing['job_id']}")).json(),
        "history: History": (await client.get("/api/jobs?limit=5")).json(),
        "stats: Stats": (await client.get("/api/stats")).json(),
        "me: MeResponse": (await client.get("/api/me")).json(),
        "signedIn: SignInResponse": session.json(),
        "health: HealthResponse": (await client.get("/healthz")).json(),
        "notFound: ApiError": (await client.get("/api/jobs/nope")).json(),
        'chatStream: Operations["jobEvents"]["events"][]': [sse_item(e) for e in chat_events],
        'failedStream: Operations["jobEvents"]["events"][]': [sse_item(e) for e in failed_events],
        "chatEvents: JobEvent[]": [e.data for e in chat_events],
    }
    assert answers["history: History"]["jobs"] and answers["notFound: ApiError"]["error"]["code"] == "job_not_found"
    types = "ApiError, History, HealthResponse, Job, JobEvent, MeResponse, Operations, SignInResponse, Stats"
    lines = [f'import type {{ {types} }} from "{STATIC / "api-types"}";\n']
    lines += [f"export const {name} = {json.dumps(value, indent=1)};\n" for name, value in answers.items()]
    (tmp_path / "live.ts").write_text("".join(lines))
    files = [str(STATIC / "api-types.d.ts"), str(STATIC / "jobs-client.d.ts"), str(STATIC / "react/use-job.d.ts")]
    config = {"extends": str(TS / "tsconfig.json"), "files": [*files, str(TS / "usage.tsx"), "live.ts"]}
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    done = await asyncio.to_thread(
        subprocess.run, [str(tsc), "-p", str(tmp_path / "tsconfig.json")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"tsc:\n{done.stdout}{done.stderr}"


async def test_tsc_refuses_an_answer_the_contract_does_not_admit(tmp_path: Path) -> None:
    """The compile above could fail: an extra field on a closed object, or a wrong type, is an error."""
    tsc = need_tsc()
    bad = {"kind": "delta", "job_id": "j", "seq": 1, "ts": 0, "text": "x", "surprise": True}
    progress = {"kind": "progress", "job_id": "j", "seq": "2", "ts": 0, "percentage": 5, "current_step": None}
    source = (
        f'import type {{ JobEvent }} from "{STATIC / "api-types"}";\n'
        f"export const a: JobEvent = {json.dumps(bad)};\nexport const b: JobEvent = {json.dumps(progress)};\n"
    )
    (tmp_path / "bad.ts").write_text(source)
    config = {"extends": str(TS / "tsconfig.json"), "files": [str(STATIC / "api-types.d.ts"), "bad.ts"]}
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    done = await asyncio.to_thread(
        subprocess.run, [str(tsc), "-p", str(tmp_path / "tsconfig.json")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "bad.ts(2," in done.stdout and "surprise" in done.stdout, done.stdout
    assert "bad.ts(3," in done.stdout, done.stdout
