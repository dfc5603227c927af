"""`aijobs migrate` as an operator runs it, and processes that refuse a schema that is not their code's."""

from __future__ import annotations

from pathlib import Path

import psycopg

from .postgres import PostgresForTests
from .test_cli import cli, cli_env

REDIS = "redis://127.0.0.1:1/0"  # never reached: the schema check comes first


async def test_postgres_is_migrated_by_the_command_only_and_processes_say_what_to_run(
    postgres: PostgresForTests,
) -> None:
    url = postgres.schema_url().replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    env = cli_env(DATABASE_URL=url, REDIS_URL=REDIS)
    for command in ("worker", "web"):
        refused = await cli(command, env=env)
        assert refused.returncode == 1, refused
        assert "schema is at version 0" in refused.stderr and "run `aijobs migrate`" in refused.stderr
    users = await cli("users", "create", "ops", env=env)
    assert users.returncode == 1 and "run `aijobs migrate`" in users.stderr, users

    first = await cli("migrate", env=env)
    assert first.returncode == 0 and "migrated from version 0 to" in first.stdout, first
    assert "hunter2" not in first.stdout and "postgres:***@" in first.stdout, "the password is never shown"
    again = await cli("migrate", env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again
    created = await cli("users", "create", "ops", env=env)
    assert created.returncode == 0 and "Created user ops" in created.stdout, created

    with psycopg.connect(url, autocommit=True) as conn:  # a newer release migrated it since
        conn.execute("UPDATE aijobs_schema SET version = version + 1")
    newer = await cli("worker", env=env)
    assert newer.returncode == 1 and "newer than this code's" in newer.stderr, newer
    refused = await cli("migrate", env=env)
    assert refused.returncode == 1 and "newer than this code's" in refused.stderr, refused


async def test_sqlite_migrates_itself_and_the_command_reports_it(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.db'}")
    first = await cli("migrate", env=env)
    assert first.returncode == 0 and "migrated from version 0 to" in first.stdout, first
    again = await cli("migrate", env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again
