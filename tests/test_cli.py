"""The commands a newcomer types, as the README writes them: `scripts/aijobs`, `aijobs dev` (its port check, banner
and embedded Redis), and `users` commands that reach the store and the Redis the running server uses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings, settings_table
from service.embedded import free_port

from .conftest import make_user, until

ROOT = Path(__file__).resolve().parent.parent
SETTING_VARS = {env for env, _default, _doc in settings_table()}


def cli_env(**values: str) -> dict[str, str]:
    """A shell with none of our settings set (a newcomer's), running this checkout's code."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    return {**env, "PYTHONPATH": str(ROOT), "LOG_JSON": "false", "LOG_LEVEL": "WARNING", **values}


async def cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def store_settings(data: Path) -> Settings:
    return Settings(data_dir=data, database_url=f"sqlite:///{data / 'aijobs.db'}")


async def test_scripts_aijobs_runs_the_cli_from_any_directory_reusing_the_venv(tmp_path: Path) -> None:
    """The README's `scripts/aijobs users list` in a new shell, from another directory, with the venv made already."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("scripts/aijobs", "scripts/_venv.sh", "pyproject.toml"):
        shutil.copy2(ROOT / name, checkout / name)
    # A venv that is already installed (its stamp matches pyproject.toml) and refuses any pip run: the script must
    # reuse it (an install here would repoint the suite's shared editable install).
    bin_dir = checkout / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(
        f'#!/bin/sh\ncase "$*" in *"-m pip"*) echo "pip must not run" >&2; exit 99;; esac\nexec {sys.executable} "$@"\n'
    )
    (bin_dir / "aijobs").write_text(f'#!/bin/sh\nexec {sys.executable} -m service.cli "$@"\n')
    for exe in ("python", "aijobs"):
        (bin_dir / exe).chmod(0o755)
    digest = hashlib.sha256((checkout / "pyproject.toml").read_bytes()).hexdigest()  # as _venv.sh's sha256sum
    (checkout / ".venv" / ".aijobs-installed").write_text(digest + "\n")
    data = tmp_path / "data"
    await make_user(store_settings(data), "alice")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = await asyncio.create_subprocess_exec(
        str(checkout / "scripts" / "aijobs"), "users", "list", cwd=elsewhere, env=cli_env(AIJOBS_DATA_DIR=str(data)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split()[-1] == "alice" and b"installing" not in err


async def test_the_cli_from_another_directory_opens_the_checkouts_store_or_none(tmp_path: Path) -> None:
    """Run from elsewhere, the CLI resolves the server's data directory (not ./var), and never makes a new store."""
    shown = await cli("settings", env=cli_env(), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    line = next(row for row in shown.stdout.splitlines() if row.startswith("AIJOBS_DATA_DIR "))
    assert line.split()[1] == str(ROOT / "var")
    empty = tmp_path / "nothing-here"
    made = await cli("users", "create", "bob", env=cli_env(AIJOBS_DATA_DIR=str(empty)), cwd=tmp_path)
    assert made.returncode == 1 and "aij_" not in made.stdout
    assert f"no job store at {empty / 'aijobs.db'}" in made.stderr and "AIJOBS_DATA_DIR" in made.stderr
    assert not (empty / "aijobs.db").exists() and not (tmp_path / "var").exists()


async def test_a_revoke_that_cannot_reach_redis_says_what_to_set(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await make_user(store_settings(data), "carl")
    done = await cli("users", "revoke", "carl", env=cli_env(AIJOBS_DATA_DIR=str(data)), cwd=tmp_path)
    assert done.returncode == 0 and "Revoked" in done.stdout
    assert "Could not reach Redis" in done.stderr and "set REDIS_URL" in done.stderr
    assert "scripts/dev" in done.stderr  # why it found none: no dev on this data directory


async def test_dev_refuses_a_taken_port_before_its_banner(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = await cli("dev", env=cli_env(PORT=str(port), AIJOBS_DATA_DIR=str(tmp_path / "data")))
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr and f"PORT={port + 1} scripts/dev" in done.stderr
    assert "open http" not in done.stdout and not (tmp_path / "data" / "redis.url").exists()


@contextlib.asynccontextmanager
async def running_dev(data: Path, port: int, **extra: str) -> AsyncIterator[list[str]]:
    """`aijobs dev` as `scripts/dev` runs it (embedded Redis, honcho, the Procfile's web and worker); yields its
    output lines as they come, and stops it as a process manager does (SIGTERM: handled as Ctrl-C)."""
    env = cli_env(PORT=str(port), AIJOBS_DATA_DIR=str(data), AIJOBS_SIM_DELAY="0.2", **extra)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "dev", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip())

    reader = asyncio.create_task(read())
    try:
        yield lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.wait_for(reader, 10)


async def test_a_revoke_from_another_shell_reaches_the_embedded_redis_of_dev_at_once(tmp_path: Path) -> None:
    """README: `scripts/dev`, then in a second shell `scripts/aijobs users create alice`, and later `users revoke`:
    the running web process refuses the old token at once (well inside its 30 s token cache)."""
    data, port = tmp_path / "data", free_port()
    async with running_dev(data, port) as output, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get("/healthz")).status_code == 200
            return False

        await until(healthy, timeout=60, what="aijobs dev to serve /healthz")
        banner = "\n".join(output)
        assert f"open http://127.0.0.1:{port}/" in banner and "scripts/aijobs users create NAME" in banner
        url_file = data / "redis.url"
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        assert url_file.read_text().startswith("redis://127.0.0.1:")

        shell = cli_env(AIJOBS_DATA_DIR=str(data))  # a second shell: no REDIS_URL
        made = await cli("users", "create", "alice", env=shell, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        token = next(word for word in made.stdout.split() if word.startswith("aij_"))
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/api/me", headers=bearer)).status_code == 200  # cached by the web process now

        revoked = await cli("users", "revoke", "alice", env=shell, cwd=tmp_path)
        assert revoked.returncode == 0 and "Could not reach Redis" not in revoked.stderr, revoked.stderr

        async def refused() -> bool:
            return (await http.get("/api/me", headers=bearer)).status_code == 401

        await until(refused, timeout=20, what="the revoked token to be refused")
    assert not url_file.exists()  # gone with the dev run: no later CLI is pointed at a dead Redis


async def test_dev_signs_the_page_in_with_a_cookie_that_works_over_plain_http(tmp_path: Path) -> None:
    """`aijobs dev` serves http: it turns COOKIE_SECURE (default on) off, or the demo cookie would never come back."""
    data, port = tmp_path / "data", free_port()
    async with running_dev(data, port) as output, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as browser:

        async def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await browser.get("/healthz")).status_code == 200
            return False

        await until(healthy, timeout=60, what="aijobs dev to serve /healthz")
        assert any("Signed in as the demo user" in line for line in output)
        page = await browser.get("/")
        assert "aijobs_session=" in page.headers["set-cookie"] and "secure" not in page.headers["set-cookie"].lower()
        me = await browser.get("/api/me")  # httpx, like a browser, sends a Secure cookie only over https
        assert me.status_code == 200 and me.json()["user"]["name"] == "demo"


def test_the_readmes_procfile_is_the_procfile() -> None:
    production = (ROOT / "README.md").read_text().split("\n## Production\n", 1)[1]
    quoted = production.split("```\n", 2)[1]
    assert quoted == (ROOT / "Procfile").read_text()


async def test_aijobs_web_caps_websocket_frames_at_ws_max_size(settings: Settings) -> None:
    """The Procfile's `aijobs web` applies WS_MAX_SIZE: a message over WS_MAX_MESSAGE_BYTES gets an error reply, one
    over WS_MAX_SIZE closes the connection (1009) instead of being read into memory (uvicorn's default: 16 MiB)."""
    import websockets

    assert settings.redis_url
    token = await make_user(settings, "wes")
    port = free_port()
    env = cli_env(
        REDIS_URL=settings.redis_url, DATABASE_URL=settings.database_url, AIJOBS_DATA_DIR=str(settings.data_dir),
        AIJOBS_QUEUE=settings.queue_name, PORT=str(port), WS_MAX_SIZE="20000",
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "web", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def healthy() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            await until(healthy, timeout=30, what="aijobs web to serve /healthz")
        url = f"ws://127.0.0.1:{port}/api/ws"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send("x" * 10_000)  # over WS_MAX_MESSAGE_BYTES (4096), under WS_MAX_SIZE
            assert '"message_too_large"' in await asyncio.wait_for(ws.recv(), 10)
            await ws.send("x" * 30_000)  # over WS_MAX_SIZE
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("command", ["web", "worker"])
async def test_web_and_worker_without_redis_say_what_to_run(command: str, tmp_path: Path) -> None:
    done = await cli(command, env=cli_env(PORT=str(free_port()), AIJOBS_DATA_DIR=str(tmp_path)))
    assert done.returncode == 1 and "REDIS_URL is not set" in done.stderr and "scripts/dev" in done.stderr
