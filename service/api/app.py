"""The Starlette app factory: explicit routes, resources opened and closed in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .. import tracing
from ..config import Settings, SettingsError
from ..coordination import listen_for_revocations
from ..errors import AijobsError
from ..events import EventLog
from ..files import tighten_dir
from ..jobs import JobService
from ..metrics import Metrics
from ..push.gateway import Gateway
from ..push.gcfreeze import GcFreezer
from ..push.positions import PositionTicker
from ..push.sse import SseResponse
from ..push.wire import RAW_SEND
from ..queue import JobQueue, json_deserializer, json_serializer
from ..redis_url import arq_pool, follow_primary
from ..store import open_store
from ..tasks import TaskRegistry, default_registry
from ..tracing import Tracing
from ..webhooks.targets import Resolver, system_resolver
from .accounts import STATE_KEY, build_accounts
from .admin import admin_routes
from .auth import AuthMiddleware
from .body import BodyCap
from .direct import DirectRoutes, Endpoint, direct_post, direct_response, direct_websocket
from .errors import error_response, handle_api_error, handle_http_exception, handle_unexpected
from .headers import security_headers, with_security_headers
from .history import list_jobs
from .jobs import create_job, get_job
from .lifecycle import cancel_job, retry_job
from .openapi import openapi_json
from .origins import header, host_allowed
from .scrape import MetricsEndpoint, watch_web
from .session import create_session, delete_session, me, sign_in_demo
from .state import AppState, app_state
from .stats import stats
from .streams import all_events, job_events, websocket_endpoint
from .v1.routes import v1_routes
from .webhooks import get_secret, job_webhooks, rotate_secret

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"


async def healthz(request: Request) -> Response:
    state = app_state(request)
    checks: dict[str, str] = {}
    try:
        await state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    try:
        await state.store.ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"error: {exc.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if ok else "degraded",
        "checks": checks,
        "gateway": {
            "connections": state.gateway.connections,
            "channels": state.gateway.channels,
            "parked": state.gateway.parked,
            "fast_paths": state.gateway.fast.report(),
            "restarts": state.gateway.restarts,
            "resubscribed": state.gateway.resubscribed,
            "gc_frozen_objects": gc.get_freeze_count(),  # GC_FREEZE_SETTLE_SECONDS (push/gcfreeze.py)
        },
    }
    return JSONResponse(body, status_code=200 if ok else 503)


async def favicon(request: Request) -> Response:
    """Browsers ask for /favicon.ico on any page without a <link rel=icon> (an API document, /healthz): no 404."""
    icon = STATIC_DIR / "favicon.svg"
    return FileResponse(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


async def index(request: Request) -> Response:
    response = FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
    await sign_in_demo(request, response)  # AIJOBS_DEMO_LOGIN (dev): the page works at once
    return response


def by_method(**handlers: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """One route for all of a path's methods, so a 405 there lists every one of them in `Allow` (two routes on one
    path each answer a wrong method with their own methods only)."""
    if "GET" in handlers:
        handlers["HEAD"] = handlers["GET"]  # Starlette routes HEAD to a GET route

    async def endpoint(request: Request) -> Response:
        return await handlers[request.method](request)

    return endpoint


class App(Starlette):
    """Starlette that also records the server's own `send` in the scope (push writes go under ASGI, wire.py), caps
    every request body before routing (body.py), serves the long-lived streams named in `direct` before its
    middleware stack (direct.py), and, for both paths, refuses a Host outside ALLOWED_HOSTS and adds the security
    headers (headers.py). `direct_posts`: POST endpoints by exact path served before the stack too (the submit), with
    `allowed_origins` for AuthMiddleware's CSRF rule."""

    def __init__(
        self,
        *args: Any,
        direct: Sequence[str] = (),
        direct_posts: dict[str, Endpoint] | None = None,
        allowed_origins: tuple[str, ...] = (),
        max_body_bytes: int,
        allowed_hosts: tuple[str, ...] = (),
        metrics: MetricsEndpoint | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.direct_posts = direct_posts or {}
        self.allowed_origins = allowed_origins
        self.metrics = metrics
        self.body_cap = BodyCap(max_body_bytes)
        found = [r for r in self.routes if isinstance(r, Route | WebSocketRoute) and r.name in direct]
        if len(found) != len(direct):  # not an assert: it must also hold under `python -O`
            raise RuntimeError(f"direct routes not found: {set(direct) - {r.name for r in found}}")
        self.direct = DirectRoutes(found)
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        origin = tracing.begin(tracing.origin_of(scope["headers"]))  # every line about this request carries its id
        try:
            await self._handle(scope, receive, send)
        finally:
            tracing.end(origin)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        if (
            self.allowed_hosts
            and scope["path"] not in ("/healthz", "/metrics")  # probed and scraped by IP; /metrics wants its token
            and not host_allowed(scope, self.allowed_hosts)
        ):
            await refuse_host(scope, receive, send)
            return
        if scope["type"] == "http":
            capped = self.body_cap.guard(scope, receive)
            if capped is None:  # declared over the cap: refused before routing or authentication, nothing read
                await self.body_cap.refuse(scope, receive, with_security_headers(scope, send))
                return
            receive = capped
            if scope["path"] == "/metrics" and self.metrics is not None:  # the operator's scrape: no user, no session
                await self.metrics(scope, receive, with_security_headers(scope, send))
                return
            post = self.direct_posts.get(scope["path"]) if scope["method"] == "POST" else None
            if post is not None and not scope.get("root_path"):
                scope["app"] = self
                scope["path_params"] = {}
                response = await direct_post(post, scope, receive, self.allowed_origins)
                response.raw_headers.extend(security_headers(scope))
                await response(scope, receive, send)
                return
        hit = self.direct.match(scope)
        if hit is not None:  # a long-lived stream: no middleware frames kept alive under it
            scope["app"] = self
            scope["path_params"] = hit[1]
            if scope["type"] == "websocket":
                await direct_websocket(hit[0], scope, receive, send)
                return
            response = await direct_response(hit[0], scope, receive)
            if not isinstance(response, SseResponse):  # a refusal; a stream sends its own pre-encoded headers
                response.raw_headers.extend(security_headers(scope))
            await response(scope, receive, send)
            return
        if scope["type"] == "http":
            send = with_security_headers(scope, send)
        await super().__call__(scope, receive, send)


async def refuse_host(scope: Scope, receive: Receive, send: Send) -> None:
    """400 JSON, over HTTP and for a WebSocket handshake too (before the upgrade, through the ASGI
    `websocket.http.response` extension, as streams.refuse answers); without it, a policy-violation close (HTTP 403)."""
    host = header(scope, b"host") or ""
    response = error_response(
        400,
        "host_not_allowed",
        f"This server does not answer to the Host {host[:100]!r}. Use its own address, or add the name to "
        "ALLOWED_HOSTS.",
    )
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": "host_not_allowed"})
        return
    response.raw_headers.extend(security_headers(scope))
    await response(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    redis_url: str,
    registry: TaskRegistry | None = None,
    resolver: Resolver | None = None,
    tracer_provider: Any = None,
) -> Starlette:
    """`resolver`: how webhook hosts are looked up at submit (the system's by default; tests give their own names).
    `tracer_provider`: an OpenTelemetry TracerProvider for TRACING=true (tests); None: the process's own."""
    registry = registry or default_registry()
    scrape = MetricsEndpoint(Metrics(role="web"), settings.metrics_token)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        tighten_dir(settings.data_dir)  # an older version left it readable by others
        metrics = Metrics(role="web", prices=settings.prices, process=True)
        spans = Tracing.from_settings(settings.tracing, service="aijobs-web", provider=tracer_provider)
        redis = await arq_pool(
            redis_url,
            retry=metrics.redis_errors,  # counts every command that fails for want of Redis
            job_serializer=json_serializer,
            job_deserializer=json_deserializer,
            default_queue_name=settings.queue_name,
            socket_timeout=settings.redis_socket_timeout,
            connect_timeout=settings.redis_connect_timeout,
        )
        store = open_store(settings)
        await store.open()
        events = EventLog(redis, maxlen=settings.event_stream_maxlen)
        gateway = Gateway(redis, ping_seconds=settings.sse_ping_seconds)
        await gateway.start()
        freezer = GcFreezer(lambda: gateway.connections, settings.gc_freeze_settle_seconds)
        freezer.start()
        jobs = JobService(
            store=store,
            queue=JobQueue(redis, queue_name=settings.queue_name),
            events=events,
            registry=registry,
            max_attempts=settings.max_attempts,
            max_wait=settings.job_max_wait,
            metrics=metrics,
        )
        accounts = build_accounts(settings, store, redis)

        def signed_out(session: str, user: str | None) -> None:
            accounts.users.saw_sign_out(session)
            gateway.end_streams("signed_out", user_id=user, session=session)

        def revoked(user: str) -> None:
            gateway.end_streams("revoked", user_id=user)

        watch_web(metrics, store=store, gateway=gateway, slots=accounts.slots, pollers=metrics.pollers)
        scrape.metrics = metrics
        revocations = asyncio.create_task(
            listen_for_revocations(
                redis,
                accounts.users.forget,
                signed_out=signed_out,
                revoked=revoked,
            )
        )
        ticker = PositionTicker(gateway=gateway, store=store, jobs=jobs, interval=settings.position_push_seconds)
        positions = asyncio.create_task(ticker.run(), name="aijobs-positions")
        primary = asyncio.create_task(follow_primary(redis), name="aijobs-redis-primary")  # Sentinel: see redis_url
        try:
            state = AppState(settings, redis, store, events, gateway, jobs, metrics, spans, resolver or system_resolver)
            yield {"aijobs": state, STATE_KEY: accounts}
        finally:
            for task in (revocations, positions, primary):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await freezer.stop()
            await gateway.stop()
            await store.close()
            await redis.aclose()

    # Starlette tries routes in order, one regex each: the submit and poll paths go first (no path overlaps another).
    routes = [
        Route("/api/jobs/{job_id}", get_job, methods=["GET"], name="get_job"),
        Route("/api/jobs", by_method(POST=create_job, GET=list_jobs), methods=["POST", "GET"], name="jobs"),
        Route("/", index, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/api/jobs/{job_id}/events", job_events, methods=["GET"], name="job_events"),
        Route("/api/stats", stats, methods=["GET"], name="stats"),
        Route("/api/session", by_method(POST=create_session, DELETE=delete_session), methods=["POST", "DELETE"]),
        Route("/api/me", me, methods=["GET"]),
        Route("/api/openapi.json", openapi_json(registry), methods=["GET"]),
        Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"], name="cancel_job"),
        Route("/api/jobs/{job_id}/retry", retry_job, methods=["POST"], name="retry_job"),
        Route("/api/events", all_events, methods=["GET"], name="all_events"),
        Route("/api/jobs/{job_id}/webhooks", job_webhooks, methods=["GET"], name="job_webhooks"),
        Route(
            "/api/webhooks/secret",
            by_method(GET=get_secret, POST=rotate_secret),
            methods=["GET", "POST"],
            name="webhook_secret",
        ),
        WebSocketRoute("/api/ws", websocket_endpoint, name="ws"),
        *admin_routes(),  # /admin and /api/admin/*: operators only, an unknown path to anyone else (api/admin.py)
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        *v1_routes(),  # the OpenAI-compatible API (api/v1)
    ]

    async def not_found_route(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code == 404:
            return error_response(404, "not_found", f"No such endpoint: {request.method} {request.url.path}")
        return await handle_http_exception(request, exc)

    return App(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(AuthMiddleware, allowed_origins=settings.allowed_origins)],
        direct=("job_events", "all_events", "ws"),
        direct_posts={"/api/jobs": create_job},  # the route "jobs" above answers the same POST under the stack
        allowed_origins=settings.allowed_origins,
        max_body_bytes=settings.max_body_bytes,
        allowed_hosts=settings.allowed_hosts,
        metrics=scrape,
        exception_handlers={
            AijobsError: handle_api_error,
            HTTPException: not_found_route,
            Exception: handle_unexpected,
        },
    )


def app_from_env() -> Starlette:
    """The zero-argument factory `aijobs web` (the Procfile's web) has uvicorn call."""
    from ..logs import setup_logging

    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # a message naming the variable, not a traceback
        raise SystemExit(f"aijobs: bad setting: {exc}") from None
    setup_logging(settings.log_level, json_lines=settings.log_json, secrets=settings.secret_values())
    if not settings.redis_url:
        raise SystemExit(
            "REDIS_URL is not set: point it at Redis, or run `scripts/dev` (`aijobs dev`), which starts an embedded "
            "Redis with web and worker."
        )
    return create_app(settings, redis_url=settings.redis_url)
