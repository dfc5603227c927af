"""service/arq_worker.py against the installed arq (issue 15.14): what it overrides and calls still has the
signatures it was written for, and a fast path that fails falls back to arq's own code with no job lost.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import arq.connections
import arq.jobs
import arq.utils
import httpx
import pytest
from arq import Worker
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Function
from redis.exceptions import ResponseError

from service import arq_worker
from service.arq_worker import WakeableWorker
from service.config import Settings
from service.worker import build_worker

from .conftest import run_worker, until, wait_for_status
from .test_wire import pinned

# What arq_worker.py overrides or calls, with the parameters (name, kind) it relies on, as in arq 0.28.0.
P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
SIGNATURES: dict[str, tuple[Callable[..., Any], list[tuple[str, Any]]]] = {
    # replaced
    "Worker.main": (Worker.main, [("self", P)]),
    "Worker._poll_iteration": (Worker._poll_iteration, [("self", P)]),
    "Worker.start_jobs": (Worker.start_jobs, [("self", P), ("job_ids", P)]),
    "Worker._release_sem_dec_counter_on_complete": (Worker._release_sem_dec_counter_on_complete, [("self", P)]),
    # called
    "Worker.run_job": (Worker.run_job, [("self", P), ("job_id", P), ("score", P)]),
    "Worker.finish_job": (
        Worker.finish_job,
        [
            ("self", P),
            ("job_id", P),
            ("finish", P),
            ("result_data", P),
            ("result_timeout_s", P),
            ("keep_result_forever", P),
            ("incr_score", P),
            ("keep_in_progress", P),
        ],
    ),
    "Worker.finish_failed_job": (Worker.finish_failed_job, [("self", P), ("job_id", P), ("result_data", P)]),
    "Worker.heart_beat": (Worker.heart_beat, [("self", P)]),
    "Worker._cancel_aborted_jobs": (Worker._cancel_aborted_jobs, [("self", P)]),
    "Worker._jobs_started": (Worker._jobs_started, [("self", P)]),
    "deserialize_job_raw": (arq.jobs.deserialize_job_raw, [("r", P), ("deserializer", K)]),
    "ms_to_datetime": (arq.utils.ms_to_datetime, [("unix_ms", P)]),
    "timestamp_ms": (arq.utils.timestamp_ms, []),
}
# Worker state the module reads or sets (set by arq's __init__).
WORKER_ATTRS = (
    "sem",
    "job_counter",
    "max_jobs",
    "tasks",
    "queue_name",
    "in_progress_timeout_s",
    "retry_jobs",
    "allow_abort_jobs",
    "functions",
    "job_deserializer",
    "job_serializer",
    "keep_result_s",
    "keep_result_forever",
    "max_tries",
    "job_timeout_s",
    "ctx",
    "on_startup",
    "on_job_start",
    "on_job_end",
    "after_job_end",
    "jobs_failed",
    "jobs_complete",
    "jobs_retried",
    "burst",
    "max_burst_jobs",
    "allow_pick_jobs",
    "queue_read_limit",
    "poll_delay_s",
    "_pool",
    "redis_settings",
    "expires_extra_ms",
    "loop",
)


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_what_it_overrides_and_calls_has_the_signature_it_was_written_for(name: str) -> None:
    fn, expected = SIGNATURES[name]
    params = list(inspect.signature(fn).parameters.values())
    got = [(p.name, p.kind) for p in params]
    assert got[: len(expected)] == expected, f"arq's {name} changed: {got}"
    extra = [p.name for p in params[len(expected) :] if p.default is inspect.Parameter.empty]
    assert not extra, f"arq's {name} now also requires {extra}"
    mine = getattr(WakeableWorker, name.removeprefix("Worker."), None) if name.startswith("Worker.") else None
    if mine is not None:  # an override is awaited where arq awaits the original, or called where it is called
        assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(fn)


def test_the_rest_it_relies_on_is_there() -> None:
    create_pool = inspect.signature(arq.connections.create_pool).parameters
    assert {"job_serializer", "job_deserializer", "default_queue_name", "expires_extra_ms"} <= set(create_pool)
    fields = set(Function.__dataclass_fields__)  # type: ignore[attr-defined]
    assert {"coroutine", "timeout_s", "keep_result_s", "keep_result_forever", "max_tries"} <= fields
    # The Lua scripts build arq's keys from these prefixes: the same keys arq's own commands use.
    assert (in_progress_key_prefix, job_key_prefix, retry_key_prefix) == ("arq:in-progress:", "arq:job:", "arq:retry:")


async def test_the_worker_state_it_reads_is_set_by_arq(settings: Settings) -> None:
    assert settings.redis_url
    worker = build_worker(settings, redis_url=settings.redis_url, handle_signals=False)
    missing = [a for a in WORKER_ATTRS if not hasattr(worker, a)]
    assert not missing, f"arq's Worker no longer sets {missing}"


def test_arq_is_pinned_to_the_version_the_module_mirrors() -> None:
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(pinned("arq"))
    assert any(s.operator == "<" for s in spec), "arq needs an upper bound: arq_worker.py replaces its internals"
    assert version("arq") in spec
    assert version("arq").startswith(arq_worker.ARQ_VERSION + ".")
    assert f"arq {arq_worker.ARQ_VERSION}" in (arq_worker.__doc__ or "")


async def broken_script(**_: Any) -> Any:
    raise ResponseError("ERR Error running script (injected): arq's keys are not what the script expects")


def injected(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Fault one fast path of every worker built from here on."""
    init = WakeableWorker.__init__

    def faulty_init(self: WakeableWorker, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if where == "take":
            self._take_script = broken_script
            self._start_script = broken_script
        elif where == "finish":
            self._finished_script = broken_script

    monkeypatch.setattr(WakeableWorker, "__init__", faulty_init)
    if where == "read":

        def bad_read(*_: Any, **__: Any) -> Any:
            raise TypeError("deserialize_job_raw() got an unexpected keyword argument 'deserializer' (injected)")

        monkeypatch.setattr(arq_worker, "deserialize_job_raw", bad_read)


@pytest.mark.parametrize("where", ["take", "read", "finish"])
async def test_a_failing_fast_path_falls_back_to_arq_and_every_job_completes_once(
    where: str,
    settings: Settings,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    injected(monkeypatch, where)
    with caplog.at_level(logging.ERROR, logger="aijobs.worker"):
        async with run_worker(settings) as worker:
            ids = []
            for i in range(3):
                r = await client.post("/api/jobs", json={"type": "titles", "input": {"text": f"Fallback {where} {i}"}})
                assert r.status_code == 202, r.text
                ids.append(r.json()["job_id"])
            for job_id in ids:
                body = await wait_for_status(client, job_id, {"completed", "failed"})
                assert body["status"] == "completed" and body["attempt"] == 1, body
            assert worker.arq_path, "the worker now runs on arq's own path"  # type: ignore[attr-defined]
            redis = worker.pool

            async def cleared() -> bool:  # arq's finish runs after our store write, so it may trail the status
                running = [k for job_id in ids for k in await redis.keys(in_progress_key_prefix + job_id + "*")]
                return await redis.zcard(settings.queue_name) == 0 and not running

            await until(cleared, what="nothing left on the queue and no job left marked running")
    logged = [r for r in caplog.records if "worker fast path failed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info, "logged once, with the error"
