"""What a store outage becomes, below the end-to-end restart test (test_pg_outage.py): which PostgreSQL errors are
an outage, and which worker writes wait one out."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from service.errors import StoreUnavailable
from service.store.patient import PatientWrites
from service.store.postgres import _unreachable

from .conftest import until


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
