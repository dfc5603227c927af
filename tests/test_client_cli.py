"""`aijobs submit|jobs|stats` as a person and a script run them: real processes against a real server and worker,
with a token. The exit codes are the contract for scripts: 0 completed, 1 failed, 2 cancelled or expired, 3 usage.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from pathlib import Path

import httpx
import pytest

from service.config import Settings

from .conftest import LiveServer, make_user

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
async def env(web: LiveServer, settings: Settings) -> dict[str, str]:
    token = await make_user(settings, "cli-user")
    return {**os.environ, "AIJOBS_URL": web.url, "AIJOBS_TOKEN": token, "COLUMNS": "100"}


async def aijobs(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_submit_watch_prints_the_result_and_exits_0(env: dict[str, str]) -> None:
    code, out, err = await aijobs(env, "submit", "titles", "--input", "Queues for slow AI calls", "--watch")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith(f"{i}. ") for i, line in enumerate(lines, 1)), out


async def test_json_watch_is_one_line_per_event_then_the_job(env: dict[str, str]) -> None:
    code, out, err = await aijobs(env, "submit", "chat", "-i", "hello [[slow:1]]", "--watch", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    events, job = lines[:-1], lines[-1]
    seqs = [e["seq"] for e in events if "seq" in e]
    assert seqs == sorted(set(seqs)) and len(seqs) >= 3, seqs  # once each, in order
    assert any(e["kind"] == "delta" for e in events)
    assert events[-1]["kind"] == "status" and events[-1]["status"] == "completed"
    assert job["status"] == "completed" and job["result"]["reply"]


async def test_exit_codes_failed_cancelled_and_usage(env: dict[str, str], web: LiveServer) -> None:
    code, out, _ = await aijobs(env, "submit", "titles", "-i", "no [[fail:400]]", "--watch")
    assert code == 1 and out.startswith("failed:"), out

    code, out, _ = await aijobs(env, "submit", "titles", "-i", "long [[slow:20]]", "--json")
    assert code == 0
    job_id = json.loads(out)["job_id"]
    async with httpx.AsyncClient(base_url=web.url, headers={"Authorization": f"Bearer {env['AIJOBS_TOKEN']}"}) as c:
        deadline = asyncio.get_running_loop().time() + 10
        while (await c.get(f"/api/jobs/{job_id}")).json()["status"] != "processing":
            assert asyncio.get_running_loop().time() < deadline, "the job never started"
            await asyncio.sleep(0.05)
    code, out, _ = await aijobs(env, "jobs", "cancel", job_id)
    assert code == 0 and out.split() == [job_id, "cancelled"]
    code, out, _ = await aijobs(env, "jobs", "watch", job_id)
    assert code == 2 and "cancelled" in out

    code, _, err = await aijobs(env, "submit", "titles", "--input", "")
    assert code == 3 and "invalid_input" in err, err
    code, _, err = await aijobs(env, "submit", "titles", "--frobnicate")
    assert code == 3 and "unrecognized arguments" in err
    code, _, err = await aijobs({**env, "AIJOBS_TOKEN": ""}, "stats")
    assert code == 3 and "AIJOBS_TOKEN" in err
    code, _, err = await aijobs({**env, "AIJOBS_TOKEN": "aij_wrong"}, "stats")
    assert code == 1 and "unauthenticated" in err
    code, _, err = await aijobs(env, "jobs", "show", "no-such-job")
    assert code == 1 and "job_not_found" in err


async def test_jobs_ls_show_and_stats(env: dict[str, str]) -> None:
    code, out, err = await aijobs(env, "submit", "summary", "--set", "text=Short text to sum up.", "--watch", "--json")
    assert code == 0, err
    job = json.loads(out.strip().splitlines()[-1])
    code, out, _ = await aijobs(env, "jobs", "ls", "--json", "--limit", "5")
    page = json.loads(out)
    assert code == 0 and page["jobs"][0]["job_id"] == job["job_id"]
    code, out, _ = await aijobs(env, "jobs", "show", job["job_id"])
    assert code == 0 and "completed" in out and job["result"]["summary"] in out
    code, out, _ = await aijobs(env, "stats", "--json")
    assert code == 0 and json.loads(out)["user"]["jobs"] >= 1
    code, out, _ = await aijobs(env, "stats")
    assert code == 0 and out.startswith("queue ") and "\nyou " in out


async def test_the_progress_bar_is_drawn_in_a_terminal(env: dict[str, str]) -> None:
    """On a terminal (a pty here) `--watch` draws rich's live bar with the step and percentage, then the result."""
    main, child = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "submit", "titles", "-i", "Bars in terminals [[slow:2]]", "--watch",
        cwd=ROOT, env={**env, "TERM": "xterm-256color"}, stdin=child, stdout=child, stderr=child,
    )  # fmt: skip
    os.close(child)
    screen = bytearray()
    loop = asyncio.get_running_loop()

    def read() -> bytes:
        try:
            return os.read(main, 65536)
        except OSError:  # the child closed its end
            return b""

    while chunk := await loop.run_in_executor(None, read):
        screen += chunk
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    os.close(main)
    text = screen.decode(errors="replace")
    assert "━" in text and "%" in text, text[-2000:]  # the bar, drawn
    assert "Generating titles" in text  # the current step beside it
    assert "completed" in text and "5. " in text  # then the result
