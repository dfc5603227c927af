"""One contract, two stores: every test here runs on SQLite and on PostgreSQL and must give the same answers.

Fencing by lease token, seq growth, queue order and positions, the active-jobs cap under concurrent submits,
idempotency keys, history pages and stats, the lease lifecycle, users and sealed keys, migrations. PostgreSQL is
whichever tests/postgres.py finds or starts (never skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.crypto import SecretBox
from service.models import Job, JobError, JobStatus, dumps, now
from service.store import (
    JobStore,
    SchemaMismatch,
    admin_queries,
    job_queries,
    job_secrets,
    open_store,
    operator_log,
    pg_migrations,
    user_store,
    webhook_outbox,
    webhook_secrets,
)
from service.store import migrations as sqlite_migrations
from service.store.admin import PurgeFilter
from service.store.base import UNSTORED_EVENTS_MAX
from service.store.queries import HistoryFilter
from service.store.users import UserExists
from service.store.webhooks import SecretUnreadable

from .postgres import PostgresForTests, migrated_schema_url, with_params

ERROR = JobError(message="busy", code="rate_limited", retryable=True)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return migrated_schema_url(request.getfixturevalue("postgres"))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[JobStore]:
    s = open_store(Settings(database_url=database_url))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def new_job(user: str = "u", *, priority: int = 5, job_type: str = "summary", **kw: Any) -> Job:
    job = Job(id=uuid.uuid4().hex, user_id=user, type=job_type, input={"text": "x"}, priority=priority, **kw)
    return job


async def count(store: JobStore, sql: str, params: tuple[Any, ...] = ()) -> int:
    async with store.db.execute(sql, params) as cur:
        return int((await cur.fetchone())[0])


# --- fencing and seq --------------------------------------------------------------------------------------


async def test_every_accepted_write_adds_one_to_seq_and_a_stale_token_changes_nothing(store: JobStore) -> None:
    job = await store.create(new_job())
    assert (await store.get(job.id)).seq == 1  # type: ignore[union-attr]
    claimed = await store.claim(job.id, worker_id="w1", token="t1", ticket=1)
    assert claimed is not None and claimed.seq == 2 and claimed.status is JobStatus.PROCESSING
    assert claimed.attempts == 1 and claimed.lease_token == "t1" and claimed.worker_id == "w1"
    # progress answers the new seq (not the row); what it wrote is read back
    assert await store.progress(job.id, "t1", percentage=40, step="Thinking", append_output="Hel") == 3
    p = await store.get(job.id)
    assert p is not None and p.seq == 3 and p.partial_output == "Hel" and p.current_step == "Thinking"
    assert await store.progress(job.id, "t1", percentage=50, step=None, append_output="lo") == 4
    p = await store.get(job.id)
    assert p is not None and p.seq == 4 and p.partial_output == "Hello" and p.current_step == "Thinking"
    assert await store.progress(job.id, "t1", percentage=60, step=None, partial_output="Replaced") == 5
    p = await store.get(job.id)
    assert p is not None and p.seq == 5 and p.partial_output == "Replaced"
    # A checkpoint: the run announced events 6..9 without writing; the store's seq catches up to the last one.
    assert await store.progress(job.id, "t1", percentage=70, step="Later", append_output="!", seq=9) == 9
    p = await store.get(job.id)
    assert p is not None and p.seq == 9 and p.partial_output == "Replaced!" and p.percentage == 70
    assert await store.progress(job.id, "t1", percentage=70, step=None, seq=3) == 10, "never backwards: seq + 1"
    assert await store.progress(job.id, "t1", percentage=70, step=None) == 11
    renewed = await store.renew(job.id, "t1", lease_seconds=60)
    assert renewed is not None and renewed.seq == 11, "a renewal is not an event"
    before = await store.get(job.id)

    stale = "t0"
    assert await store.progress(job.id, stale, percentage=99, step="late", append_output="!") is None
    assert await store.renew(job.id, stale, lease_seconds=60) is None
    assert await store.finish(job.id, stale, status=JobStatus.COMPLETED, result={"late": True}) is None
    assert await store.requeue(job.id, stale, error=ERROR, step="late") is None
    assert await store.claim(job.id, worker_id="w2", token="t2") is None, "not queued"
    assert await store.get(job.id) == before, "nothing changed"

    done = await store.finish(
        job.id, "t1", status=JobStatus.COMPLETED, result={"ok": 1}, model="m1", usage={"prompt_tokens": 3},
        record={"attempt": 1},
    )  # fmt: skip
    assert done is not None and done.seq == 12 and done.percentage == 100 and done.lease_token is None
    assert done.result == {"ok": 1} and done.model == "m1" and done.usage == {"prompt_tokens": 3}
    assert done.history == [{"attempt": 1}] and done.completed_at is not None and done.current_step == "Done"
    assert await store.progress(job.id, "t1", percentage=1, step=None) is None, "a finished job takes no writes"
    assert await store.finish(job.id, "t1", status=JobStatus.FAILED) is None
    assert await store.get(job.id) == done


async def test_a_finish_carries_the_final_checkpoint_output_and_seq(store: JobStore) -> None:
    """The runner folds its last checkpoint into the finish: the output announced since the last checkpoint is
    appended, and the terminal seq lands one past the last event announced (never behind the store's own)."""
    job = await store.create(new_job())
    assert await store.claim(job.id, worker_id="w1", token="t1", ticket=1) is not None
    assert await store.progress(job.id, "t1", percentage=40, step="Writing", append_output="Hel") == 3
    stale = await store.finish(job.id, "t0", status=JobStatus.COMPLETED, result={}, append_output="x", seq=50)
    assert stale is None and (await store.get(job.id)).partial_output == "Hel"  # type: ignore[union-attr]
    # events 4..7 announced without a store write; "lo" among them
    done = await store.finish(job.id, "t1", status=JobStatus.COMPLETED, result={"ok": 1}, append_output="lo", seq=7)
    assert done is not None and done.seq == 8 and done.partial_output == "Hello" and done.percentage == 100
    assert done.status is JobStatus.COMPLETED and done.current_step == "Done" and done.lease_token is None
    # a seq behind the store's own (or none) still moves it forward by one, and no text leaves the output as is
    other = await store.create(new_job())
    assert await store.claim(other.id, worker_id="w1", token="t2", ticket=1) is not None
    assert await store.progress(other.id, "t2", percentage=10, step=None, append_output="A", seq=9) == 9
    failed = await store.finish(other.id, "t2", status=JobStatus.FAILED, error=ERROR, seq=4)
    assert failed is not None and failed.seq == 10 and failed.partial_output == "A" and failed.percentage == 10


async def test_writes_in_flight_together_each_keep_their_own_answer_and_fencing(store: JobStore) -> None:
    """Concurrent writes are committed together (group commit on both stores; on PostgreSQL the claims, renewals,
    checkpoints and finishes of a batch are one statement each): every write still gets its own answer, two writes
    to one job both apply in turn, and a stale token or a second claim is refused as alone."""
    jobs = [await store.create(new_job()) for _ in range(12)]
    first = jobs[0]
    claims = await asyncio.gather(
        *(store.claim(j.id, worker_id="w", token=f"t{i}", ticket=1) for i, j in enumerate(jobs)),
        store.claim(first.id, worker_id="rival", token="rival"),
    )
    assert all(c is not None and c.seq == 2 for c in claims[1:12])
    winner = [c for c in (claims[0], claims[12]) if c is not None]
    assert len(winner) == 1, "one job, one claim"
    token = winner[0].lease_token
    assert token is not None and (await store.get(first.id)).lease_token == token  # type: ignore[union-attr]
    renewed = await asyncio.gather(
        store.renew(first.id, token, lease_seconds=60),
        store.renew(first.id, token, lease_seconds=90),
        store.renew(first.id, "stale", lease_seconds=90),
        *(store.renew(j.id, f"t{i}", lease_seconds=60) for i, j in enumerate(jobs) if i),
    )
    assert renewed[0] is not None and renewed[1] is not None and renewed[2] is None
    assert all(r is not None for r in renewed[3:])
    steps = await asyncio.gather(
        store.progress(first.id, token, percentage=10, step="a", append_output="a"),
        store.progress(first.id, token, percentage=20, step="b", append_output="b"),
        store.progress(first.id, "stale", percentage=30, step="c", append_output="c"),
    )
    assert steps[0] is not None and steps[1] is not None and steps[2] is None
    after = await store.get(first.id)
    assert after is not None and after.seq == 4 and sorted(after.partial_output or "") == ["a", "b"]
    finished = await asyncio.gather(
        *(store.finish(j.id, token if i == 0 else f"t{i}", status=JobStatus.COMPLETED, result={"i": i})
          for i, j in enumerate(jobs)),
        store.finish(jobs[1].id, "stale", status=JobStatus.FAILED, error=ERROR),
    )  # fmt: skip
    assert finished[-1] is None, "a stale token changes nothing, whatever rides in the same batch"
    for i, done in enumerate(finished[:-1]):
        assert done is not None and done.status is JobStatus.COMPLETED and done.result == {"i": i}
        assert done.percentage == 100 and done.seq == (5 if i == 0 else 3)
    assert await job_queries(store).count_active("u") == 0


async def test_a_write_that_fails_fails_alone(store: JobStore) -> None:
    """One write of a batch refused by the database (a duplicate id) gets its error; the others are committed."""
    jobs = [await store.create(new_job()) for _ in range(4)]
    duplicate = new_job()
    duplicate.id = jobs[3].id
    results = await asyncio.gather(
        *(store.claim(j.id, worker_id="w", token="t") for j in jobs[:2]),
        store.create(duplicate),
        *(store.claim(j.id, worker_id="w", token="t") for j in jobs[2:]),
        return_exceptions=True,
    )
    assert isinstance(results[2], Exception)
    assert all(r is not None and not isinstance(r, BaseException) for r in results[:2] + results[3:])
    assert await count(store, "SELECT COUNT(*) FROM jobs WHERE status = 'processing'") == 4


async def test_claim_takes_only_a_queued_uncancelled_job_with_its_ticket(store: JobStore) -> None:
    own = await store.create(new_job(own_provider_key=True))
    assert (await store.get(own.id)).own_provider_key is True  # type: ignore[union-attr]
    job = await store.create(new_job())
    assert (await store.get(job.id)).own_provider_key is False  # type: ignore[union-attr]
    assert await store.claim(job.id, worker_id="w", token="t", ticket=7) is None, "wrong ticket"
    touched = await store.touch_queued(job.id, 1, step="Re-queued")
    assert touched is not None and touched.seq == 2
    assert await store.touch_queued(job.id, 1, step="stale ticket") is None
    assert await store.claim(job.id, worker_id="w", token="t", ticket=1) is None, "the old ticket is spent"
    claimed = await store.claim(job.id, worker_id="w", token="t", ticket=2)
    assert claimed is not None and claimed.seq == 3 and claimed.sealed_key is False
    assert await store.claim(job.id, worker_id="w", token="t2") is None, "already processing"

    other = await store.create(new_job("v"))
    assert await store.cancel_queued(other.id, "u") is None, "someone else's job"
    cancelled = await store.cancel_queued(other.id, "v")
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED and cancelled.seq == 2
    assert await store.claim(other.id, worker_id="w", token="t") is None


async def test_claim_records_the_chain_step_the_attempt_runs_on(store: JobStore) -> None:
    """What the sweeper reads to name a lost attempt's provider and model: written by the claim itself, picked by
    the job's type and chain position (past the chain's end, its last step, as the runner picks)."""
    steps = dumps(
        {
            "summary": [{"provider": "simulated", "model": "sim-fail-400"}, {"provider": "backup", "model": "gpt-b"}],
            "image": [{"provider": "simulated", "model": "sim-1"}],
        }
    )
    for job_id, job_type in (("s", "summary"), ("i", "image"), ("x", "unknown")):
        await store.create(Job(id=job_id, user_id="u", type=job_type, input={}))

    def step(job: Job | None) -> dict[str, Any] | None:
        """running_on without its `since`, which must be the claim's time."""
        on = job.running_on if job else None
        if on is None:
            return None
        # SQLite's JSON keeps 15 significant digits of a real: ~10 us of a unix time, either way
        assert before - 1e-5 <= on["since"] <= time.time() + 1e-5, on
        return {k: v for k, v in on.items() if k != "since"}

    before = time.time()
    claimed = {j: await store.claim(j, worker_id="w", token=f"t{j}", steps=steps) for j in ("s", "i", "x")}
    assert {j: step(job) for j, job in claimed.items()} == {
        "s": {"provider": "simulated", "model": "sim-fail-400"},
        "i": {"provider": "simulated", "model": "sim-1"},
        "x": None,  # a type this worker's chains do not know: unknown, not guessed
    }
    error = JobError(message="no", code="provider_bad_request", retryable=False)
    assert await store.requeue("s", "ts", error=error, step="Next…", next_model=1)
    again = await store.claim("s", worker_id="w", token="ts2", steps=steps)
    assert again is not None and step(again) == {"provider": "backup", "model": "gpt-b"}
    assert await store.requeue("s", "ts2", error=error, step="Past the end…", next_model=1)
    past = await store.claim("s", worker_id="w", token="ts3", steps=steps)
    assert past is not None and past.model_index == 2
    assert step(past) == {"provider": "backup", "model": "gpt-b"}
    read = await store.get("s")
    assert read is not None and read.running_on == past.running_on  # read back as written


async def test_requeue_refunds_moves_down_the_chain_or_ends_a_cancelled_job(store: JobStore) -> None:
    job = await store.create(new_job())
    await store.claim(job.id, worker_id="w", token="a")
    back = await store.requeue(job.id, "a", error=None, step="Shutting down", refund=True, record={"n": 1})
    assert back is not None and back.status is JobStatus.QUEUED and back.attempts == 0 and back.lease_token is None
    assert back.history == [{"n": 1}] and back.worker_id is None
    await store.claim(job.id, worker_id="w", token="b")
    later = await store.requeue(job.id, "b", error=ERROR, step="Retrying", delay=30)
    assert later is not None and later.attempts == 1 and later.error == ERROR
    assert later.ready_at is not None and later.ready_at >= later.updated_at + 29
    await store.claim(job.id, worker_id="w", token="c")
    moved = await store.requeue(job.id, "c", error=ERROR, step="Next model", next_model=1)
    assert moved is not None and moved.attempts == 0 and moved.model_index == 1

    await store.claim(job.id, worker_id="w", token="d")
    assert await store.request_cancel(job.id, "someone else") is None
    flagged = await store.request_cancel(job.id, "u")
    assert flagged is not None and flagged.cancel_requested and flagged.seq == moved.seq + 1, "a flag is no event"
    ended = await store.requeue(job.id, "d", error=None, step="Cancelled")
    assert ended is not None and ended.status is JobStatus.CANCELLED and ended.completed_at is not None


# --- queue order and positions ------------------------------------------------------------------------------


async def test_positions_follow_the_queue_order_everywhere(store: JobStore) -> None:
    """Priority buys a head start of PRIORITY_STEP_SECONDS a step; a retry backing off counts from its due time.
    create_ranked, queue_ahead, get_owned_ranked and queued_ranked all count the same jobs ahead."""
    t = now()
    low = new_job(priority=1, created_at=t, updated_at=t)
    mid = new_job(priority=5, created_at=t + 1, updated_at=t + 1)
    high = new_job(priority=10, created_at=t + 2, updated_at=t + 2)
    for job in (low, mid, high):
        await store.create(job)
    retry = await store.create(new_job(priority=10, created_at=t + 3, updated_at=t + 3))
    await store.claim(retry.id, worker_id="w", token="r")
    deferred = await store.requeue(retry.id, "r", error=ERROR, step="Retrying", delay=5.0)
    assert deferred is not None
    expected = {high.id: 0, mid.id: 1, low.id: 2, deferred.id: 3}
    for job_id, ahead in expected.items():
        job = await store.get(job_id)
        assert job is not None and await store.queue_ahead(job) == ahead, job_id
        found = await store.get_owned_ranked(job_id, "u")
        assert found is not None and found[1] == ahead
    ranked = await store.queued_ranked({j: "u" for j in expected})
    assert {j: a for j, (_, a) in ranked.items()} == expected
    assert await store.queued_ranked({j: "v" for j in expected}) == {}, "owners only"
    assert await store.get_owned_ranked(low.id, "v") is None
    newest = new_job(priority=1)
    assert await store.create_ranked(newest) == 3, "behind high, mid and low; ahead of the retry"
    await store.claim(high.id, worker_id="w", token="h")
    found = await store.get_owned_ranked(high.id, "u")
    assert found is not None and found[1] is None, "no position once it runs"
    by_age = sorted([low, mid, high, deferred, newest], key=lambda j: j.created_at)
    assert [j.id for j in await store.active_for_user("u")] == [j.id for j in by_age], "oldest first"
    assert await store.active_for_user("v") == [], "one user's jobs only"
    listed = [j.id for j in await store.list_active()]
    assert sorted(listed) == sorted([low.id, mid.id, high.id, deferred.id, newest.id])
    assert [j.id for j in await store.running()] == [high.id]


async def test_counted_positions_and_active_jobs_match_the_rows(store: JobStore) -> None:
    """Whatever keeps the counts (SQLite's triggers, PostgreSQL's indexes), they agree with counting rows."""
    rng = random.Random(7)
    ids = []
    for i in range(60):
        user, priority = rng.choice("ab"), rng.randint(1, 10)
        job = new_job(user, priority=priority)
        job.ready_at = job.created_at + rng.choice([0, 0, 0, 50])  # some deferred, as a retry backing off
        assert await store.create_ranked(job) == await store.queue_ahead(job), f"job {i}"
        ids.append(job.id)
    for i, job_id in enumerate(ids):
        if i % 3 == 0:
            await store.claim(job_id, worker_id="w", token=f"t{i}")
        if i % 5 == 0 and i % 3 == 0:
            await store.finish(job_id, f"t{i}", status=JobStatus.COMPLETED)
        if i % 7 == 0:
            await store.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    queries = job_queries(store)
    for user in ("a", "b", "nobody"):
        rows = await count(
            store, "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status IN ('queued', 'processing')", (user,)
        )
        assert await queries.count_active(user) == rows
    async with store.db.execute("SELECT id, user_id FROM jobs") as cur:
        rows = [(r[0], r[1]) for r in await cur.fetchall()]
    ranked = await store.queued_ranked(dict(rows))
    for job_id, user in rows:
        found = await store.get_owned_ranked(job_id, user)
        assert found is not None
        job, ahead = found
        assert ahead == (await store.queue_ahead(job) if job.status is JobStatus.QUEUED else None)
        assert (ranked[job_id][1] if job_id in ranked else None) == ahead, "the batch agrees, job by job"
    queued = await count(store, "SELECT COUNT(*) FROM jobs WHERE status = 'queued'")
    assert len(ranked) == queued > 10
    kept = "SELECT SUM(n) FROM queue_count" if store.dialect == "postgres" else "SELECT queued FROM queue_size"
    assert await count(store, kept) == queued, "the trigger-kept queue length"


# --- the active-jobs cap --------------------------------------------------------------------------------


async def test_the_cap_holds_under_concurrent_submits_of_one_user(store: JobStore, database_url: str) -> None:
    """40 submits of one user at once, from two store instances (two processes' pools), cap 5: exactly 5 land;
    another user is not held back by them."""
    other = open_store(Settings(database_url=database_url))
    await other.open()
    try:
        results = await asyncio.gather(
            *((store if i % 2 else other).create_ranked(new_job("greedy"), max_active=5) for i in range(40)),
            *(store.create_ranked(new_job(f"user{i}"), max_active=5) for i in range(10)),
        )
    finally:
        await other.close()
    greedy, others = results[:40], results[40:]
    assert sum(r is not None for r in greedy) == 5
    assert all(r is not None for r in others)
    assert await count(store, "SELECT COUNT(*) FROM jobs WHERE user_id = 'greedy'") == 5
    # A finished job frees its slot; a refused insert wrote nothing.
    job = (await store.list_active())[0]
    user = job.user_id
    await store.claim(job.id, worker_id="w", token="t")
    await store.finish(job.id, "t", status=JobStatus.COMPLETED)
    if user == "greedy":
        assert await store.create_ranked(new_job("greedy"), max_active=5) is not None
    assert await store.create_ranked(new_job("greedy"), max_active=5) is None
    assert await job_queries(store).count_active("greedy") == 5


# --- idempotency ------------------------------------------------------------------------------------------


async def test_idempotency_keys_reserve_answer_release_and_expire(store: JobStore) -> None:
    t = now()
    assert await store.idempotency_get("u", "k", since=t - 60) is None
    assert await store.idempotency_put("u", "k", "h1", "job1", since=t - 60) is True
    assert await store.idempotency_put("u", "k", "h2", "job2", since=t - 60) is False, "held"
    assert await store.idempotency_put("v", "k", "h3", "job3", since=t - 60) is True, "keys are per user"
    assert await store.idempotency_get("u", "k", since=t - 60) == ("h1", "job1")
    assert await store.idempotency_get("u", "k", since=now() + 1) is None, "too old for this window"
    assert await store.idempotency_put("u", "k", "h4", "job4", since=now() + 1) is True, "a stale key is replaced"
    await store.idempotency_release("u", "k", "someone-else")
    assert await store.idempotency_get("u", "k", since=t - 60) == ("h4", "job4")
    await store.idempotency_release("u", "k", "job4")
    assert await store.idempotency_get("u", "k", since=t - 60) is None
    await store.purge(completed_before=0, others_before=0, idempotency_before=now() + 1)
    assert await store.idempotency_get("v", "k", since=0) is None, "purged past retention"


# --- leases, expiry, take-over, sweeping ----------------------------------------------------------------


async def test_a_lapsed_lease_is_taken_over_once_and_the_old_owner_is_fenced_out(store: JobStore) -> None:
    live = await store.create(new_job())
    lapsed = await store.create(new_job())
    await store.claim(live.id, worker_id="w", token="live", lease_seconds=60)
    await store.claim(lapsed.id, worker_id="w", token="old", lease_seconds=-1)
    assert [j.id for j in await store.expired_leases()] == [lapsed.id]
    assert await store.take_over(live.id, "live", status=JobStatus.QUEUED, error=None, step="x", record=None) is None
    assert (
        await store.take_over(lapsed.id, "other", status=JobStatus.QUEUED, error=None, step="x", record=None) is None
    ), "only the lease that lapsed"
    lost = JobError(message="lost", code="worker_lost", retryable=True)
    back = await store.take_over(lapsed.id, "old", status=JobStatus.QUEUED, error=lost, step="Re-queued",
                                 record={"error": "worker_lost"})  # fmt: skip
    assert back is not None and back.status is JobStatus.QUEUED and back.completed_at is None
    assert back.seq == 2 + UNSTORED_EVENTS_MAX + 1, "past any event the revoked run announced since its checkpoint"
    assert back.history == [{"error": "worker_lost"}] and back.lease_token is None
    assert await store.take_over(lapsed.id, "old", status=JobStatus.QUEUED, error=None, step="x", record=None) is None
    assert await store.progress(lapsed.id, "old", percentage=90, step="late") is None, "late writes refused"
    assert await store.finish(lapsed.id, "old", status=JobStatus.COMPLETED) is None
    again = await store.claim(lapsed.id, worker_id="w2", token="new", lease_seconds=-1)
    assert again is not None and again.attempts == 2
    failed = await store.take_over(lapsed.id, "new", status=JobStatus.FAILED, error=lost, step="Lost", record=None)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.completed_at is not None


async def test_the_submitting_requests_origin_stays_with_the_job_through_every_spell(store: JobStore) -> None:
    """Written by the submit's own insert; what the sweeper and reconciler read to enqueue the job again (their
    spells have no queue entry of the submit's to take it from)."""
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job = await store.create(new_job(request_id="req-1", traceparent=tp))
    plain = await store.create(new_job())
    read = await store.get(plain.id)
    assert read is not None and (read.request_id, read.traceparent) == (None, None), "submitted outside a request"
    claimed = await store.claim(job.id, worker_id="w", token="old", ticket=1, lease_seconds=-1)
    assert claimed is not None and (claimed.request_id, claimed.traceparent) == ("req-1", tp)
    [lapsed] = [j for j in await store.expired_leases() if j.id == job.id]
    assert lapsed.request_id == "req-1"
    back = await store.take_over(job.id, "old", status=JobStatus.QUEUED, error=None, step="x", record=None)
    assert back is not None and (back.request_id, back.traceparent) == ("req-1", tp), "the take-over's answer"
    touched = await store.touch_queued(job.id, back.seq, step="Back in the queue…")
    assert touched is not None and (touched.request_id, touched.traceparent) == ("req-1", tp), "the reconciler's"
    again = await store.claim(job.id, worker_id="w", token="new", ticket=touched.seq)
    assert again is not None and again.attempts == 2
    requeued = await store.requeue(job.id, "new", error=ERROR, step="Retrying")
    assert requeued is not None and requeued.request_id == "req-1"
    assert [j.request_id for j in await store.list_queued(older_than=now() + 1) if j.id == job.id] == ["req-1"]


async def test_expiry_listing_purge_and_durations(store: JobStore) -> None:
    t = now()
    overdue = await store.create(new_job(expires_at=t - 1))
    fresh = await store.create(new_job(expires_at=t + 600))
    expired = await store.expire_overdue()
    assert [j.id for j in expired] == [overdue.id]
    assert expired[0].status is JobStatus.EXPIRED and expired[0].error is not None
    assert expired[0].error.code == "expired" and expired[0].seq == 2
    assert await store.expire_overdue() == []
    assert [j.id for j in await store.list_queued(older_than=now() + 1)] == [fresh.id]
    assert await store.list_queued(older_than=t - 10) == []

    run = await store.create(new_job(job_type="titles"))
    await store.claim(run.id, worker_id="w", token="t")
    await store.finish(run.id, "t", status=JobStatus.COMPLETED, result=["a"])
    durations = await store.recent_durations("titles")
    assert len(durations) == 1 and 0 <= durations[0] < 60
    assert await store.recent_durations("summary") == []
    finished = set(await store.finished_before(now() + 1))
    assert finished == {overdue.id, run.id}
    ended = await store.finished_seqs(t - 1, now() + 1)  # oldest first, with the seq each one's end event has
    assert {job_id for job_id, _, _ in ended} == {overdue.id, run.id}
    done = await store.get(run.id)
    assert done is not None and (run.id, run.user_id, done.seq) in ended
    assert await store.finished_seqs(t - 10, t - 1) == [] and await store.finished_seqs(now() + 1, now() + 2) == []
    assert fresh.id not in {job_id for job_id, _, _ in ended}, "an active job has not ended"
    purged = await store.purge(completed_before=now() + 1, others_before=t - 3600, idempotency_before=0)
    assert purged == [run.id], "failed/expired jobs are kept longer"
    assert await store.get(run.id) is None and await store.get(overdue.id) is not None


async def test_a_user_deletes_only_their_own_finished_job(store: JobStore) -> None:
    """DELETE /v1/responses/{id}: gone from history and the counters, with its idempotency key; never a job that is
    still active or someone else's."""
    active = await store.create(new_job("ann"))
    done = await store.create(new_job("ann"))
    await store.claim(done.id, worker_id="w", token="t")
    await store.finish(done.id, "t", status=JobStatus.COMPLETED, result={"reply": "hi"})
    assert await store.idempotency_put("ann", "k1", "hash", done.id, since=0)
    assert not await store.delete_finished(done.id, "bob"), "someone else's job"
    assert not await store.delete_finished(active.id, "ann"), "a queued job is cancelled first"
    assert await store.delete_finished(done.id, "ann")
    assert await store.get(done.id) is None and await store.get(active.id) is not None
    assert await store.idempotency_get("ann", "k1", since=0) is None
    assert not await store.delete_finished(done.id, "ann"), "already gone"
    jobs, _ = await job_queries(store).history(HistoryFilter("ann"), limit=10)
    assert [j.id for j in jobs] == [active.id]
    assert await job_queries(store).count_active("ann") == 1
    assert await job_queries(store).counts_by_status("ann") == {"queued": 1}


# --- history and stats ------------------------------------------------------------------------------------


async def test_history_pages_filters_and_stats(store: JobStore) -> None:
    t = now() - 100
    jobs = []
    for i in range(7):
        job = new_job("h", job_type="summary" if i % 2 else "titles", created_at=t + i, updated_at=t + i)
        await store.create(job)
        jobs.append(job)
    await store.create(new_job("other", created_at=t, updated_at=t))
    for i, job in enumerate(jobs[:4]):
        await store.claim(job.id, worker_id="w", token=f"t{i}")
        status = JobStatus.COMPLETED if i < 3 else JobStatus.FAILED
        await store.finish(job.id, f"t{i}", status=status, model="m" if i < 2 else "n",
                           usage={"prompt_tokens": 10, "completion_tokens": i})  # fmt: skip
    queries = job_queries(store)
    pages, after, more = [], None, True
    while more:
        page, more = await queries.history(HistoryFilter(user_id="h"), limit=3, after=after)
        pages.append([j.id for j in page])
        after = (page[-1].created_at, page[-1].id)
    assert pages == [[j.id for j in reversed(jobs)][i : i + 3] for i in (0, 3, 6)], "newest first, no overlap"
    same_time = [new_job("s", created_at=t, updated_at=t) for _ in range(4)]
    for job in same_time:
        await store.create(job)
    seen: list[str] = []
    after, more = None, True
    while more:
        page, more = await queries.history(HistoryFilter(user_id="s"), limit=1, after=after)
        seen += [j.id for j in page]
        after = (page[-1].created_at, page[-1].id)
    assert seen == sorted((j.id for j in same_time), reverse=True), "ties broken by id, none lost"

    done, _ = await queries.history(HistoryFilter(user_id="h", statuses=("completed",)), limit=50)
    assert {j.id for j in done} == {j.id for j in jobs[:3]}
    titles, _ = await queries.history(HistoryFilter(user_id="h", types=("titles",)), limit=50)
    assert {j.id for j in titles} == {j.id for j in jobs if j.type == "titles"}
    recent, _ = await queries.history(HistoryFilter(user_id="h", since=t + 5), limit=50)
    assert {j.id for j in recent} == {jobs[5].id, jobs[6].id}

    usage = sorted(await queries.usage_by_model(HistoryFilter(user_id="h")), key=lambda r: (r[0] is None, str(r[0])))
    assert usage == [("m", 2, 20, 1), ("n", 2, 20, 5), (None, 3, 0, 0)]
    assert await queries.counts_by_status("h") == {"completed": 3, "failed": 1, "queued": 3}
    assert (await queries.counts_by_status())["queued"] == 8
    assert await queries.count_active("h") == 3
    timings = await queries.timings(t - 1)
    assert [(x.type, x.started, x.finished) for x in timings] == [("summary", 2, 1), ("titles", 2, 2)]
    assert all(x.avg_wait is not None and x.avg_wait > 0 for x in timings)


# --- users and sealed keys --------------------------------------------------------------------------------


async def test_users_tokens_and_sealed_keys(store: JobStore) -> None:
    users = user_store(store)
    alice, token = await users.create("alice")
    with pytest.raises(UserExists):
        await users.create("alice")
    assert await users.by_token(token) == alice
    assert await users.by_token("nope") is None
    assert await users.by_name("alice") == alice and await users.by_id(alice.id) == alice
    assert (await users.get_or_create("bob")).name == "bob"
    assert [u.name for u in await users.list()] == ["alice", "bob"]
    epoch = await users.session_epoch(alice.id)
    revoked = await users.revoke("alice", reissue=True)
    assert revoked is not None and revoked[1]
    assert await users.by_token(token) is None, "the old token is worthless at once (cache dropped)"
    assert await users.by_token(revoked[1]) == alice
    assert await users.session_epoch(alice.id) != epoch
    assert await users.revoke("nobody") is None
    async with store.db.execute("SELECT token_hash FROM users WHERE id = ?", (alice.id,)) as cur:
        stored = (await cur.fetchone())[0]
    assert revoked[1] not in stored, "only a hash is kept"

    await users.sign_out("session-1", alice.id, time.time() + 60)
    await users.sign_out("session-1", alice.id, time.time() + 60)  # twice: one record
    await users.sign_out("old", alice.id, time.time() - 1)  # past its cookie's expiry: purged at once
    users.forget()
    assert await users.signed_out("session-1") and not await users.signed_out("session-2")
    assert await count(store, "SELECT COUNT(*) FROM signed_out_sessions") == 1, "one record; the expired one gone"

    secrets = job_secrets(store)
    running = await store.create(new_job("alice"))
    over = await store.create(new_job("alice"))
    await secrets.put(running.id, alice.id, b"\x00sealed\xff")
    await secrets.put(over.id, alice.id, b"gone")
    await secrets.put("no-such-job", alice.id, b"orphan")
    assert await secrets.get(running.id) == b"\x00sealed\xff"
    claimed = await store.claim(running.id, worker_id="w", token="t")
    assert claimed is not None and claimed.sealed_key is True
    await store.cancel_queued(over.id, "alice")
    assert await secrets.delete_finished() == 1, "the ended job's key goes; a fresh orphan waits for its grace"
    assert await secrets.get(over.id) is None and await secrets.get(running.id) is not None
    assert await secrets.delete_finished(grace=-1) == 1
    await secrets.delete(running.id)
    assert await secrets.get(running.id) is None


# --- webhooks: the outbox the terminal write fills, its leased claims, signing secrets ---------------------

HOOK = "https://hooks.example.com/in"


async def deliveries(store: JobStore) -> list[tuple[str, str, str, str]]:
    async with store.db.execute("SELECT id, job_id, event, status FROM webhook_deliveries ORDER BY id") as cur:
        return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


async def test_ending_a_job_with_a_webhook_writes_its_delivery_in_the_same_statement(store: JobStore) -> None:
    every = {"url": HOOK, "events": ["completed", "failed", "cancelled", "expired"]}
    done = await store.create(new_job(webhook=every))
    quiet = await store.create(new_job(webhook={"url": HOOK, "events": ["failed"]}))
    plain = await store.create(new_job())
    cancelled = await store.create(new_job(webhook=every))
    overdue = await store.create(new_job(webhook=every, expires_at=now() - 1))
    for job in (done, quiet, plain):
        await store.claim(job.id, worker_id="w", token=f"t-{job.id}")
    assert await deliveries(store) == [], "nothing while jobs run"
    assert (await store.get(done.id)).webhook == every  # type: ignore[union-attr]
    await store.progress(done.id, f"t-{done.id}", percentage=50, step="half")
    for job in (done, quiet, plain):
        await store.finish(job.id, f"t-{job.id}", status=JobStatus.COMPLETED, result={"ok": True})
    await store.cancel_queued(cancelled.id, "u")
    await store.expire_overdue()
    expected = {
        (f"msg_{done.id}_completed", done.id, "job.completed", "pending"),
        (f"msg_{cancelled.id}_cancelled", cancelled.id, "job.cancelled", "pending"),
        (f"msg_{overdue.id}_expired", overdue.id, "job.expired", "pending"),
    }
    assert set(await deliveries(store)) == expected, "one per wanted end; none for unwanted ends or no webhook"
    outbox = webhook_outbox(store)
    [row] = await outbox.for_job(done.id)
    assert (row.url, row.user_id, row.attempts, row.responses) == (HOOK, "u", 0, [])
    assert row.occurred_at == (await store.get(done.id)).completed_at  # type: ignore[union-attr]
    assert await store.finish(done.id, f"t-{done.id}", status=JobStatus.FAILED) is None
    assert len(await deliveries(store)) == 3, "a refused write writes no delivery"

    # A lapsed lease that the sweeper ends as failed is an end too.
    lost = await store.create(new_job(webhook=every, max_attempts=1))
    await store.claim(lost.id, worker_id="w", token="gone", lease_seconds=-1)
    await store.take_over(lost.id, "gone", status=JobStatus.FAILED, error=ERROR, step="Failed", record=None)
    assert (f"msg_{lost.id}_failed", lost.id, "job.failed", "pending") in await deliveries(store)

    purged = await store.purge(completed_before=now() + 1, others_before=now() + 1, idempotency_before=0)
    assert done.id in purged and await deliveries(store) == [], "a purged job's deliveries go with it"


async def test_a_delivery_claim_is_a_lease_and_only_its_holder_records(store: JobStore) -> None:
    job = await store.create(new_job(webhook={"url": HOOK, "events": ["completed"]}))
    await store.claim(job.id, worker_id="w", token="t")
    await store.finish(job.id, "t", status=JobStatus.COMPLETED)
    outbox = webhook_outbox(store)
    [first] = await outbox.claim(token="a", limit=10, lease_seconds=60)
    assert first.id == f"msg_{job.id}_completed" and first.status == "pending"
    assert await outbox.claim(token="b", limit=10, lease_seconds=60) == [], "leased: nobody else takes it"
    answer = {"attempt": 1, "status_code": 500, "error": "HTTP 500"}
    assert not await outbox.record(first, "b", status="pending", response=answer, retry_at=now() - 1)
    assert await outbox.record(first, "a", status="pending", response=answer, retry_at=now() - 1)
    [second] = await outbox.claim(token="c", limit=10, lease_seconds=-1)  # due again; this claim lapses at once
    assert second.id == first.id and second.attempts == 1 and second.responses == [answer]
    [third] = await outbox.claim(token="d", limit=10, lease_seconds=60)
    assert third.id == first.id, "a lapsed claim is taken by the next worker: same delivery, same id"
    assert not await outbox.record(second, "c", status="delivered", response={"status_code": 200})
    assert await outbox.record(third, "d", status="delivered", response={"attempt": 2, "status_code": 200})
    [done] = await outbox.for_job(job.id)
    assert (done.status, done.attempts, [r["status_code"] for r in done.responses]) == ("delivered", 2, [500, 200])
    assert done.delivered_at is not None and done.to_public()["next_attempt_at"] is None
    assert await outbox.claim(token="e", limit=10, lease_seconds=60) == []
    await outbox.release([done.id], "d")
    assert await outbox.claim(token="e", limit=10, lease_seconds=60) == [], "a delivered row is never claimed"


async def test_each_user_has_one_sealed_signing_secret_that_rotates_with_an_overlap(store: JobStore) -> None:
    box = SecretBox(b"s" * 32)
    secrets = webhook_secrets(store, box, overlap=60)
    first, again = await asyncio.gather(secrets.get("alice"), secrets.get("alice"))
    assert first.secret == again.secret and first.secret.startswith("whsec_") and first.signing == [first.secret]
    assert (await secrets.get("bob")).secret != first.secret
    async with store.db.execute("SELECT sealed FROM webhook_secrets WHERE user_id = ?", ("alice",)) as cur:
        sealed = bytes((await cur.fetchone())[0])
    assert first.secret.encode() not in sealed and box.open(sealed, user_id="alice") == first.secret
    assert box.open(sealed, user_id="bob") is None, "sealed to its user"
    rotated = await secrets.rotate("alice")
    assert rotated.secret != first.secret and rotated.signing == [rotated.secret, first.secret]
    assert rotated.to_public()["previous_valid_until"] is not None
    assert (await webhook_secrets(store, box, overlap=0).get("alice")).signing == [rotated.secret], "overlap over"
    other_key = webhook_secrets(store, SecretBox(b"t" * 32), overlap=60)
    with pytest.raises(SecretUnreadable):
        await other_key.get("alice")  # a worker with another SECRET_KEY signs nothing and changes nothing
    assert (await secrets.get("alice")).secret == rotated.secret
    replaced = await other_key.get("alice", replace_unreadable=True)  # the user asks for it after a key change
    assert replaced.secret not in (rotated.secret, first.secret) and replaced.signing == [replaced.secret]


# --- operators: their role, their record, what they read and purge across users ---------------------------


async def test_operators_and_the_record_of_what_they_did(store: JobStore) -> None:
    users = user_store(store)
    root, _ = await users.create("root", operator=True)
    ann, _ = await users.create("ann")
    assert root.operator and not ann.operator
    assert await users.operator(root.id) == root and await users.operator(ann.id) is None
    assert await users.operator("no-such-user") is None
    assert [(u.name, u.operator) for u in await users.list()] == [("root", True), ("ann", False)]
    made = await users.set_operator("ann", True)
    assert made is not None and made.operator and await users.operator(ann.id) is not None
    taken = await users.set_operator("ann", False)
    assert taken is not None and not taken.operator and await users.operator(ann.id) is None, "at once, no cache"
    assert await users.set_operator("nobody", True) is None

    log = operator_log(store)
    first = await log.record(operator_id=root.id, operator_name="root", action="retry", job_id="j1",
                             job_user_id=ann.id, detail={"new_job_id": "j2"})  # fmt: skip
    await log.record(operator_id=root.id, operator_name="root", action="purge", detail={"purged": 3})
    last = await log.record(operator_id=root.id, operator_name="root", action="cancel", job_id="j1")
    with pytest.raises(ValueError):
        await log.record(operator_id=root.id, operator_name="root", action="delete-everything")
    recent = await log.recent()
    assert [r.action for r in recent] == ["cancel", "purge", "retry"], "newest first"
    assert recent[0] == last and recent[-1] == first and first.detail == {"new_job_id": "j2"}
    assert [r.action for r in await log.recent(job_id="j1")] == ["cancel", "retry"]
    assert [r.action for r in await log.recent(limit=1)] == ["cancel"]


async def _ended(store: JobStore, user: str, status: JobStatus, *, job_type: str = "summary", **times: float) -> Job:
    """A job that ran and ended in `status`, its times then set as given (created_at, started_at, completed_at)."""
    job = await store.create(new_job(user, job_type=job_type))
    await store.claim(job.id, worker_id="w", token="t")
    await store.finish(job.id, "t", status=status, error=None if status is JobStatus.COMPLETED else ERROR)
    if times:
        sets = ", ".join(f"{k} = ?" for k in times)
        await store.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*times.values(), job.id))
    ended = await store.get(job.id)
    assert ended is not None
    return ended


async def test_operators_read_every_users_jobs(store: JobStore) -> None:
    users = user_store(store)
    ann, _ = await users.create("ann")
    admin = admin_queries(store)
    t = now()
    high = await store.create(new_job(ann.id, priority=9))
    waiting = await store.create(new_job("bob", priority=9, created_at=t - 30, updated_at=t - 30))
    deferred = await store.create(new_job("bob", priority=3))
    await store.db.execute("UPDATE jobs SET ready_at = ? WHERE id = ?", (t + 60, deferred.id))
    depth = await admin.queue_depth(now())
    assert [(q.priority, q.queued, q.deferred) for q in depth] == [(9, 2, 0), (3, 1, 1)], "highest first"
    assert now() - depth[0].oldest_created_at >= 30

    await store.claim(high.id, worker_id="w1", token="a", lease_seconds=60)
    lapsed = await store.create(new_job("bob"))
    await store.claim(lapsed.id, worker_id="w2", token="b", lease_seconds=-1)
    running, total = await admin.running(limit=1)
    assert total == 2 and len(running) == 1
    both, _ = await admin.running()
    assert {(o.job.id, o.owner) for o in both} == {(high.id, "ann"), (lapsed.id, None)}, "the owner's name, if any"
    assert await admin.busy_slots() == {"w1": 1, "w2": 1}
    assert [o.job.id for o in await admin.stuck(queued_for=100)] == [lapsed.id], "a lapsed lease"
    stuck = await admin.stuck(queued_for=20)
    assert [o.job.id for o in stuck] == [waiting.id, lapsed.id], "and a job ready to run for 20 s, oldest first"
    assert len(await admin.stuck(queued_for=20, limit=1)) == 1

    old = await _ended(store, ann.id, JobStatus.FAILED, completed_at=t - 100)
    new = await _ended(store, "bob", JobStatus.FAILED, completed_at=t - 10)
    gone = await _ended(store, "bob", JobStatus.EXPIRED, completed_at=t - 5)
    assert [o.job.id for o in await admin.finished(("failed",))] == [new.id, old.id], "newest first"
    assert [o.job.id for o in await admin.finished(("failed", "expired"), limit=2)] == [gone.id, new.id]
    found = await admin.job(old.id)
    assert found is not None and found.owner == "ann" and found.job.error == ERROR
    assert await admin.job("missing") is None


async def test_per_minute_counts_and_timings_for_the_charts(store: JobStore) -> None:
    admin = admin_queries(store)
    m = int(now() // 60) - 10  # a whole minute, ten minutes ago
    base = m * 60.0
    for i in range(1, 21):  # minute m: 20 jobs that waited i s, then ran i s, all starting and completing in it
        await _ended(store, "u", JobStatus.COMPLETED, created_at=base + 30 - 2 * i, started_at=base + 30 - i,
                     completed_at=base + 30)  # fmt: skip
    # minute m + 1: one failed (waited 1 s), one completed (waited 1 s, ran 7 s), one still running (waited 5 s)
    await _ended(store, "u", JobStatus.FAILED, created_at=base + 60, started_at=base + 61, completed_at=base + 62)
    await _ended(store, "u", JobStatus.COMPLETED, created_at=base + 62, started_at=base + 63, completed_at=base + 70)
    running = await store.create(new_job("u"))
    await store.claim(running.id, worker_id="w", token="t")
    await store.db.execute("UPDATE jobs SET created_at = ?, started_at = ? WHERE id = ?", (base + 70, base + 75,
                                                                                          running.id))  # fmt: skip
    # long before the window: counted nowhere
    await _ended(store, "u", JobStatus.COMPLETED, created_at=base - 9000, started_at=base - 8000,
                 completed_at=base - 7000)  # fmt: skip

    since = base - 60
    assert await admin.finished_per_minute(since) == {(m, "completed"): 20, (m + 1, "failed"): 1,
                                                      (m + 1, "completed"): 1}  # fmt: skip
    runs = await admin.run_per_minute(since)
    assert [(r.minute, r.count, r.p95) for r in runs] == [(m, 20, 19.0), (m + 1, 1, 7.0)], "p95: nearest rank"
    assert runs[0].average == pytest.approx(10.5) and runs[1].average == pytest.approx(7.0)
    waits = await admin.wait_per_minute(since)
    assert [(w.minute, w.count, w.p95) for w in waits] == [(m, 20, 19.0), (m + 1, 3, 5.0)], "the running one too"
    assert waits[0].average == pytest.approx(10.5) and waits[1].average == pytest.approx(7 / 3)
    assert await admin.run_per_minute(base + 120) == [] and await admin.finished_per_minute(base + 120) == {}


async def test_purge_deletes_only_finished_jobs_the_filter_picks(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.store import admin as admin_module

    monkeypatch.setattr(admin_module, "PURGE_BATCH", 2)  # several batches for a handful of jobs
    admin = admin_queries(store)
    t = now()
    active = await store.create(new_job("ann"))
    old_failed = [await _ended(store, "ann", JobStatus.FAILED, completed_at=t - 500) for _ in range(3)]
    old_titles = await _ended(store, "ann", JobStatus.COMPLETED, job_type="titles", completed_at=t - 500)
    bobs = await _ended(store, "bob", JobStatus.FAILED, completed_at=t - 500)
    recent = await _ended(store, "ann", JobStatus.FAILED, completed_at=t - 5)
    assert await store.idempotency_put("ann", "k", "hash", old_failed[0].id, since=0)

    picked = PurgeFilter(finished_before=t - 60, statuses=("failed",), user_id="ann")
    assert sorted(await admin.purge(picked)) == sorted(j.id for j in old_failed), "ann's old failed jobs only"
    assert await store.idempotency_get("ann", "k", since=0) is None, "their idempotency keys go with them"
    assert await admin.purge(picked) == []
    assert await admin.purge(PurgeFilter(finished_before=t + 1, statuses=("queued", "processing"))) == [], (
        "never an active job"
    )
    assert await admin.purge(PurgeFilter(finished_before=t - 60, types=("titles",))) == [old_titles.id]
    assert not await admin.purge_job(active.id), "active: refused"
    assert await admin.purge_job(recent.id) and not await admin.purge_job(recent.id)
    left = {j.id for j in await store.list_active()} | set(await store.finished_before(t + 1))
    assert left == {active.id, bobs.id}


# --- migrations -------------------------------------------------------------------------------------------


async def test_schema_older_or_newer_than_the_code_refuses_to_start(store: JobStore, database_url: str) -> None:
    await store.migrate()
    before, after = await store.migrate()
    assert before == after > 0, "already current: nothing to do"
    if store.dialect == "postgres":
        await store.db.execute("UPDATE aijobs_schema SET version = version - 1")
        older = open_store(Settings(database_url=database_url))
        with pytest.raises(SchemaMismatch, match="run `aijobs migrate`"):
            await older.open()
        await store.db.execute("UPDATE aijobs_schema SET version = version + 1")
    newer = after + 1
    if store.dialect == "postgres":
        await store.db.execute("UPDATE aijobs_schema SET version = ?", (newer,))
    else:
        await store.db.call(lambda db: db.execute(f"PRAGMA user_version={newer}"))
    late = open_store(Settings(database_url=database_url))
    with pytest.raises(SchemaMismatch, match="newer than this code"):
        await late.open()


async def test_a_store_from_before_the_origin_columns_upgrades_and_keeps_its_jobs(
    database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """SQLite migration 12, PostgreSQL 4: a store at the schema before them (with a job running in it) upgrades; the
    old job reads with no origin and goes on through the sweeper, a new one keeps both ids."""
    old_row = ("old", "u", "summary", "processing", '{"text": "x"}', 2, 1000.0, 1000.0, 1000.0, 1000.0, "t")
    insert = (
        "INSERT INTO jobs (id, user_id, type, status, input, attempts, created_at, updated_at, ready_at, "
        "lease_expires_at, lease_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'old.db'}"
        with contextlib.closing(sqlite3.connect(tmp_path / "old.db")) as db, db:
            for number, sql in enumerate(sqlite_migrations.MIGRATIONS[:-1], start=1):
                for statement in sqlite_migrations.statements(sql):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")
            db.execute(insert, old_row)
        before = len(sqlite_migrations.MIGRATIONS) - 1
    else:
        import psycopg

        url = request.getfixturevalue("postgres").schema_url()
        before = len(pg_migrations.MIGRATIONS) - 1
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            conn.execute("CREATE TABLE aijobs_schema (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO aijobs_schema (version) VALUES (%s)", (before,))
            for sql in pg_migrations.MIGRATIONS[:-1]:
                conn.execute(sql)  # type: ignore[arg-type]
            conn.execute(insert.replace("?", "%s"), old_row)  # type: ignore[arg-type]
    store = open_store(Settings(database_url=url))
    if store.dialect == "postgres":
        await store.open(check_schema=False)  # type: ignore[call-arg]
    else:
        await store.open()  # SQLite migrates at start (migrate() then answers what open found and left)
    try:
        assert await store.migrate() == (before, before + 1)
        old = await store.get("old")
        assert old is not None and (old.request_id, old.traceparent) == (None, None) and old.attempts == 2
        assert [j.id for j in await store.expired_leases()] == ["old"]
        back = await store.take_over("old", "t", status=JobStatus.QUEUED, error=None, step="x", record=None)
        assert back is not None and back.status is JobStatus.QUEUED and back.request_id is None
        new = await store.create(new_job(request_id="req-new", traceparent=None))
        assert (await store.get(new.id)).request_id == "req-new"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_hosts_migrating_at_once_take_turns(postgres: PostgresForTests) -> None:
    """Five processes' `aijobs migrate` against one fresh database at once: one applies, the rest find it done."""
    url = postgres.schema_url()
    stores = [open_store(Settings(database_url=url)) for _ in range(5)]
    for s in stores:
        await s.open(check_schema=False)  # type: ignore[call-arg]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
    finally:
        for s in stores:
            await s.close()
    assert sum(before == 0 for before, _ in results) == 1, results
    assert len({after for _, after in results}) == 1
    check = open_store(Settings(database_url=url))
    await check.open()  # the schema is this code's now
    await check.close()


async def test_an_unreachable_postgres_is_named_without_its_password() -> None:
    from service.embedded import free_port
    from service.store import StoreOpenError
    from service.store.postgres import PostgresJobStore

    store = PostgresJobStore(f"postgresql://aijobs:s3cret@127.0.0.1:{free_port()}/x", connect_timeout=0.5)
    with pytest.raises(StoreOpenError, match="cannot connect to PostgreSQL") as info:
        await store.open()
    assert "s3cret" not in str(info.value) and "aijobs:***@" in str(info.value)


async def test_a_submit_caught_in_a_deadlock_is_run_again(
    postgres: PostgresForTests, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement that takes the same two counter rows in the other order (as a bulk expiry can) deadlocks a submit:
    PostgreSQL rolls the submit back whole, and the store runs it again."""
    import psycopg

    from .conftest import until

    caplog.set_level(logging.INFO, logger="aijobs.store")
    url = migrated_schema_url(postgres)
    other = await psycopg.AsyncConnection.connect(url, autocommit=True)
    if not postgres.client_url:  # (PgBouncer passes no startup options: there, the default 1 s)
        # PostgreSQL looks for a deadlock once, deadlock_timeout after a statement began to wait: the submit's look
        # must come after `other` has closed the cycle, however slowly this machine runs the test in between.
        options = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)).get("options", "")
        url = with_params(url, options=f"{options} -c deadlock_timeout=3s".strip())
    store = open_store(Settings(database_url=url))
    await store.open()
    try:
        await store.create_ranked(new_job("u"), max_active=10)  # the user's counter row exists
        job = new_job("u")
        shard = await count(store, "SELECT hashtext(?) & 63", (job.id,))
        await other.execute("SET deadlock_timeout = '60s'")  # so the submit is the one PostgreSQL picks
        await other.execute("BEGIN")
        await other.execute("UPDATE queue_count SET n = n WHERE shard = %s", (shard,))
        submit = asyncio.create_task(store.create_ranked(job, max_active=10))

        async def blocked() -> bool:  # asked on a connection of its own: a transaction caches pg_stat_activity
            # blocked by `other`: not any lock wait on the server, which other test processes share
            sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE ? = ANY(pg_blocking_pids(pid))"
            return await count(store, sql, (other.info.backend_pid,)) >= 1

        await until(blocked, what="the submit waiting for the queue_count row")
        await other.execute("UPDATE user_active SET n = n WHERE user_id = 'u'")  # the other order: a deadlock
        await other.execute("COMMIT")
        assert await asyncio.wait_for(submit, 30) is not None, "the submit went through on its second run"
        assert await job_queries(store).count_active("u") == 2
        assert any("deadlock" in r.getMessage() for r in caplog.records)
    finally:
        await other.close()
        await store.close()


async def test_a_batch_held_up_by_another_process_runs_its_writes_one_by_one(
    postgres: PostgresForTests, caplog: pytest.LogCaptureFixture
) -> None:
    """A write batch waiting on a row lock another process holds gives up after its lock_timeout (where opposite
    lock orders would wait for the one-second deadlock check) and its writes run one by one: each waits its turn
    and gets its own answer."""
    import psycopg

    from service.store.pg_batch import LOCK_TIMEOUT_MS

    from .conftest import until

    caplog.set_level(logging.INFO, logger="aijobs.store")
    url = migrated_schema_url(postgres)
    store = open_store(Settings(database_url=url))
    await store.open()
    other = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        jobs = [await store.create(new_job("u")) for _ in range(3)]
        for j in jobs:
            await store.claim(j.id, worker_id="w", token="t")
        await other.execute("BEGIN")
        await other.execute("UPDATE user_active SET n = n WHERE user_id = 'u'")  # what each finish's trigger takes
        finishes = asyncio.gather(*(store.finish(j.id, "t", status=JobStatus.COMPLETED) for j in jobs))
        await until(lambda: asyncio.sleep(0, any("write batch refused" in r.getMessage() for r in caplog.records)),
                    what=f"the batch to give up after {LOCK_TIMEOUT_MS} ms")  # fmt: skip
        await other.execute("COMMIT")
        done = await asyncio.wait_for(finishes, 30)
        assert all(j is not None and j.status is JobStatus.COMPLETED for j in done)
        assert await job_queries(store).count_active("u") == 0
    finally:
        await other.close()
        await store.close()
