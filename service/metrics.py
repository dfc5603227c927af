"""Prometheus metrics of one process (web or worker), served by that process: the web's GET /metrics, a worker's
METRICS_PORT. Each process has its own registry and endpoint, so any number of hosts are scraped as targets (not
prometheus-client's multiprocess mode, which shares files between the processes of one host only).

Two kinds of numbers, chosen by how hot their path is:
- Counted as they happen, with prometheus-client: a job submitted or finished, an attempt, an upstream call. At most
  a few per job, each a child bound to its labels once (`_child`) and then one `inc`/`observe`.
- Read at scrape time, never counted per event: the queue (one store query), open streams and polling clients, the
  gateway's fan-out (its own counters, bumped with no lock on the one event-loop thread), store and Redis errors.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("aijobs.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
POLLING_WINDOW = 30.0  # a job polled within this many seconds counts as one polling client
POLLED_MEMORY = 100_000  # jobs the polling count remembers between two scrapes, at most
REFRESH_TIMEOUT = 5.0  # seconds a scrape-time query may take before that part of the scrape is left out

Collect = Callable[[], Iterable[Metric]]


class LagHistogram:
    """A histogram without a lock: written and read on the event loop's thread only (the gateway's dispatch and the
    scrape), so an event costs a clock read, a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LAG_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: over the largest bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            buckets.append((repr(float(bound)), running))
        buckets.append(("+Inf", running + self.counts[-1]))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


class Pollers:
    """Who polls GET /api/jobs/{id}: every request counted, each job remembered with when it was last polled, so the
    scrape can say how many jobs are being polled now (a plain dict write per request, pruned at scrape)."""

    __slots__ = ("requests", "last")

    def __init__(self) -> None:
        self.requests = 0
        self.last: dict[str, float] = {}

    def seen(self, job_id: str) -> None:
        self.requests += 1
        if len(self.last) < POLLED_MEMORY or job_id in self.last:
            self.last[job_id] = time.monotonic()

    def active(self, window: float = POLLING_WINDOW) -> int:
        cutoff = time.monotonic() - window
        self.last = {job: at for job, at in self.last.items() if at >= cutoff}
        return len(self.last)


class RedisErrors(Retry):
    """The Retry every Redis connection of a process runs its commands through (RedisSettings.retry), with no
    retries (as redis-py's default) and a count of the connection errors and timeouts it saw: every command, pipeline,
    pub/sub read and connect of the process's pool, at no cost to a command that succeeds."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        super().__init__(NoBackoff(), 0)
        self.count = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> RedisErrors:
        return self  # redis-py copies the Retry into each connection: they must all count here

    async def call_with_retry(self, do: Callable[[], Awaitable[Any]], fail: Callable[[Any], Any]) -> Any:
        try:
            return await do()
        except self._supported_errors as error:
            self.count += 1
            await fail(error)
            raise

    def note(self, exc: BaseException) -> None:
        """An error from a path that talks to a connection directly (service/script_batch.py)."""
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
            self.count += 1


def redis_errors_of(redis: Any) -> RedisErrors | None:
    """The RedisErrors a client's pool was made with, if any."""
    retry = getattr(redis, "connection_pool", None) and redis.connection_pool.connection_kwargs.get("retry")
    return retry if isinstance(retry, RedisErrors) else None


class _Scraped:
    """A collector of families made at scrape time by the functions given to Metrics.collect."""

    def __init__(self) -> None:
        self.sources: list[Collect] = []

    def collect(self) -> Iterable[Metric]:
        for source in self.sources:
            try:
                yield from source()
            except Exception:
                log.exception("a metrics source failed; left out of this scrape")


class Metrics:
    """The metrics of one process: counters and histograms bumped where things happen, plus `collect` sources read at
    scrape time and `refresh` coroutines awaited before each scrape (the queue query)."""

    def __init__(
        self, *, role: str = "", prices: Mapping[str, tuple[float, float]] | None = None, process: bool = False
    ) -> None:
        from .usage import PriceTable

        self.role = role
        self.prices = PriceTable(prices or {})
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.redis_errors = RedisErrors()
        self.pollers = Pollers()  # the web's GET /api/jobs/{id} (read by its scrape)
        self._scraped = _Scraped()
        r.register(self._scraped)
        if process:
            ProcessCollector(registry=r)
        self._refresh: list[Callable[[], Awaitable[None]]] = []
        self._bound: dict[tuple[str, ...], Any] = {}
        self.submitted = Counter("aijobs_jobs_submitted", "Jobs accepted (202), by type", ["type"], registry=r)
        self.finished = Counter(
            "aijobs_jobs_finished",
            "Jobs that reached a final status (completed, failed, cancelled, expired), by type, counted by the "
            "process that ended them",
            ["type", "status"],
            registry=r,
        )
        self.attempts = Counter(
            "aijobs_job_attempts", "Attempts started (jobs claimed by a worker)", ["type"], registry=r
        )
        self.attempt_errors = Counter(
            "aijobs_job_attempt_errors",
            "Attempts that ended in an error, by the job error code (worker_lost for a worker that vanished)",
            ["type", "code"],
            registry=r,
        )
        self.retries = Counter(
            "aijobs_job_retries",
            "Failed attempts that sent their job back to the queue (a retry, the next fallback model, a rate-limit "
            "wait, a lost worker's job taken over), by error code",
            ["type", "code"],
            registry=r,
        )
        self.wait = Histogram(
            "aijobs_job_wait_seconds",
            "Seconds a ready job waited in the queue before a worker started it (each attempt)",
            ["type"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.run = Histogram(
            "aijobs_job_run_seconds", "Seconds one attempt ran, whatever its end", ["type"], buckets=RUN_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.calls = Counter(
            "aijobs_upstream_calls",
            "Provider calls made, by provider, model and outcome (ok, or the provider error's code)",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "aijobs_upstream_call_seconds",
            "Seconds a provider call took (streamed calls: to their last token), any outcome",
            ["provider", "model"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "aijobs_upstream_tokens",
            "Tokens of answered provider calls (kind: prompt or completion; estimated where the provider says none)",
            ["provider", "model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "aijobs_upstream_cost_usd",
            "USD the answered provider calls cost at AI_PRICES (models without a price add nothing)",
            ["provider", "model"],
            registry=r,
        )
        self.collect(self._common)

    # --- how parts add what only they know --------------------------------------------------------------------

    def collect(self, source: Collect) -> None:
        """A function giving metric families at scrape time, from what a part counts on its own."""
        self._scraped.sources.append(source)

    def refresh(self, fn: Callable[[], Awaitable[None]]) -> None:
        """A coroutine awaited before each scrape (a query whose answer a `collect` source then reports)."""
        self._refresh.append(fn)

    def _common(self) -> Iterable[Metric]:
        info = GaugeMetricFamily("aijobs_process", "This process: 1, with its role (web or worker)", labels=["role"])
        info.add_metric([self.role or "unknown"], 1)
        yield info
        yield CounterMetricFamily(
            "aijobs_redis_errors",
            "Redis commands and connects of this process that failed for want of Redis (connection errors, timeouts)",
            value=self.redis_errors.count,
        )

    async def render(self) -> bytes:
        """The text exposition, after the scrape-time queries (each bounded; a slow one is left out, not waited on)."""
        for fn in self._refresh:
            try:
                async with asyncio.timeout(REFRESH_TIMEOUT):
                    await fn()
            except Exception as exc:
                log.warning(
                    "a metrics query failed; its figures are left out of this scrape", extra={"error": repr(exc)}
                )
        return generate_latest(self.registry)

    # --- counted where it happens ------------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._bound.get(key)
        if child is None:
            child = self._bound[key] = metric.labels(*labels)
        return child

    def job_submitted(self, job_type: str) -> None:
        self._child(self.submitted, job_type).inc()

    def job_finished(self, job_type: str, status: str) -> None:
        self._child(self.finished, job_type, status).inc()

    def attempt_started(self, job_type: str, waited: float | None) -> None:
        self._child(self.attempts, job_type).inc()
        if waited is not None:
            self._child(self.wait, job_type).observe(max(0.0, waited))

    def attempt_ended(self, job_type: str, seconds: float, *, code: str | None = None, requeued: bool = False) -> None:
        """One attempt is over: how long it ran, and for an error its code (and whether the job went back)."""
        self._child(self.run, job_type).observe(seconds)
        if code is not None:
            self._child(self.attempt_errors, job_type, code).inc()
            if requeued:
                self._child(self.retries, job_type, code).inc()

    def job_taken_over(self, job_type: str, status: str) -> None:
        """The sweeper took back a job whose worker vanished: an attempt lost, and the job requeued or ended."""
        self._child(self.attempt_errors, job_type, "worker_lost").inc()
        if status == "queued":
            self._child(self.retries, job_type, "worker_lost").inc()
        else:
            self.job_finished(job_type, status)

    def upstream_call(
        self,
        provider: str,
        model: str,
        outcome: str,
        seconds: float,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        priced_as: str | None = None,
    ) -> None:
        """One call to a provider; for an answer its tokens and cost (priced by the model that answered)."""
        self._child(self.calls, provider, model, outcome).inc()
        self._child(self.call_seconds, provider, model).observe(seconds)
        if prompt_tokens:
            self._child(self.tokens, provider, model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self._child(self.tokens, provider, model, "completion").inc(completion_tokens)
        if prompt_tokens or completion_tokens:
            cost = self.prices.cost(priced_as or model, prompt_tokens, completion_tokens)
            if cost:
                self._child(self.cost, provider, model).inc(cost)


def store_errors(store: Any) -> Collect:
    """A source reporting the store's own count of failed operations (JobStore.errors)."""

    def collect() -> Iterable[Metric]:
        yield CounterMetricFamily(
            "aijobs_store_errors",
            "Store operations of this process that failed (an unreachable or refusing database, a lock timeout, a "
            "deadlock; never a unique-key refusal)",
            value=int(getattr(store, "errors", 0)),
        )

    return collect


# --- serving -----------------------------------------------------------------------------------------------------


def _json_error(code: str, message: str) -> bytes:
    import json

    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def respond(
    metrics: Metrics, token: str | None, method: str, authorization: str | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer to a scrape: (status, headers, body). With a token, only `Authorization: Bearer <token>` gets the
    metrics (a constant-time comparison); without one, whoever reaches the endpoint does (the caller decides where
    that is allowed: the web never serves /metrics without a token, a worker binds loopback only)."""
    import hmac

    if method not in ("GET", "HEAD"):
        body = _json_error("method_not_allowed", "Scrape /metrics with GET.")
        return 405, [("content-type", "application/json"), ("allow", "GET, HEAD")], body
    if token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            body = _json_error(
                "unauthenticated",
                "Send 'Authorization: Bearer <METRICS_TOKEN>' (Prometheus: authorization.credentials in the scrape "
                "config).",
            )
            return 401, [("content-type", "application/json"), ("www-authenticate", "Bearer")], body
    body = await metrics.render()
    return 200, [("content-type", CONTENT_TYPE), ("cache-control", "no-store")], b"" if method == "HEAD" else body


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}


async def serve_metrics(metrics: Metrics, *, host: str, port: int, token: str | None) -> asyncio.Server:
    """A worker's own metrics endpoint: GET /metrics on host:port, one request per connection (as Prometheus
    scrapes), served on the worker's event loop (no thread: the scrape-time figures are read where they are kept)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            parts = request_line.split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            if len(parts) != 3:
                status, extra, body = 400, [("content-type", "application/json")], _json_error("bad_request", "?")
            elif parts[1].partition("?")[0] != "/metrics":
                message = f"No such endpoint: {parts[0]} {parts[1][:100]}; scrape /metrics."
                status, extra, body = 404, [("content-type", "application/json")], _json_error("not_found", message)
            else:
                status, extra, body = await respond(metrics, token, parts[0], headers.get("authorization"))
            out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", f"content-length: {len(body)}"]
            out += [f"{k}: {v}" for k, v in extra] + ["connection: close", "", ""]
            writer.write("\r\n".join(out).encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
