"""Following one submission across processes: its request id (and W3C trace context), and optional OpenTelemetry
spans.

The web takes each request's id from `X-Request-ID`, else the trace id of a valid `traceparent`, else makes one, and
binds it to the request's log lines (`begin`). A job submitted in that request carries its origin in the queue
entry (JSON, beside the job id: `Origin.enqueue_kwargs`), and the worker binds it to the lines of the job's runs,
so `request_id` (and `trace_id`) link the POST to every line the worker writes about it, retries included.

With TRACING=true and the opentelemetry packages installed, `Tracing.span` makes real spans: the POST's server span
(a child of the caller's `traceparent`), each run's consumer span (a child of the POST's, through the queue entry)
and each provider call's client span under it. Off (the default), `span` is a no-op costing one attribute read.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import re
from collections.abc import Iterable, Iterator
from typing import Any

from . import logs

log = logging.getLogger("aijobs.tracing")

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=\-]{1,128}")
_ZERO_TRACE = "0" * 32


class Origin:
    """Where a piece of work came from: the submitting request's id, and its W3C traceparent when there is one.
    (A plain class: made for every request, and a frozen dataclass's __init__ costs three times as much.)"""

    __slots__ = ("request_id", "traceparent")

    def __init__(self, request_id: str | None, traceparent: str | None = None) -> None:
        self.request_id = request_id
        self.traceparent = traceparent

    @property
    def trace_id(self) -> str | None:
        return self.traceparent[3:35] if self.traceparent else None

    def enqueue_kwargs(self) -> dict[str, str]:
        """What the queue entry carries (run_job's keyword arguments)."""
        out = {}
        if self.request_id:
            out["request_id"] = self.request_id
        if self.traceparent:
            out["traceparent"] = self.traceparent
        return out

    def log_fields(self) -> dict[str, str]:
        out = {}
        if self.request_id:
            out["request_id"] = self.request_id
        if self.traceparent:
            out["trace_id"] = self.traceparent[3:35]
        return out


_origin: contextvars.ContextVar[Origin | None] = contextvars.ContextVar("aijobs_origin", default=None)


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is a version-00 W3C traceparent with non-zero ids, else None."""
    if not value:
        return None
    value = value.strip().lower()
    m = _TRACEPARENT.fullmatch(value)
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == "0" * 16:
        return None
    return value


def valid_request_id(value: str | None) -> str | None:
    """A caller's X-Request-ID if it is a short plain token (it goes into every log line), else None."""
    if value and _REQUEST_ID.fullmatch(value.strip()):
        return value.strip()
    return None


def origin_of(headers: Iterable[tuple[bytes, bytes]]) -> Origin:
    """A request's origin from its ASGI headers: X-Request-ID, else the traceparent's trace id, else a new id."""
    request_id = traceparent = None
    for name, value in headers:
        if name == b"x-request-id":
            request_id = valid_request_id(value.decode("latin-1"))
        elif name == b"traceparent":
            traceparent = valid_traceparent(value.decode("latin-1"))
    if request_id is None:
        # not a secret, only unique: the PRNG, no system call
        request_id = traceparent[3:35] if traceparent else f"{random.getrandbits(128):032x}"
    return Origin(request_id, traceparent)


def begin(origin: Origin) -> tuple[contextvars.Token[Origin | None], contextvars.Token[Any]]:
    """Work in this context now belongs to `origin`: its log lines carry its ids, a job it submits carries it."""
    return _origin.set(origin), logs.bind(**origin.log_fields())


def end(tokens: tuple[contextvars.Token[Origin | None], contextvars.Token[Any]]) -> None:
    origin, fields = tokens
    logs.unbind(fields)
    _origin.reset(origin)


def current() -> Origin | None:
    return _origin.get()


class Tracing:
    """OpenTelemetry spans when TRACING is on (and opentelemetry-api is installed); otherwise a no-op."""

    def __init__(self, tracer: Any = None) -> None:
        self.tracer = tracer
        self.on = tracer is not None

    @classmethod
    def from_settings(cls, enabled: bool, *, service: str, provider: Any = None) -> Tracing:
        """`provider`: a TracerProvider to use (tests); None: the one configured in this process (by
        `opentelemetry-instrument`, say), else a new SDK one exporting over OTLP when that exporter is installed."""
        if not enabled:
            return cls()
        try:
            from opentelemetry import trace
        except ImportError:
            log.warning(
                "TRACING is on, but opentelemetry-api is not installed: no spans (pip install opentelemetry-sdk)"
            )
            return cls()
        if provider is None:
            provider = trace.get_tracer_provider()
            if isinstance(provider, trace.ProxyTracerProvider):  # nobody configured one
                provider = _sdk_provider(service)
                if provider is None:
                    return cls()
                trace.set_tracer_provider(provider)
        return cls(provider.get_tracer("aijobs"))

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: str = "internal",
        parent: str | None = None,
        attributes: dict[str, Any] | None = None,
        adopt: bool = False,
    ) -> Iterator[Any]:
        """A span around the block (None when off). `parent`: a traceparent to continue (else the current span's
        context); `adopt`: the request's origin takes this span's traceparent, so a job submitted inside it carries
        this span to the worker."""
        if self.tracer is None:
            yield None
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        context = TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None
        span_kind = getattr(trace.SpanKind, kind.upper())
        with self.tracer.start_as_current_span(name, context=context, kind=span_kind, attributes=attributes) as span:
            if not adopt:
                yield span
                return
            ctx = span.get_span_context()
            origin = current() or Origin(None)
            traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
            tokens = begin(Origin(origin.request_id, traceparent))
            try:
                yield span
            finally:
                end(tokens)


def _sdk_provider(service: str) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("TRACING is on, but opentelemetry-sdk is not installed: no spans (pip install opentelemetry-sdk)")
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning(
            "TRACING is on, but no span exporter is installed: spans are made and dropped "
            "(pip install opentelemetry-exporter-otlp-proto-http; OTEL_EXPORTER_OTLP_ENDPOINT says where to)"
        )
        return provider
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
