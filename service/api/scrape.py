"""GET /metrics on the web process: Prometheus's scrape, for the operator's token only.

Served by the app before its middleware (app.py), since a scrape is no user: no session, no user lookup. Without
METRICS_TOKEN the path is a plain 404, so a web process on a public bind never shows its numbers to anyone.

What only the web knows is read here at scrape time: the queue as the store holds it (one query per scrape, shared
by every web process: take `max` across them), open SSE and WebSocket streams, jobs being polled, and the gateway's
fan-out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import Receive, Scope, Send

from ..limits import StreamSlots
from ..metrics import Metrics, Pollers, respond, store_errors
from ..push.gateway import Gateway
from ..store import JobStore, job_queries
from ..store.queries import QueueSummary
from .errors import error_response


class MetricsEndpoint:
    """The ASGI answer to /metrics: 404 while METRICS_TOKEN is unset, else 401 without it, else the metrics."""

    def __init__(self, metrics: Metrics, token: str | None) -> None:
        self.metrics = metrics
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None:
            response = error_response(404, "not_found", f"No such endpoint: {scope['method']} {scope['path']}")
            await response(scope, receive, send)
            return
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        status, headers, body = await respond(self.metrics, self.token, scope["method"], authorization)
        raw = [(k.encode(), v.encode()) for k, v in headers] + [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def watch_web(metrics: Metrics, *, store: JobStore, gateway: Gateway, slots: StreamSlots, pollers: Pollers) -> None:
    """Add what a web process reports at scrape time to its metrics."""
    queries = job_queries(store)
    latest: list[QueueSummary | None] = [None]

    async def read_queue() -> None:
        latest[0] = None  # a failed query leaves the queue out of this scrape, rather than report stale figures
        latest[0] = await queries.queue_summary(time.time())

    def queue() -> Iterable[Metric]:
        summary = latest[0]
        if summary is None:
            return
        depth = GaugeMetricFamily(
            "aijobs_queue_depth",
            "Queued jobs in the store: ready (a worker may start them now) or deferred (a retry or a rate-limit wait "
            "not due yet); the same in every web process",
            labels=["state"],
        )
        depth.add_metric(["ready"], summary.ready)
        depth.add_metric(["deferred"], summary.deferred)
        yield depth
        oldest = 0.0 if summary.oldest_ready_at is None else max(0.0, time.time() - summary.oldest_ready_at)
        yield GaugeMetricFamily(
            "aijobs_queue_oldest_wait_seconds",
            "How long the longest-waiting ready job has waited (0: none waits)",
            value=oldest,
        )
        yield GaugeMetricFamily(
            "aijobs_jobs_running", "Jobs processing now, as the store holds them", value=summary.running
        )

    def clients() -> Iterable[Metric]:
        streams = GaugeMetricFamily(
            "aijobs_stream_clients",
            "Open live streams on this web process, by transport (sse, ws)",
            labels=["transport"],
        )
        for kind, n in sorted(slots.by_kind.items()):
            streams.add_metric([kind], n)
        yield streams
        yield GaugeMetricFamily(
            "aijobs_polling_clients", "Jobs polled (GET /api/jobs/{id}) on this web process in the last 30 s",
            value=pollers.active(),
        )  # fmt: skip
        yield CounterMetricFamily("aijobs_poll_requests", "GET /api/jobs/{id} requests", value=pollers.requests)

    def fanout() -> Iterable[Metric]:
        yield CounterMetricFamily(
            "aijobs_gateway_messages", "Events this web process's gateway received from Redis", value=gateway.received
        )
        yield gateway.lag.family(
            "aijobs_gateway_fanout_lag_seconds",
            "Seconds from an event's publication (the publisher's clock) to its fan-out here, for events with a "
            "watcher in this process",
        )
        yield CounterMetricFamily(
            "aijobs_gateway_restarts", "Times the gateway's subscription task was started again", value=gateway.restarts
        )
        yield GaugeMetricFamily(
            "aijobs_gateway_subscribers",
            "Clients the gateway fans out to (streams and WebSockets)",
            value=gateway.connections,
        )

    metrics.refresh(read_queue)
    for source in (queue, clients, fanout, store_errors(store)):
        metrics.collect(source)
