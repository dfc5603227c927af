"""Files and secrets at rest (issue 15.9): the data directory is 0700, the store, its WAL, the secret and the embedded
Redis' files 0600, whatever the umask; an older install is tightened at start; a short SECRET_KEY stops the process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.api.app import create_app
from service.config import Settings, SettingsError
from service.embedded import redis_url_for
from service.store.sqlite import SQLiteJobStore

from .conftest import run_worker, serve, user_client, wait_for_status

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    """A permissive umask, as on many machines: what we create must be private regardless."""
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def data_settings(data: Path, redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=f"sqlite:///{data / 'aijobs.db'}",
        data_dir=data,
        sim_delay=0.1,
        queue_name=f"aijobs:test:{uuid.uuid4().hex[:8]}",
        poll_delay=0.01,
        log_json=False,
    )


def private_tree(root: Path) -> dict[str, int]:
    """Every path under `root` (itself included) that is open to anyone but its owner, with its mode."""
    loose = {".": mode(root)} if mode(root) & 0o077 else {}
    for path in root.rglob("*"):
        if mode(path) & 0o077:
            loose[str(path.relative_to(root))] = mode(path)
    return loose


async def test_a_new_data_dir_and_everything_in_it_is_private(tmp_path: Path) -> None:
    data = tmp_path / "var"
    with umask(0o022), redis_url_for(None, data) as url:  # the embedded Redis, as `aijobs dev` starts it
        s = data_settings(data, url)
        async with serve(create_app(s, redis_url=url)) as live, user_client(live, s, "una") as una, run_worker(s):
            job = (await una.post("/api/jobs", json={"type": "titles", "input": {"text": "at rest"}})).json()
            await wait_for_status(una, job["job_id"], {"completed"})
            r = aioredis.from_url(url)
            try:
                await r.save()  # a dump, beside the append-only files
            finally:
                await r.aclose()
            files = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
            # control: the files that matter exist (the WAL while the store is open)
            assert {"aijobs.db", "aijobs.db-wal", "aijobs.db-shm", "secret_key", "redis/dump.rdb"} <= files, files
            assert any(f.startswith("redis/appendonly") for f in files), files
            assert private_tree(data) == {}
    assert mode(data) == 0o700 and mode(data / "aijobs.db") == 0o600 and mode(data / "secret_key") == 0o600


async def test_an_older_install_left_readable_is_tightened_at_start(tmp_path: Path) -> None:
    data = tmp_path / "var"
    (data / "redis").mkdir(parents=True)
    (data / "secret_key").write_text("s" * 48 + "\n")
    (data / "redis" / "redis.log").write_text("an old log\n")
    for name in ("aijobs.db", "aijobs.db-wal", "aijobs.db-shm"):
        (data / name).touch()
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert private_tree(data)  # control: it starts readable
    with umask(0o022), redis_url_for(None, data) as url:
        s = data_settings(data, url)
        async with serve(create_app(s, redis_url=url)), run_worker(s):
            assert private_tree(data) == {}


@pytest.mark.parametrize("value", ["x", "short-but-not-32-bytes-long"])
def test_a_short_secret_key_is_refused_naming_the_variable_and_the_fix(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SECRET_KEY": value})
    message = str(info.value)
    assert message.startswith("SECRET_KEY must be at least 32 bytes") and "secrets.token_urlsafe(48)" in message
    assert value not in message  # a secret is never echoed
    assert Settings.from_env({"SECRET_KEY": "k" * 32}).secret_key == "k" * 32


def test_the_web_process_stops_at_start_on_a_short_secret_key() -> None:
    env = {**os.environ, "SECRET_KEY": "too-short", "REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:app_from_env", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "aijobs: bad setting: SECRET_KEY must be at least 32 bytes" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "too-short" not in proc.stderr


async def test_opening_the_store_again_keeps_the_locks_of_connections_already_open(tmp_path: Path) -> None:
    """Making the files private must never open them: closing any descriptor of a file drops every POSIX lock the
    process holds on it, SQLite's included. A reader's lock on the WAL must survive a second store opening in the
    same process (as `open_users` does in the web process), or another process may checkpoint under it."""
    path = tmp_path / "jobs.db"
    first = SQLiteJobStore(path)
    await first.open()
    await first.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM jobs").fetchone()  # a read snapshot: a lock in the -shm file
        with contextlib.closing(sqlite3.connect(path)) as writer:
            writer.execute("INSERT INTO users (id, name, token_hash, created_at) VALUES ('u', 'u', 'h', 0)")
            writer.commit()
        again = SQLiteJobStore(path)
        await again.open()
        await again.close()
        checkpoint = (
            "import sqlite3, sys; "
            "print(sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])"
        )
        command = [sys.executable, "-c", checkpoint, str(path)]
        busy = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)
        assert busy.stdout.strip() == "1", f"the reader's lock was lost: {busy.stdout} {busy.stderr}"
        reader.execute("COMMIT")
