"""What a store outage becomes, below the end-to-end restart test (test_pg_outage.py): which PostgreSQL errors are
an outage, and which worker writes wait one out."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from service.config import Settings
from service.errors import StoreUnavailable
from service.models import Job, JobError, JobStatus
from service.queue import JobQueue
from service.store.patient import PatientWrites
from service.store.postgres import _unreachable

from .conftest import run_worker, until


def test_an_unreachable_server_is_an_outage_a_statements_own_error_is_not() -> None:
    assert _unreachable(PoolTimeout("no connection in 5 s"))
    assert _unreachable(psycopg.OperationalError("connection refused"))  # client side: no SQLSTATE
    assert _unreachable(psycopg.errors.AdminShutdown())  # 57P01: the server's fast shutdown
    assert _unreachable(psycopg.errors.CannotConnectNow())  # 57P03: still starting
    assert not _unreachable(psycopg.errors.DeadlockDetected())  # 40P01: run again, not an outage
    assert not _unreachable(psycopg.errors.UniqueViolation())
    assert not _unreachable(ValueError("a bug"))


class Flaky:
    """A store whose writes fail as unreachable `down` times, then answer."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.calls: list[str] = []

    async def _write(self, name: str) -> str:
        self.calls.append(name)
        if len(self.calls) <= self.down:
            raise StoreUnavailable()
        return name

    async def finish(self, job_id: str, token: str, **kwargs: Any) -> str:
        return await self._write("finish")

    async def renew(self, job_id: str, token: str, **kwargs: Any) -> str:
        return await self._write("renew")

    async def requeue(self, job_id: str, token: str, **kwargs: Any) -> str:
        return await self._write("requeue")


async def test_a_finish_is_held_until_the_store_answers() -> None:
    store = Flaky(down=3)
    patient = PatientWrites(store, first=0.001, longest=0.004)
    assert await patient.finish("j", "t", status="completed") == "finish"
    assert store.calls == ["finish"] * 4  # three refused, the fourth written: nothing lost


async def test_renew_is_not_patient_so_the_heartbeat_sees_the_outage() -> None:
    patient = PatientWrites(Flaky(down=1), first=0.001)
    with pytest.raises(StoreUnavailable):
        await patient.renew("j", "t")


async def test_a_held_write_stops_when_its_run_is_stopped() -> None:
    store = Flaky(down=10**9)
    task = asyncio.ensure_future(PatientWrites(store, first=0.001, longest=0.001).finish("j", "t"))

    async def tried() -> bool:
        return len(store.calls) >= 3

    await until(tried, what="a few tries")
    task.cancel()  # a lapsed lease (the heartbeat's stop) or a shutdown: the held write goes with the run
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_at_shutdown_a_held_write_gives_up_instead_of_waiting_for_the_store() -> None:
    """Past SHUTDOWN_GRACE the worker exits whatever the store does: a held write fails at its next try, a new one
    after a single try (its lease lapses and another worker's sweeper hands the job on)."""
    store = Flaky(down=10**9)
    patient = PatientWrites(store, first=0.001, longest=0.001)
    held = asyncio.ensure_future(patient.finish("j", "t"))

    async def tried() -> bool:
        return len(store.calls) >= 3

    await until(tried, what="a few tries")
    patient.give_up()
    with pytest.raises(StoreUnavailable):
        await held
    before = len(store.calls)
    with pytest.raises(StoreUnavailable):
        await patient.requeue("j", "t")
    assert len(store.calls) == before + 1  # tried once, not held


class Refusing(Flaky):
    """Back after the outage, but the run's lease lapsed meanwhile: the fenced write is refused (None)."""

    async def _write(self, name: str) -> Any:
        await super()._write(name)
        return None


async def test_a_held_write_refused_once_the_store_is_back_is_not_logged_as_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aijobs.store")
    assert await PatientWrites(Refusing(down=2), first=0.001).finish("j", "t") is None
    said = [r.getMessage() for r in caplog.records]
    assert "store back: write done" not in said, said
    assert any(m.startswith("store back: write refused") for m in said), said


@pytest.mark.parametrize("ends", ["result", "error"])
async def test_a_run_whose_final_write_is_refused_says_so_and_claims_no_outcome(
    settings: Settings, caplog: pytest.LogCaptureFixture, ends: str
) -> None:
    """The lease lapsed and another worker's sweeper took the job over while the provider call was out: the run's
    final write (`finish`) is refused, and its log says the result is dropped, not "job completed" (or "failed")."""
    from service.runner import RunContext
    from service.store import open_store
    from service.tasks import TaskRegistry
    from service.tasks.summary import SummaryInput

    caplog.set_level(logging.INFO, logger="aijobs")
    sweeper = open_store(settings)
    await sweeper.open()
    registry = TaskRegistry()

    @registry.task("summary", input=SummaryInput, max_attempts=1)
    async def taken_over(ctx: RunContext, data: SummaryInput) -> dict[str, str]:
        """Taken over mid-run."""
        await sweeper.renew(ctx.job_id, ctx.token, lease_seconds=-1)  # lapsed, as after a long outage
        error = JobError(message="The worker running this job stopped responding.", code="worker_lost")
        taken = await sweeper.take_over(
            ctx.job_id, ctx.token, status=JobStatus.FAILED, error=error, step="Failed", record=None
        )
        assert taken is not None
        if ends == "error":
            raise ValueError("the provider said no")
        return {"summary": "too late"}

    try:
        async with run_worker(settings, registry=registry) as worker:
            job = Job(id=uuid.uuid4().hex, user_id="u", type="summary", input={"text": "Hello."})
            await sweeper.create(job)

            async def started() -> bool:
                return worker.pool is not None  # type: ignore[attr-defined]

            await until(started, what="the worker's Redis pool")
            queue = JobQueue(worker.pool, queue_name=settings.queue_name)  # type: ignore[attr-defined]
            await queue.enqueue(job.id, ticket=job.seq, priority=job.priority)

            async def over() -> bool:
                return any(r.getMessage().startswith("lease lost: the job was taken over") for r in caplog.records)

            await until(over, what="the run's end")
    finally:
        await sweeper.close()
    said = [r.getMessage() for r in caplog.records if getattr(r, "job_id", None) == job.id]
    assert "job completed" not in said and "job failed" not in said, said
    stored = await _stored(settings, job.id)
    assert stored.status is JobStatus.FAILED and stored.error is not None and stored.error.code == "worker_lost"


async def _stored(settings: Settings, job_id: str) -> Job:
    from service.store import open_store

    store = open_store(settings)
    await store.open()
    try:
        job = await store.get(job_id)
    finally:
        await store.close()
    assert job is not None
    return job
