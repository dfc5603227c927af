"""The lifecycle around every task run: claim, progress, output, result, error, each fenced and announced.

Order matters: a state change is written to the store first (conditional on this run's lease token), and only
a write the store accepted is published as an event, with the seq the store gave it. Progress and output are
announced as they come but reach the store only at checkpoints (RunContext); between two, the Redis log fences
them. A run that lost its lease (taken over, cancelled) therefore can neither change the job nor show users
anything past what it had announced before the take-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import logs, tracing
from ..coalesce import Coalescer
from ..coordination import ProviderBackoff
from ..errors import StoreUnavailable
from ..events import EventLog, announcement
from ..governor import Governor, NotAdmitted, RateLimitWaits, rate_limit_delay
from ..metrics import Metrics
from ..models import Job, JobError, JobStatus, dumps
from ..providers.base import Provider
from ..providers.errors import RateLimited
from ..queue import JobQueue
from ..redis_silence import RedisSilent
from ..store.base import JobStore
from ..tasks.registry import TaskRegistry, TaskSpec
from ..tracing import Tracing
from .context import LeaseLost, RecordingProvider, RunContext
from .policy import HeldBack, KeyElsewhere, attempt_record, retry_delay, to_job_error

log = logging.getLogger("aijobs.runner")

GOVERNED_MEMORY = 100_000  # jobs waiting for the governor that one process remembers (about 100 bytes each)


ProviderKeyOpener = Callable[[Job], Awaitable[str | None]]  # the user's own provider key for a job, if any


@dataclass
class ActiveRun:
    """One attempt in flight in this process: its token, its task, and why we stopped it (if we did)."""

    job_id: str
    token: str
    task: asyncio.Task[Any] | None = None
    stop_reason: str | None = None  # "cancel" | "lease_lost"
    renewed: float = field(default_factory=time.monotonic)  # when the lease was last taken or renewed

    _cancelled: bool = False  # stop() cancelled the task

    def stop(self, reason: str) -> None:
        """Stop the attempt (once): the task running it gets a CancelledError where it waits."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        if self.task is not None and not self.task.done():
            self._cancelled = self.task.cancel()

    def settle(self) -> bool:
        """The attempt is over: a later stop() cancels nothing, and our own cancel is taken back (the task goes
        on to record the outcome). True if the task is still being cancelled by someone else (a shutdown)."""
        task, self.task = self.task, None
        if task is None:
            return False
        if self._cancelled:
            self._cancelled = False
            task.uncancel()
        return task.cancelling() > 0


class JobRunner:
    """Runs one attempt of one job; shared by every arq job in a worker process.

    The attempt holds a lease in the store, renewed by a heartbeat; a heartbeat that finds the lease gone
    (taken over after a pause) or the job flagged for cancel stops the task at once. One heartbeat loop
    serves every run in the process (their renewals go to the store together), not a timer task per run.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        events: EventLog,
        queue: JobQueue,
        registry: TaskRegistry,
        provider: Provider,
        worker_id: str,
        default_timeout: float,
        provider_keys: ProviderKeyOpener | None = None,
        lease_seconds: float = 30.0,
        heartbeat_seconds: float = 10.0,
        retry_base: float = 1.0,
        retry_cap: float = 30.0,
        chat_models: tuple[str, ...] = (),
        backoff: ProviderBackoff | None = None,
        providers: dict[str, Provider] | None = None,
        waits: RateLimitWaits | None = None,
        governor: Governor | None = None,
        coalescer: Coalescer | None = None,
        result_cache_seconds: float = 0.0,
        on_end: Callable[[Job], None] | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.tracing = tracing if tracing is not None else Tracing()
        self.store = store
        self.on_end = on_end  # told of every job a run ends (the worker wakes its webhook dispatcher)
        self.events = events
        self.queue = queue
        self.registry = registry
        self.provider = provider
        self.worker_id = worker_id
        self.default_timeout = default_timeout
        self.provider_keys: ProviderKeyOpener | None = provider_keys
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.chat_models = chat_models
        self.backoff = backoff
        self.waits = waits
        self.governor = governor
        self.coalescer = coalescer  # used by the types that opted in (TaskSpec.coalesce)
        self.result_cache_seconds = result_cache_seconds  # their cache TTL unless the type sets its own
        self.governor_spread = governor.horizon / 2 if governor is not None else 0.0
        # Jobs this process sent back to wait for the governor: job id -> (scope, model, tokens, user, when it waited
        # for a limit). Asked again before they are claimed, so waiting costs no claim, store write or event (a job that
        # another process sent back is claimed first, and remembered here from then on).
        self._waiting: dict[str, tuple[str, str, int, str, float]] = {}
        # What a chain entry `name:model` may name; the primary (self.provider) is the only one a user's key is for.
        self.providers: dict[str, Provider] = {**(providers or {}), provider.name: provider}
        self.active: dict[str, ActiveRun] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._steps: str | None = None

    def cancel_local(self, job_id: str) -> None:
        """A cancel message arrived: stop the run if this process holds it (others ignore it)."""
        run = self.active.get(job_id)
        if run is not None:
            run.stop("cancel")

    def chain(self, spec: TaskSpec[Any]) -> tuple[str, ...]:
        if spec.models:
            return spec.models
        return self.chat_models if spec.kind == "chat" else ()

    def resolve(self, entry: str) -> tuple[Provider, str]:
        """A chain entry: `provider:model` when the part before the colon names a provider, else a model of the
        primary provider (so `llama3:8b` stays a model name)."""
        name, sep, model = entry.partition(":")
        if sep and name in self.providers:
            provider = self.providers[name]
            return provider, model or provider.default_model
        return self.provider, entry

    def _entry_at(self, spec: TaskSpec[Any], index: int) -> tuple[Provider, str | None]:
        chain = self.chain(spec)
        if not chain:
            return self.provider, None
        return self.resolve(chain[min(index, len(chain) - 1)])

    def steps(self) -> str:
        """Every type's chain as the claim records it (JSON: type -> one {"provider", "model"} per step, each as
        `_entry_at` resolves it and as attempt records name it), so the claim's own write says what an attempt runs
        on, for the sweeper to name if the attempt is lost. Built once: the registry is complete before work starts."""
        if self._steps is None:
            table: dict[str, list[dict[str, str]]] = {}
            for spec in self.registry:
                table[spec.name] = []
                for index in range(max(1, len(self.chain(spec)))):
                    provider, model = self._entry_at(spec, index)
                    table[spec.name].append({"provider": provider.name, "model": model or provider.default_model})
            self._steps = dumps(table)
        return self._steps

    def _next_entry(self, spec: TaskSpec[Any], index: int, *, user_key: bool) -> int | None:
        """The chain position to try after `index`; a job carrying the user's own key skips other providers (the
        key is for the primary alone, and the server's keys are never used in its place)."""
        chain = self.chain(spec)
        for following in range(index + 1, len(chain)):
            if not user_key or self.resolve(chain[following])[0] is self.provider:
                return following
        return None

    async def _announce(self, job: Job | None) -> Job | None:
        """Publish the status event of a write the store accepted. A terminal one is queued, not awaited: the slot
        frees without waiting for Redis, and it still goes out once and after the job's other events (they were
        published or queued before it, and the batch keeps their order). Should the process die first, the store
        holds the terminal state, and a watcher resyncs from it (a gap or the stream's idle check) as it does when
        any publish fails."""
        if job is not None:
            if job.terminal:
                self._announce_soon(job)
                if self.on_end is not None:
                    self.on_end(job)
            else:
                await self.events.announce(job)
        return job

    def _announce_soon(self, job: Job) -> None:
        """Queue the job's status event without waiting for Redis (what follows is queued after it).

        The job's log refusing it (it holds that seq or a newer one) is said as a warning: nothing the run announces
        follows its final write, so for a run's claim or end that is a bug in the seq accounting or a re-announce
        that raced it, and a watcher then learns the state only from the store (its resync). Not announced again
        with a fresh seq: that seq would be one the store's row never had (snapshots' `last_seq` and the log would
        disagree), and where the log already holds this very end it would be told twice."""

        def done(future: asyncio.Future[int]) -> None:
            exc = None if future.cancelled() else future.exception()
            # a silent Redis is said once (service/redis_silence.py), and the job re-announced when it answers
            if exc is not None and not isinstance(exc, RedisSilent):
                log.warning("could not publish an event", extra={"job_id": job.id, "error": repr(exc)})
            elif exc is None and not future.cancelled() and not future.result():
                log.warning(
                    "the job's event log refused its status event (it holds that seq or a newer one)",
                    extra={
                        "job_id": job.id,
                        "user_id": job.user_id,
                        "attempt": job.attempts,
                        "event": f"status:{job.status.value}",
                        "seq": job.seq,
                        "terminal": job.terminal,
                    },
                )

        try:
            self.events.publish_soon(job.user_id, announcement(job)).add_done_callback(done)
        except Exception as exc:
            log.warning("could not publish an event", extra={"job_id": job.id, "error": repr(exc)})

    async def _enqueue(self, job: Job, delay: float = 0.0) -> None:
        if job.status is not JobStatus.QUEUED:  # a cancel arrived while it was being given back
            return
        origin = tracing.current()  # the submitting request's ids go with every spell of the job
        try:
            await self.queue.enqueue(
                job.id,
                ticket=job.seq,
                priority=job.priority,
                defer_seconds=delay,
                origin=origin.enqueue_kwargs() if origin is not None else None,
            )
        except Exception as exc:  # the reconciler enqueues whatever the store has queued and Redis lacks
            log.warning("could not enqueue; the reconciler will", extra={"job_id": job.id, "error": repr(exc)})

    async def run(self, job_id: str, ticket: int | None = None) -> str:
        if self.backoff is not None:
            await self._check_backoff(job_id, ticket)
        if self._waiting and job_id in self._waiting:
            await self._check_governor(job_id)
        token = os.urandom(16).hex()  # as unique as uuid4().hex, without building a UUID per job
        try:
            job = await self.store.claim(
                job_id,
                worker_id=self.worker_id,
                token=token,
                ticket=ticket,
                lease_seconds=self.lease_seconds,
                steps=self.steps(),
            )
        except Exception as exc:  # nothing started: the job stays on the queue for when the store answers
            raise StoreUnavailable(f"the store could not record the claim: {exc!r}") from exc
        announce: Callable[[], None] | None = None
        if job is not None:  # `processing` is queued as the task starts (_announce_at_start): its own events follow it
            announce = self._announce_at_start(job)
            self._waiting.pop(job_id, None)
        if job is None:
            current = await self.store.get(job_id)
            log.info("job not claimable", extra={"job_id": job_id, "status": current and current.status.value})
            return "skipped"
        fields = logs.bind(job_id=job.id, user_id=job.user_id, attempt=job.attempts)  # every line of this attempt
        try:
            self.metrics.attempt_started(job.type, job.updated_at - (job.ready_at or job.created_at))
            origin = tracing.current()
            with self.tracing.span(
                f"run {job.type}",
                kind="consumer",
                parent=origin.traceparent if origin is not None else None,
                attributes={"aijobs.job_id": job.id, "aijobs.job_type": job.type, "aijobs.attempt": job.attempts},
            ) as span:
                outcome = await self._run_claimed(job, token, announce)
                if span is not None:
                    span.set_attribute("aijobs.outcome", outcome)
            return outcome
        except Exception as exc:  # arq logs the traceback, after this attempt's fields are unbound: say it here too
            log.error(
                "attempt stopped by an unexpected error; its lease lapses and the sweeper takes the job back",
                extra={"error": repr(exc)},
            )
            raise
        finally:
            logs.unbind(fields)

    def _announce_at_start(self, job: Job) -> Callable[[], None]:
        """Queue the claim's `processing` at the next turn of the loop, once the task has started (queueing it
        cost ~0.08 ms of a job's start on an idle worker), or before the task's first event should that come
        first (RunContext.announce_start): either way ahead of every other event of the attempt, each of which
        is queued after a turn of the loop (a store write, a round trip) or through the RunContext."""
        claimed: list[Job] = [job]

        def announce() -> None:
            if claimed:
                self._announce_soon(claimed.pop())

        asyncio.get_running_loop().call_soon(announce)
        return announce

    async def _run_claimed(self, job: Job, token: str, announce: Callable[[], None] | None = None) -> str:
        """One attempt of a job this run has claimed, to its outcome."""
        spec = self.registry.get(job.type)
        provider, model = self._entry_at(spec, job.model_index)
        ai = RecordingProvider(
            provider,
            model=model,
            governor=self.governor,
            holder=job.id,
            user=job.user_id,
            coalescer=self.coalescer if spec.coalesce else None,
            cache_ttl=self.result_cache_seconds if spec.cache_ttl is None else spec.cache_ttl,
            metrics=self.metrics,
            tracing=self.tracing,
        )
        ctx = RunContext(
            job_id=job.id,
            user_id=job.user_id,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            token=token,
            ai=ai,
            store=self.store,
            events=self.events,
            seq=job.seq,
            announce_start=announce,
        )
        run = ActiveRun(job.id, token)
        self.active[job.id] = run
        if self._heartbeat_task is None or self._heartbeat_task.done():
            # shared by every run: not in this run's context (its log fields, its span)
            self._heartbeat_task = asyncio.create_task(self._heartbeats(), context=contextvars.Context())
        started = time.monotonic()
        log.info("job started", extra={"job_id": job.id, "type": job.type, "attempt": job.attempts})
        try:
            run.task = asyncio.current_task()  # the attempt runs in this task: stop() cancels it, settle() undoes that
            try:
                try:
                    result, unstored, announced = await self._attempt(spec, ctx, job)
                finally:
                    shutdown = run.settle()
            except asyncio.CancelledError:
                self.metrics.attempt_ended(job.type, time.monotonic() - started)
                if run.stop_reason == "cancel":
                    await asyncio.shield(self._cancelled(job, token, ctx, time.monotonic() - started))
                    if shutdown:
                        raise
                    return "cancelled"
                if run.stop_reason == "lease_lost" and not shutdown:
                    log.warning("lease lost, run stopped", extra={"job_id": job.id})
                    return "lease_lost"
                # Shutdown: give the job back without spending the attempt.
                await self._give_back(job, token, ctx)
                raise
            except LeaseLost:
                self.metrics.attempt_ended(job.type, time.monotonic() - started)
                log.warning("lease lost, run abandoned", extra={"job_id": job.id})
                return "lease_lost"
            except Exception as exc:
                return await self._failed(job, spec, token, ctx, exc, time.monotonic() - started)
            seconds = time.monotonic() - started
            self.metrics.attempt_ended(job.type, seconds)
            finished = await self._announce(
                await self.store.finish(
                    job.id,
                    token,
                    status=JobStatus.COMPLETED,
                    result=result,
                    model=ai.model,
                    usage=ai.usage(),
                    record=attempt_record(job, ai.model or model or ai.default_model, None, seconds, ai.name),
                    append_output=unstored,
                    seq=announced,
                )
            )
            if self.waits is not None and job.error is not None and job.error.code == RateLimited.code:
                await self.waits.clear(job.id)  # it had waited for a rate limit: that wait is over
            if not finished:
                return _dropped(job, "result")
            self.metrics.job_finished(job.type, JobStatus.COMPLETED.value)
            log.info("job completed", extra={"job_id": job.id, "type": job.type, "seconds": round(seconds, 3)})
            return "completed"
        finally:
            ctx.close()
            if self.active.get(job.id) is run:
                del self.active[job.id]

    async def _check_governor(self, job_id: str) -> None:
        """Before claiming a job that waits for the governor: hold it back (HeldBack) until it has a slot."""
        assert self.governor is not None
        scope, model, tokens, user, since = self._waiting[job_id]
        wait, reserved = await self.governor.admit(scope, model, tokens, job_id, user=user, book=True)
        if wait <= 0:
            del self._waiting[job_id]
            return  # a slot is booked for its call: claim it and run
        max_wait = self.waits.max_wait if self.waits is not None else float("inf")
        if time.time() - since + wait > max_wait:
            del self._waiting[job_id]
            return  # it will not get a slot in time: the claimed run fails it, saying so
        raise HeldBack(wait + (0.02 if reserved else random.uniform(0.02, 0.02 + self.governor_spread)))

    async def _check_backoff(self, job_id: str, ticket: int | None) -> None:
        assert self.backoff is not None
        if not await self.backoff.maybe_paused():
            return  # no provider/model is paused: no need to read the job for its model
        try:
            job = await self.store.get(job_id)
        except Exception as exc:
            raise StoreUnavailable(f"the store could not record the claim: {exc!r}") from exc
        if job is None or job.status is not JobStatus.QUEUED or (ticket is not None and job.seq != ticket):
            return  # the claim will refuse it
        spec = self.registry.get(job.type)
        provider, model = self._entry_at(spec, job.model_index)
        wait = await self.backoff.remaining(provider.name, model or provider.default_model)
        if wait > 0:
            raise HeldBack(wait)

    async def _attempt(self, spec: TaskSpec[Any], ctx: RunContext, job: Job) -> tuple[Any, str | None, int | None]:
        """The task's result, and what of its output and events the finish must still store (RunContext.final)."""
        data = spec.parse_input(job.input)
        if self.provider_keys is not None:
            ctx.api_key = await self.provider_keys(job)  # the user's own key, decrypted just in time
            if ctx.api_key is not None and ctx.ai.inner is not self.provider:
                ctx.api_key = None  # never sent to another provider, and no server key used in its place either
                raise KeyElsewhere(
                    f"Your provider key is for {self.provider.name}; this step of the chain is {ctx.ai.name}."
                )
        async with asyncio.timeout(spec.timeout or self.default_timeout):  # no extra task, unlike wait_for
            result = await spec.fn(ctx, data)
        # The final checkpoint rides in the finish: the store's seq reaches every event announced in that write.
        unstored, announced = await ctx.final()
        return result, unstored, announced

    async def _heartbeats(self) -> None:
        """Every heartbeat, renew the lease of every run (all at once); ends when no run is left."""
        while self.active:
            await asyncio.sleep(self.heartbeat_seconds)
            runs = [r for r in self.active.values() if r.stop_reason is None]
            await asyncio.gather(*(self._renew(run) for run in runs))

    async def _renew(self, run: ActiveRun) -> None:
        """Renew one lease; stop the run when it is gone, flagged for cancel, or unrenewable for a whole lease.

        Bounded: a renewal on a path to the store that went silent (packets dropped, no reset) may get no answer for
        as long as TCP keeps trying, and a heartbeat waiting for it would never see the lease lapse, so the run would
        go on (holding, say, a coalescing lock in Redis that the job's new owner then waits on). One that outlasts
        the lease left to it counts as failed (the batch it rides in goes on; only this wait ends)."""
        left = max(self.heartbeat_seconds, run.renewed + self.lease_seconds - time.monotonic())
        try:
            async with asyncio.timeout(left):
                job = await self.store.renew(run.job_id, run.token, lease_seconds=self.lease_seconds)
        except Exception as exc:
            log.warning("lease renewal failed", extra={"job_id": run.job_id, "error": repr(exc)})
            if time.monotonic() - run.renewed > self.lease_seconds:
                run.stop("lease_lost")
            return
        if job is None:
            run.stop("lease_lost")
            return
        run.renewed = time.monotonic()
        if job.cancel_requested:
            run.stop("cancel")

    async def _cancelled(self, job: Job, token: str, ctx: RunContext, seconds: float) -> None:
        """Stopped on request: keep the partial output, say `cancelled`, all fenced by this run's token."""
        try:
            await ctx.checkpoint()
        except LeaseLost:
            return
        error = JobError(message="Cancelled on request.", code="cancelled", retryable=False)
        finished = await self._announce(
            await self.store.finish(
                job.id,
                token,
                status=JobStatus.CANCELLED,
                model=ctx.ai.model,
                usage=ctx.ai.usage(),
                record=attempt_record(job, ctx.ai.model or ctx.ai.requested, error, seconds, ctx.ai.name),
            )
        )
        if not finished:
            _dropped(job, "cancel")
            return
        self.metrics.job_finished(job.type, JobStatus.CANCELLED.value)
        log.info("job cancelled", extra={"job_id": job.id})

    async def _give_back(self, job: Job, token: str, ctx: RunContext) -> None:
        async def give_back() -> None:
            with contextlib.suppress(LeaseLost):
                await ctx.checkpoint()
            requeued = await self._announce(
                await self.store.requeue(job.id, token, error=None, step="Waiting for a worker…", refund=True)
            )
            if requeued is not None:
                await self._enqueue(requeued)
                log.info("job given back on shutdown", extra={"job_id": job.id})

        try:
            await asyncio.shield(give_back())
        except StoreUnavailable as exc:  # the worker does not wait for the store to exit (PatientWrites.give_up)
            log.warning(
                "store unavailable at shutdown: job not given back; its lease lapses and another worker's sweeper "
                "hands it on",
                extra={"job_id": job.id, "error": repr(exc.__cause__ or exc)},
            )
        except Exception:
            log.exception("could not give the job back", extra={"job_id": job.id})

    async def _failed(
        self, job: Job, spec: TaskSpec[Any], token: str, ctx: RunContext, exc: Exception, seconds: float
    ) -> str:
        error = to_job_error(exc)
        model = ctx.ai.model or ctx.ai.requested or ctx.ai.default_model
        record = attempt_record(job, model, error, seconds, ctx.ai.name)
        outcome = await self._failed_to(job, spec, token, ctx, exc, error, model, record, seconds)
        self.metrics.attempt_ended(
            job.type,
            seconds,
            code=None if outcome == "lease_lost" else error.code,  # another run took the job: its outcome counts
            requeued=outcome in ("retrying", "fallback", "rate_limited"),
        )
        if outcome == "failed":
            self.metrics.job_finished(job.type, JobStatus.FAILED.value)
        return outcome

    async def _failed_to(
        self,
        job: Job,
        spec: TaskSpec[Any],
        token: str,
        ctx: RunContext,
        exc: Exception,
        error: JobError,
        model: str,
        record: dict[str, Any],
        seconds: float,
    ) -> str:
        """Where a failed attempt sends its job: back to the queue (retry, fallback, rate-limit wait) or to failed."""
        if ctx.unsaved:
            try:
                await ctx.checkpoint()
            except LeaseLost:
                return "lease_lost"
        retry_after = getattr(exc, "retry_after", None)
        governed = self.governor is not None and getattr(ctx.ai.inner, "enforces_limits", True)
        if isinstance(exc, RateLimited) and retry_after and self.backoff is not None and not governed:
            with contextlib.suppress(Exception):
                await self.backoff.pause(ctx.ai.name, model, float(retry_after))
        if isinstance(exc, RateLimited):
            return await self._rate_limited(job, token, exc, record, seconds)
        chain = self.chain(spec)
        if error.retryable and job.attempts < job.max_attempts:
            delay = retry_delay(job.attempts, retry_after, base=self.retry_base, cap=self.retry_cap)
            step = f"Retrying in {delay:.0f} s (attempt {job.attempts + 1} of {job.max_attempts})…"
            requeued = await self._announce(
                await self.store.requeue(job.id, token, error=error, step=step, delay=delay, record=record)
            )
            if requeued is None:
                return "lease_lost"
            await self._enqueue(requeued, delay)
            log.warning(
                "job attempt failed, retrying",
                extra={"job_id": job.id, "code": error.code, "attempt": job.attempts, "delay": delay},
            )
            return "retrying"
        following = self._next_entry(
            spec, job.model_index, user_key=ctx.api_key is not None or isinstance(exc, KeyElsewhere)
        )
        if following is not None:
            step = f"{model} failed ({error.code}); trying {chain[following]}…"
            requeued = await self._announce(
                await self.store.requeue(
                    job.id, token, error=error, step=step, next_model=following - job.model_index, record=record
                )
            )
            if requeued is None:
                return "lease_lost"
            await self._enqueue(requeued)
            log.warning(
                "model failed, falling back", extra={"job_id": job.id, "model": model, "next": chain[following]}
            )
            return "fallback"
        finished = await self._announce(
            await self.store.finish(
                job.id,
                token,
                status=JobStatus.FAILED,
                error=error,
                model=ctx.ai.model,
                usage=ctx.ai.usage(),
                record=record,
            )
        )
        if not finished:
            return _dropped(job, "failure")
        log.warning(
            "job failed",
            extra={"job_id": job.id, "code": error.code, "error": error.message, "seconds": round(seconds, 3)},
        )
        return "failed"

    async def _rate_limited(
        self, job: Job, token: str, exc: RateLimited, record: dict[str, Any], seconds: float
    ) -> str:
        """The provider said "not now": back to the queue with the attempt given back, delayed until its budget
        should allow the call, unless the job has already waited longer than RATE_LIMIT_MAX_WAIT for it."""
        clock = time.time()
        since = await self.waits.since(job.id, clock) if self.waits is not None else clock
        waited = clock - since
        max_wait = self.waits.max_wait if self.waits is not None else float("inf")
        if isinstance(exc, NotAdmitted) and len(self._waiting) < GOVERNED_MEMORY:
            self._waiting[job.id] = (exc.scope, exc.model, exc.tokens, job.user_id, since)
        if isinstance(exc, NotAdmitted) and exc.reserved:
            delay = (exc.retry_after or 0.0) + 0.02  # the governor keeps a slot for then: come back for it, not later
        elif isinstance(exc, NotAdmitted):  # no slot within the horizon yet: back when there may be, spread out
            delay = (exc.retry_after or 0.0) + random.uniform(0.02, 0.02 + self.governor_spread)
        else:
            delay = rate_limit_delay(waited, exc.retry_after, base=self.retry_base, cap=self.retry_cap)
        if waited + delay > max_wait:
            asks = f" and it asks for {exc.retry_after:.0f} s more" if exc.retry_after and exc.retry_after > 1 else ""
            why = (
                f"The AI provider's rate limit has no room for this job for another {delay:.0f} s (the jobs ahead "
                f"of it use the budget until then); it has waited {waited:.0f} s"
                if isinstance(exc, NotAdmitted)
                else f"The AI provider kept refusing this job's requests (HTTP 429, rate limited): the job waited "
                f"{waited:.0f} s{asks}"
            )
            error = JobError(
                message=(
                    f"{why}, longer than a job may wait for it (RATE_LIMIT_MAX_WAIT={max_wait:g} s). "
                    "Press Retry in a few minutes, send fewer jobs at once, or raise the provider's limits for the key."
                ),
                code=RateLimited.code,
                retryable=True,
            )
            record = {**record, "error": error.code}
            finished = await self._announce(
                await self.store.finish(job.id, token, status=JobStatus.FAILED, error=error, record=record)
            )
            if not finished:
                return _dropped(job, "failure")
            log.warning("job failed: rate limited too long", extra={"job_id": job.id, "waited": round(waited, 1)})
            return "failed"
        if isinstance(exc, NotAdmitted) and not exc.reserved:  # its turn is not booked yet: no honest number
            step = "Waiting for the provider's rate limit; your earlier jobs take the next turns…"
        else:
            step = f"Waiting for the provider's rate limit, about {max(1, round(delay))} s…"
        requeued = await self._announce(
            await self.store.requeue(job.id, token, error=to_job_error(exc), step=step, delay=delay, refund=True)
        )
        if requeued is None:
            return "lease_lost"
        await self._enqueue(requeued, delay)
        log.info(
            "rate limited: back to the queue, no attempt spent",
            extra={"job_id": job.id, "delay": round(delay, 3), "waited": round(waited, 1)},
        )
        return "rate_limited"


def _dropped(job: Job, what: str) -> str:
    """The run's final write was refused (its lease lapsed and another worker's sweeper took the job over): say so,
    and claim no outcome; the job's record is the take-over's."""
    log.warning(f"lease lost: the job was taken over; this run's {what} is dropped", extra={"job_id": job.id})
    return "lease_lost"
