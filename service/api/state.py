"""What the web process holds open for its lifetime, handed to handlers through the lifespan state."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from starlette.requests import HTTPConnection

from ..config import Settings
from ..events import EventLog
from ..jobs import JobService
from ..metrics import Metrics
from ..push.gateway import Gateway
from ..store.base import JobStore
from ..tracing import Tracing
from ..webhooks.targets import Resolver, system_resolver


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    redis: ArqRedis
    store: JobStore
    events: EventLog
    gateway: Gateway
    jobs: JobService
    metrics: Metrics
    tracing: Tracing
    resolver: Resolver = system_resolver  # how webhook hosts are looked up at submit


def app_state(conn: HTTPConnection) -> AppState:
    state: AppState = conn.state.aijobs  # Starlette's State is untyped; the lifespan put an AppState there
    return state
