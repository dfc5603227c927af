"""Real worker processes for the crash tests: `python -m service.cli worker` with the test's Redis and SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent

FAST_LEASES = {"LEASE_SECONDS": "2", "HEARTBEAT_SECONDS": "0.5", "SWEEP_SECONDS": "1", "SHUTDOWN_GRACE": "1"}


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        assert settings.redis_url
        values = {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "AIJOBS_QUEUE": settings.queue_name,
            "AIJOBS_SIM_DELAY": str(settings.sim_delay),
            "WORKER_POLL_DELAY": "0.02",
            "LOG_JSON": "false",
            "LOG_LEVEL": "INFO",
            "RETRY_BASE": "0.2",
            "RETRY_CAP": "1",
            **FAST_LEASES,
            **env,
        }
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            cwd=ROOT,
            env={**os.environ, **values},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_exit(self, timeout: float = 30) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.proc.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"worker {self.pid} did not exit; log:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def workers(settings: Settings, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """A list to spawn workers into; every one is killed at the end, whatever happened."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for w in started:
            w.stop()


def spawn(started: list[WorkerProcess], settings: Settings, tmp_path: Path, **env: str) -> WorkerProcess:
    w = WorkerProcess(settings, tmp_path / f"worker{len(started)}.log", **env)
    started.append(w)
    return w


def store_sql(settings: Settings, sql: str, params: tuple = ()) -> list[dict]:
    """One statement (`?` placeholders) straight on the test's store, SQLite or PostgreSQL, committed; its rows."""
    if settings.uses_postgres:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []
    with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as db, db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql, params).fetchall()]


def store_row(settings: Settings, job_id: str) -> dict:
    """The job's row straight from the store: what the API never shows (worker id, lease)."""
    return store_sql(settings, "SELECT * FROM jobs WHERE id = ?", (job_id,))[0]


def pid_of(row: dict) -> int | None:
    """The pid inside a worker id (`host:pid:suffix`)."""
    return int(row["worker_id"].split(":")[1]) if row.get("worker_id") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class WebProcess:
    url: str
    proc: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def web_process(
    settings: Settings, log: Path, *, port: int | None = None, **env: str
) -> AsyncIterator[WebProcess]:
    """`uvicorn --factory service.api.app:app_from_env` as its own process, configured only by environment.

    `port` lets a test start a new one where a killed one was (a restart)."""
    assert settings.redis_url
    port = port or free_port()
    values = {
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "PORT": str(port),
        "AIJOBS_QUEUE": settings.queue_name,
        "AIJOBS_DATA_DIR": str(settings.data_dir),  # the same secret key as the test's own app and worker
        "SSE_PING_SECONDS": "1",
        "LOG_JSON": "false",
        "COOKIE_SECURE": "false",  # plain http, as `aijobs dev`
        **env,
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:app_from_env"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 (starting it is quick; the wait below is async)
            cmd, cwd=ROOT, env={**os.environ, **values}, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = asyncio.get_running_loop().time() + 60  # a loaded machine takes seconds to start Python
        async with httpx.AsyncClient(timeout=2) as c:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"web process exited: {log.read_text()[-3000:]}")  # noqa: ASYNC240
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(url + "/healthz")).status_code == 200:
                        break
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("web process did not become healthy")
                await asyncio.sleep(0.05)
        yield WebProcess(url, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
