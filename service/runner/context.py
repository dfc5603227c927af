"""One attempt's world as a task sees it: the run context (progress, streamed output, checkpoints, the lease) and
the provider wrapper that records which model answered and what it cost.

Every progress and delta event is announced as it comes; the store is written only at checkpoints, fenced by the
run's lease token, so a run that lost its lease can change nothing (LeaseLost).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..coalesce import Coalescer, fingerprint
from ..events import EventLog
from ..governor import DEFAULT_OUTPUT_TOKENS, Governor, NotAdmitted, RateHeaders
from ..metrics import Metrics
from ..models import Event, EventKind
from ..providers.base import ChatMessage, ChatResult, ImageResult, Provider, Usage, estimate_tokens
from ..providers.errors import ProviderError, RateLimited
from ..redis_silence import RedisSilent
from ..store.base import UNSTORED_EVENTS_MAX, JobStore
from ..tracing import Tracing

log = logging.getLogger("aijobs.runner")

Answer = TypeVar("Answer", ChatResult, ImageResult)

DELTA_FLUSH_SECONDS = 0.1  # at most ~10 delta events per second per job
PROGRESS_FLUSH_SECONDS = 0.1  # and ~10 progress events: the latest wins, the first and the last always go out
CHECKPOINT_SECONDS = 1.0  # at most one store write per second per running job, besides its state changes


class RecordingProvider:
    """Wraps the provider for one run, to learn which model answered and how many tokens it cost."""

    def __init__(
        self,
        inner: Provider,
        *,
        model: str | None = None,
        governor: Governor | None = None,
        holder: str = "",
        user: str = "",
        coalescer: Coalescer | None = None,
        cache_ttl: float = 0.0,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.tracing = tracing if tracing is not None else Tracing()
        self._inner = inner
        self.coalescer = coalescer  # set for a type that opted in: identical calls share one
        self.cache_ttl = cache_ttl
        self.governor = governor
        self.holder = holder  # the job: a slot the governor reserved for it waits under this name
        self.user = user  # whose budget share the job's calls count against
        self.inner = inner
        self.name = inner.name
        self.default_model = model or inner.default_model
        self.requested = model  # the fallback chain's model for this attempt, if the type has a chain
        self.model: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.estimated = False
        self.shared: str | None = None  # "call" or "cache": a call of this run was answered by another job's

    def _record(self, model: str, usage: Usage) -> None:
        self.model = model
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.estimated = self.estimated or usage.estimated

    async def chat(self, messages: list[ChatMessage], **kwargs: Any) -> ChatResult:
        if self.requested and not kwargs.get("model"):
            kwargs["model"] = self.requested
        model = kwargs.get("model") or self.default_model
        prompt = sum(estimate_tokens(m.get("content") or "") for m in messages)
        estimate = prompt + (kwargs.get("max_tokens") or DEFAULT_OUTPUT_TOKENS)

        def call() -> Awaitable[ChatResult]:
            upstream = self._upstream("chat", model, lambda: self._inner.chat(messages, **kwargs))
            return self._governed(model, estimate, kwargs.get("api_key"), upstream)

        if self.coalescer is None or kwargs.get("api_key"):  # a user's own key never shares, nor uses the cache
            result = await call()
            self._record(result.model, result.usage)
            return result
        request = {k: v for k, v in kwargs.items() if k not in ("on_delta", "api_key") and v is not None}
        fp = fingerprint(
            self.name, getattr(self._inner, "key_id", "server"), {**request, "model": model, "messages": messages}
        )
        result, shared = await self.coalescer.run(fp, call, cache_ttl=self.cache_ttl)
        if shared is None:
            self._record(result.model, result.usage)
            return result
        # Another job paid for this answer: none of its tokens are this job's. Its deltas were not ours to see: the
        # whole text arrives as one delta.
        self.shared = self.shared or shared
        self._record(result.model, Usage())
        on_delta = kwargs.get("on_delta")
        if on_delta is not None and result.text:
            await on_delta(result.text)
        return result

    async def image(self, prompt: str, **kwargs: Any) -> ImageResult:
        # An attempt that fails is recorded under default_model: for an image, the image model, not the chat one.
        self.default_model = kwargs.get("model") or getattr(self._inner, "image_model", None) or self.default_model
        call = self._upstream("image", self.default_model, lambda: self._inner.image(prompt, **kwargs))
        result = await self._governed(self.default_model, estimate_tokens(prompt), kwargs.get("api_key"), call)
        self._record(result.model, result.usage)
        return result

    async def _upstream(self, what: str, model: str, make: Callable[[], Awaitable[Answer]]) -> Answer:
        """One call that goes out to the provider: its outcome, time, tokens and cost in the metrics, and a client
        span with TRACING (a call the governor holds back, or another job's shared answer, is no call)."""
        started = time.perf_counter()
        attributes = {"gen_ai.system": self.name, "gen_ai.operation.name": what, "gen_ai.request.model": model}
        with self.tracing.span(f"{what} {model}", kind="client", attributes=attributes) as span:
            try:
                result = await make()
            except BaseException as exc:
                outcome = exc.code if isinstance(exc, ProviderError) else type(exc).__name__
                self.metrics.upstream_call(self.name, model, outcome, time.perf_counter() - started)
                raise
            usage = result.usage
            self.metrics.upstream_call(
                self.name,
                model,
                "ok",
                time.perf_counter() - started,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                priced_as=result.model,
            )
            if span is not None:
                span.set_attribute("gen_ai.response.model", result.model)
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        return result

    async def _governed(self, model: str, estimate: int, api_key: str | None, call: Awaitable[Any]) -> Any:
        """Make the call once the governor admits it; then free its slot, settle its tokens, learn the headers.

        Not admitted: NotAdmitted (nothing was sent), and the job waits in the queue for the slot reserved for it."""
        governor = self.governor
        if governor is None or not getattr(self._inner, "enforces_limits", True):
            return await call
        scope = governor.scope(self.name, model, api_key, getattr(self._inner, "key_id", "server"))
        try:
            wait, reserved = await governor.admit(scope, model, estimate, self.holder, user=self.user)
            if wait > 0:
                raise NotAdmitted(
                    "Waiting for the provider's rate limit: the jobs ahead use its budget for now.",
                    retry_after=wait,
                    reserved=reserved,
                    scope=(scope, model, estimate),
                )
        except BaseException:
            if inspect.iscoroutine(call):
                call.close()
            raise
        try:
            result = await call
        except RateLimited as exc:
            headers = RateHeaders.parse(exc.limits or {})
            if exc.retry_after is None and headers is not None:
                exc.retry_after = headers.exhausted_reset()  # no Retry-After: the exhausted limit's reset
            await governor.settle(scope, model, self.holder, headers=headers, hold=exc.retry_after or 0.0)
            raise
        except BaseException as exc:  # a provider that answered with an error status still answered
            await governor.settle(scope, model, self.holder, answered=getattr(exc, "status", None) is not None)
            raise
        used = result.usage.prompt_tokens + result.usage.completion_tokens
        headers = RateHeaders.parse(result.limits or {})
        await governor.settle(scope, model, self.holder, correction=used - estimate, headers=headers)
        return result

    async def aclose(self) -> None:  # the worker owns the real provider
        return None

    def usage(self) -> dict[str, Any] | None:
        if self.model is None:
            return None
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated": self.estimated,
            **({"cached": True} if self.shared else {}),
        }


_Item = tuple[EventKind, dict[str, Any], str | None]  # an event to announce: kind, data, the text it adds


class LeaseLost(Exception):
    """The store refused a write: this run no longer owns the job."""


@dataclass
class RunContext:
    """The TaskContext handed to a task for one attempt.

    Every progress and delta event is announced (published with the next seq), but the store is written only at
    checkpoints: at most once per CHECKPOINT_SECONDS, every UNSTORED_EVENTS_MAX events at the latest, and always
    before the attempt's final write (`checkpoint`). A checkpoint carries everything announced since the last
    one (the output appended since, the latest percentage and step) and sets the store's seq to the announced
    one, still fenced by this run's lease token. An event announced without a store write is fenced by the Redis
    log instead: a take-over moves the seq past any such event (JobStore.take_over), so a late one is refused
    there, and this run stops (LeaseLost) when it looks at that answer: before it sends anything more, or at its
    end (`_confirm`).
    """

    job_id: str
    user_id: str
    attempt: int
    max_attempts: int
    token: str
    ai: RecordingProvider
    store: JobStore
    events: EventLog
    api_key: str | None = None
    seq: int = 0  # the seq of the last event this run announced (the claim's, at first)
    announce_start: Callable[[], None] | None = None  # queues the claim's `processing`, if not queued yet
    _pending: list[str] = field(default_factory=list)  # delta text not yet announced
    _unstored: list[str] = field(default_factory=list)  # text announced, not yet in the store
    _stored_seq: int = 0
    _stored_at: float = field(default_factory=time.monotonic)
    _step: str | None = None
    _last_flush: float = field(default_factory=time.monotonic)  # the attempt's start opens the first text window
    _delta_timer: asyncio.TimerHandle | None = None
    _delta_timed: asyncio.Future[None] | None = None
    _percentage: float = 0.0
    _started: float = field(default_factory=time.monotonic)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _timer: asyncio.TimerHandle | None = None
    _timed: asyncio.Future[None] | None = None
    _emitting: asyncio.Lock = field(default_factory=asyncio.Lock)  # the task and a timed progress take turns
    _progress: tuple[float, str | None, float] | None = None  # held back (coalesced), the latest: %, step, when
    _progress_at: float = -1.0  # when the last progress event was announced
    _progress_timer: asyncio.TimerHandle | None = None
    _progress_timed: asyncio.Future[None] | None = None
    _sent: tuple[asyncio.Future[Any], int, bool] | None = None  # the events last sent, unanswered: count, stored

    def __post_init__(self) -> None:
        self._stored_seq = self.seq

    @property
    def unsaved(self) -> bool:
        """Output or progress not in the store yet (announced or not)."""
        return bool(self._pending) or self.seq > self._stored_seq

    async def _store(self, seq: int) -> None:
        """Write a checkpoint up to `seq`: one at a time (the timed one may run beside the task's own)."""
        async with self._lock:
            if seq <= self._stored_seq:
                return  # a checkpoint that ran meanwhile covered it
            n = len(self._unstored)
            piece = "".join(self._unstored[:n])
            stored = await self.store.progress(
                self.job_id, self.token, percentage=self._percentage, step=self._step, append_output=piece or None,
                seq=seq,
            )  # fmt: skip
            if stored is None:
                raise LeaseLost(self.job_id)
            del self._unstored[:n]  # what was appended while the write was on its way waits for the next one
            self._stored_seq, self._stored_at = stored, time.monotonic()

    def _store_later(self) -> None:
        """An event left out of the store gets there within CHECKPOINT_SECONDS even if no other event follows (a
        provider that pauses mid-stream): a poll never shows output more than that much behind the events."""
        if self._timer is not None:
            return
        delay = max(0.0, CHECKPOINT_SECONDS - (time.monotonic() - self._stored_at))
        self._timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._timed = self._in_background(lambda: self._store(self.seq), "timed checkpoint not written")

    def _in_background(self, send: Callable[[], Awaitable[None]], failed: str) -> asyncio.Future[None]:
        """What a timer sends (a checkpoint, held-back progress or text), as a task of its own: a failure is logged,
        not raised, since it is a lost lease or an unreachable store that the task's next write finds out."""

        async def run() -> None:
            try:
                await send()
            except Exception as exc:
                log.info(failed, extra={"job_id": self.job_id, "error": repr(exc)})

        return asyncio.ensure_future(run())

    def close(self) -> None:
        """The attempt is over: no timed checkpoint nor held-back progress any more."""
        for timer in (self._timer, self._progress_timer, self._delta_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._progress_timer = self._delta_timer = None
        for timed in (self._timed, self._progress_timed, self._delta_timed):
            if timed is not None and not timed.done():
                timed.cancel()
        self._forget_sent()

    async def _emit(self, items: list[_Item]) -> None:
        """Announce the next events (each its own seq, in order, one script call); write the store first when a
        checkpoint is due. One batch at a time: a held-back progress event announced by its timer takes its turn
        beside the task's own events."""
        async with self._emitting:
            await self._emit_all(items)

    async def _emit_all(self, items: list[_Item]) -> None:
        await self._confirm()  # the events sent before: refused, and nothing more goes out
        first = self.seq + 1
        seq = self.seq + len(items)
        for _kind, _data, text in items:
            if text:
                self._unstored.append(text)
        stored = (
            time.monotonic() - self._stored_at >= CHECKPOINT_SECONDS or seq - self._stored_seq > UNSTORED_EVENTS_MAX
        )
        if stored:
            await self._store(seq)
        self.seq = seq
        if not stored:
            self._store_later()
        try:
            events = [Event(self.job_id, first + i, kind, data) for i, (kind, data, _text) in enumerate(items)]
            if self.announce_start is not None:  # the task's first event came before the turn `processing` waits for
                announce, self.announce_start = self.announce_start, None
                announce()
            sent = self.events.publish_many_soon(self.user_id, events)
        except Exception as exc:  # the store has (or will have, at the next checkpoint) it; a watcher resyncs from it
            log.warning("could not publish an event", extra={"job_id": self.job_id, "error": repr(exc)})
            return
        self._sent = (sent, len(items), stored)

    async def _confirm(self) -> None:
        """Look at the answer to the events last sent: LeaseLost if the log refused them and the store did not take
        them either (the job was taken over). Sent without waiting, and looked at before anything more is sent (or
        at the end), so the task runs on while they travel, with a provider call's round trip, say, and a run that
        was taken over still shows nothing after the new run's first event."""
        sent, self._sent = self._sent, None
        if sent is None:
            return
        future, count, stored = sent
        try:
            published = await future
        except RedisSilent:  # skipped at once: Redis's path is silent (said once, by service/redis_silence.py)
            return
        except Exception as exc:  # the store has (or will have, at the next checkpoint) it; a watcher resyncs from it
            log.warning("could not publish an event", extra={"job_id": self.job_id, "error": repr(exc)})
            return
        if published < count and not stored:
            raise LeaseLost(self.job_id)  # the log holds a newer event: the job was taken over

    def _forget_sent(self) -> None:
        """The events last sent need no look at their answer (the attempt's final write is fenced on its own): a
        failure is logged when it comes."""
        sent, self._sent = self._sent, None
        if sent is None:
            return
        job_id = self.job_id

        def done(future: asyncio.Future[Any]) -> None:
            exc = None if future.cancelled() else future.exception()
            if exc is not None and not isinstance(exc, RedisSilent):
                log.warning("could not publish an event", extra={"job_id": job_id, "error": repr(exc)})

        sent[0].add_done_callback(done)

    async def progress(self, percentage: float, step: str | None = None) -> None:
        """Coalesced in time like deltas: within PROGRESS_FLUSH_SECONDS of the last progress event, this one is held
        back and replaces any held before it (latest wins; a step it does not name stays the held one's); it goes
        out when the window ends (a timer), with the next event, or before the attempt's end (`checkpoint`). An
        instant job's nine steps in a few milliseconds become its first and its last."""
        self._percentage = percentage = max(0.0, min(100.0, float(percentage)))
        if step is not None:
            self._step = step
        elif self._progress is not None:
            step = self._progress[1]
        now = time.monotonic()
        wait = self._progress_at + PROGRESS_FLUSH_SECONDS - now
        if wait > 0 or self._progress is not None:
            self._progress = (percentage, step, now)  # its event is made if it goes out (most are replaced first)
            if self._progress_timer is None:
                loop = asyncio.get_running_loop()
                self._progress_timer = loop.call_later(max(wait, 0.0), self._progress_timer_fired)
            return
        data = self._progress_data(percentage, step, now)
        items = self._held_text()  # no progress is held here: the text gathered so far goes first, then this
        self._progress_at = now
        items.append((EventKind.PROGRESS, data, None))
        await self._emit(items)

    def _progress_data(self, percentage: float, step: str | None, at: float) -> dict[str, Any]:
        """A progress event's data: the step, and the time left extrapolated from this attempt's pace until `at`."""
        data: dict[str, Any] = {"percentage": round(percentage, 1), "current_step": step}
        if percentage >= 5:
            data["estimated_time_remaining"] = round((at - self._started) * (100 - percentage) / percentage, 1)
        return data

    def _progress_timer_fired(self) -> None:
        self._progress_timer = None
        self._progress_timed = self._in_background(self._release_progress, "held-back progress not announced")

    async def _release_progress(self) -> None:
        """Announce the held-back progress event, if any."""
        items = self._held_progress()
        if items:
            await self._emit(items)

    def _held_progress(self) -> list[_Item]:
        """Take the held-back progress event (if any) to announce now."""
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None
        held, self._progress = self._progress, None
        if held is None:
            return []
        self._progress_at = time.monotonic()
        return [(EventKind.PROGRESS, self._progress_data(*held), None)]

    async def delta(self, text: str) -> None:
        """Coalesced in time: text within DELTA_FLUSH_SECONDS of the last delta event (or of the attempt's start) is
        held and goes out as one delta when the window ends (a timer), with the next event, or at the end. An
        instant job's whole text is then one event; a real stream's first token, rarely that early, is not held."""
        if not text:
            return
        self._pending.append(text)
        wait = self._last_flush + DELTA_FLUSH_SECONDS - time.monotonic()
        if wait <= 0:
            await self.flush()
        elif self._delta_timer is None:
            self._delta_timer = asyncio.get_running_loop().call_later(wait, self._delta_timer_fired)

    def _delta_timer_fired(self) -> None:
        self._delta_timer = None
        self._delta_timed = self._in_background(self.flush, "held-back text not announced")

    async def flush(self) -> None:
        """Announce a held-back progress event, then the text gathered since the last flush (one delta event): one
        script call for both."""
        items = self._held_progress() + self._held_text()
        if items:
            await self._emit(items)

    def _held_text(self) -> list[_Item]:
        """Take the text gathered since the last flush (if any) as one delta event to announce now."""
        if self._delta_timer is not None:
            self._delta_timer.cancel()
            self._delta_timer = None
        if not self._pending:
            return []
        piece = "".join(self._pending)
        self._pending.clear()
        self._last_flush = time.monotonic()
        return [(EventKind.DELTA, {"text": piece}, piece)]

    async def checkpoint(self) -> None:
        """Announce what is pending and bring the store up to everything announced: before the final write."""
        await self._settle()
        await self._store(self.seq)

    async def final(self) -> tuple[str | None, int | None]:
        """Announce what is pending, and answer what the final write must carry for the store to reach everything
        announced (`JobStore.finish`'s `append_output` and `seq`): the last checkpoint rides in the finish, one
        store write fewer per job. (None, None): the store has it all.

        The last events' answer is not waited for: the finish goes at once (each in its own round trip, together).
        A run whose last events the log refused was taken over, so the store refuses its finish too (its token is
        gone), and the terminal event is queued only after a finish the store took, behind these events."""
        await self._settle(confirm=False)
        self._forget_sent()
        if self.seq <= self._stored_seq:
            return None, None
        return "".join(self._unstored) or None, self.seq

    async def _settle(self, *, confirm: bool = True) -> None:
        """Announce what is pending (`confirm`: and look at the answer, LeaseLost if refused); no timed write or
        announcement is left running or to come.

        Nothing may be announced after it: the final write takes the store's next seq, and an event announced
        afterwards would already hold that seq in the log, which then refuses the job's end event as a duplicate
        (its watchers never see the job end: the a11y flake, tests/test_checkpoints.py). So both timers are stopped
        before anything is awaited (the flush below takes what they held, in one call) and a send one of them
        already started is waited out."""
        for timer in (self._progress_timer, self._delta_timer):
            if timer is not None:
                timer.cancel()
        self._progress_timer = self._delta_timer = None
        for timed in (self._progress_timed, self._delta_timed):  # no timer is left to start another one
            if timed is not None and not timed.done():
                await timed  # never cancelled mid-announce: the held event goes out once
        await self.flush()
        if confirm:
            await self._confirm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timed is not None:
            await self._timed  # never cancelled mid-write: its outcome decides what is left to store
