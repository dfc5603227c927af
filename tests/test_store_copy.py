"""`aijobs store copy`: a SQLite store with jobs in every status moves to PostgreSQL whole, resumably.

Everything is read back through the PostgreSQL store's public methods and compared with the same calls on the
SQLite source: jobs, history pages, stats, queue positions, tokens, signed-out sessions, idempotency keys, and the
sealed provider key, which must still open under the same secret (it is copied as ciphertext).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import service.store.copy as store_copy
from service.cli import main
from service.config import Settings
from service.crypto import KeyBox, SecretBox
from service.models import Job, JobError, JobStatus
from service.store import (
    JobStore,
    job_queries,
    job_secrets,
    open_store,
    operator_log,
    user_store,
    webhook_outbox,
    webhook_secrets,
)
from service.store.queries import HistoryFilter

from .postgres import PostgresForTests, migrated_schema_url

SECRET = b"s" * 32
ERROR = JobError(message="provider down", code="provider_error", retryable=True)


def new_job(user: str, **kw: Any) -> Job:
    return Job(id=uuid.uuid4().hex, user_id=user, type="summary", input={"text": "x"}, **kw)


async def build_source(path: Path) -> dict[str, Any]:
    """Users, a sealed key, a signed-out session, an idempotency key, and jobs in every status."""
    store = open_store(Settings(database_url=f"sqlite:///{path}"))
    await store.open()
    try:
        users = user_store(store)
        alice, token = await users.create("alice")
        bob = await users.get_or_create("bob")
        t = time.time()
        queued = [await store.create(new_job(alice.id, priority=p, created_at=t + i)) for i, p in enumerate((5, 9, 1))]
        queued.append(await store.create(new_job(bob.id, created_at=t + 5)))
        running = await store.create(new_job(alice.id, own_provider_key=True))
        assert await store.claim(running.id, worker_id="w1", token="lease-1", lease_seconds=600) is not None
        await store.progress(running.id, "lease-1", percentage=40, step="Thinking", append_output="Hal")
        await job_secrets(store).put(
            running.id, alice.id, KeyBox(SECRET).seal("sk-alice", user_id=alice.id, job_id=running.id)
        )
        done = await store.create(
            new_job(alice.id, webhook={"url": "https://hooks.example/in", "events": ["completed"]})
        )
        await store.claim(done.id, worker_id="w1", token="lease-2")
        await store.finish(
            done.id,
            "lease-2",
            status=JobStatus.COMPLETED,
            result={"summary": "short"},
            model="gpt-x",
            usage={"prompt_tokens": 12, "completion_tokens": 3},
            record={"attempt": 1, "outcome": "completed"},
        )
        failed = await store.create(new_job(bob.id, max_attempts=2))
        await store.claim(failed.id, worker_id="w1", token="lease-3", ticket=1)
        await store.requeue(failed.id, "lease-3", error=ERROR, step="Retrying", record={"attempt": 1})
        again = await store.get(failed.id)
        assert again is not None
        await store.claim(failed.id, worker_id="w2", token="lease-4", ticket=again.seq)
        await store.finish(failed.id, "lease-4", status=JobStatus.FAILED, error=ERROR, record={"attempt": 2})
        cancelled = await store.create(new_job(alice.id))
        assert await store.cancel_queued(cancelled.id, alice.id) is not None
        expired = await store.create(new_job(bob.id, expires_at=t - 1))
        assert [j.id for j in await store.expire_overdue()] == [expired.id]
        await users.sign_out("session-1", alice.id, t + 3600)
        await webhook_secrets(store, SecretBox(SECRET), overlap=60).get(alice.id)
        await users.set_operator("bob", True)
        await operator_log(store).record(
            operator_id=bob.id, operator_name="bob", action="retry", job_id=failed.id, job_user_id=bob.id
        )
        assert await store.idempotency_put(alice.id, "key-1", "hash-1", queued[0].id, since=t - 60)
        statuses = {(await store.get(j.id)).status for j in [*queued, running, done, failed, cancelled, expired]}  # type: ignore[union-attr]
        assert statuses == set(JobStatus), "every status is in the source"
        return {"alice": alice, "bob": bob, "token": token, "queued": queued, "running": running, "done": done, "t": t}
    finally:
        await store.close()


async def snapshot(url: str, s: dict[str, Any]) -> dict[str, Any]:
    """What a store answers through its public methods, comparable between the two."""
    store: JobStore = open_store(Settings(database_url=url))
    await store.open()
    try:
        users, queries = user_store(store), job_queries(store)
        out: dict[str, Any] = {}
        for user in (s["alice"], s["bob"]):
            pages, after = [], None
            while True:
                jobs, more = await queries.history(HistoryFilter(user_id=user.id), limit=2, after=after)
                pages.append(jobs)
                if not more:
                    break
                after = (jobs[-1].created_at, jobs[-1].id)
            out[f"history {user.name}"] = pages
            out[f"stats {user.name}"] = await queries.counts_by_status(user.id)
            out[f"active {user.name}"] = await queries.count_active(user.id)
            out[f"usage {user.name}"] = sorted(
                await queries.usage_by_model(HistoryFilter(user_id=user.id)), key=lambda r: r[0] or ""
            )  # no order of its own
            out[f"user {user.name}"] = await users.by_id(user.id)
        out["stats"] = await queries.counts_by_status()
        out["positions"] = {
            i: r[1] for i, r in (await store.queued_ranked({j.id: j.user_id for j in s["queued"]})).items()
        }
        out["ahead"] = [await store.queue_ahead(j) for j in s["queued"]]
        out["by token"] = await users.by_token(s["token"])
        out["operators"] = [(u.name, u.operator) for u in await users.list()]
        out["operator actions"] = await operator_log(store).recent()
        out["signed out"] = (await users.signed_out("session-1"), await users.signed_out("session-2"))
        out["idempotency"] = await store.idempotency_get(s["alice"].id, "key-1", since=0)
        sealed = await job_secrets(store).get(s["running"].id)
        assert sealed is not None
        out["sealed key"] = KeyBox(SECRET).open(sealed, user_id=s["alice"].id, job_id=s["running"].id)
        out["running"] = await store.get(s["running"].id)
        out["deliveries"] = await webhook_outbox(store).for_job(s["done"].id)
        out["webhook secret"] = (await webhook_secrets(store, SecretBox(SECRET), overlap=60).get(s["alice"].id)).secret
        return out
    finally:
        await store.close()


def copy(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str]:
    try:
        code: int | str | None = main(["store", "copy", *args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    said = out.out + out.err + (code if isinstance(code, str) else "")  # a SystemExit message goes to stderr
    return code, said


async def test_a_store_with_jobs_in_every_status_moves_whole_and_a_second_run_adds_nothing(
    tmp_path: Path, postgres: PostgresForTests, capsys: pytest.CaptureFixture[str]
) -> None:
    s = await build_source(tmp_path / "aijobs.db")
    src, dst = f"sqlite:///{tmp_path / 'aijobs.db'}", migrated_schema_url(postgres)
    code, said = copy(capsys, src, dst)
    assert code == 0, said
    assert "jobs: 9 copied, 0 already there (9 in the source)" in said, said
    assert "users: 2 copied" in said and "job_secrets: 1 copied" in said, said
    assert "signed_out_sessions: 1 copied" in said and "idempotency_keys: 1 copied" in said, said
    assert "webhook_secrets: 1 copied" in said and "webhook_deliveries: 1 copied" in said, said
    assert "operator_actions: 1 copied" in said, said

    before, after = await snapshot(src, s), await snapshot(dst, s)
    assert after == before
    assert after["by token"] == s["alice"] and after["sealed key"] == "sk-alice"
    assert after["operators"] == [("alice", False), ("bob", True)] and len(after["operator actions"]) == 1
    assert after["signed out"] == (True, False) and after["idempotency"] == ("hash-1", s["queued"][0].id)
    assert after["active alice"] == 4 and after["active bob"] == 1, "the per-user caps count the copied jobs"
    assert sorted(after["positions"].values()) == [0, 1, 2, 3]
    assert [d.event for d in after["deliveries"]] == ["job.completed"] and after["webhook secret"].startswith("whsec_")
    running = after["running"]
    assert running.lease_token == "lease-1" and running.partial_output == "Hal" and running.own_provider_key

    code, said = copy(capsys, src, dst)
    assert code == 0, said
    assert "jobs: 0 copied, 9 already there" in said and "Nothing new to copy" in said, said
    assert await snapshot(dst, s) == before, "a second run changes nothing"


async def test_an_interrupted_copy_run_again_ends_in_the_same_state(
    tmp_path: Path, postgres: PostgresForTests, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await build_source(tmp_path / "aijobs.db")
    src, dst = f"sqlite:///{tmp_path / 'aijobs.db'}", migrated_schema_url(postgres)
    batches = []
    real = store_copy.insert_batch

    def cut_after_first_jobs_batch(conn: Any, sql: str, rows: Any) -> int:
        if "INSERT INTO jobs" in sql:
            batches.append(len(rows))
            if len(batches) == 2:
                raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(conn, sql, rows)

    monkeypatch.setattr(store_copy, "insert_batch", cut_after_first_jobs_batch)
    code, said = copy(capsys, src, dst, "--batch-size", "2")
    assert code != 0 and "run the same command again" in said, said
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2, "the first batch stayed, whole"

    monkeypatch.setattr(store_copy, "insert_batch", real)
    monkeypatch.setattr(store_copy, "PROGRESS_EVERY", 0.0)  # a long copy's progress lines, on every batch here
    code, said = copy(capsys, src, dst, "--batch-size", "2")
    assert code == 0, said
    assert "jobs: 7 copied, 2 already there (9 in the source)" in said, said
    assert "users: 0 copied, 2 already there" in said, said
    assert "jobs: 4 of 9 rows" in said, said
    assert await snapshot(dst, s) == await snapshot(src, s)


async def test_refuses_an_unmigrated_destination_and_a_source_that_is_not_sqlite(
    tmp_path: Path, postgres: PostgresForTests, capsys: pytest.CaptureFixture[str]
) -> None:
    await build_source(tmp_path / "aijobs.db")
    src, bare = f"sqlite:///{tmp_path / 'aijobs.db'}", postgres.schema_url()
    code, said = copy(capsys, src, bare)
    assert code != 0 and "schema version 0" in said and "aijobs migrate` first" in said, said
    with psycopg.connect(bare) as conn:
        assert conn.execute("SELECT to_regclass('jobs')").fetchone()[0] is None, "nothing written"
    code, said = copy(capsys, migrated_schema_url(postgres), migrated_schema_url(postgres))
    assert code != 0 and "must be a SQLite store" in said, said
    code, said = copy(capsys, f"sqlite:///{tmp_path / 'missing.db'}", migrated_schema_url(postgres))
    assert code != 0 and "no SQLite store at" in said, said


async def test_refuses_a_destination_where_a_user_of_the_same_name_already_exists(
    tmp_path: Path, postgres: PostgresForTests, capsys: pytest.CaptureFixture[str]
) -> None:
    await build_source(tmp_path / "aijobs.db")
    dst = migrated_schema_url(postgres)
    store = open_store(Settings(database_url=dst))
    await store.open()
    try:
        await user_store(store).create("alice")  # made in the destination before the copy: another id
    finally:
        await store.close()
    code, said = copy(capsys, f"sqlite:///{tmp_path / 'aijobs.db'}", dst)
    assert code != 0 and "clash with different rows" in said and "fresh database" in said, said
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0, "no job copied without its user"
