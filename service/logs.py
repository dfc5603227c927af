"""Structured logs: one JSON object per line, with the `extra={...}` fields of each call, the fields bound to the
current context (`bind`: a request's id, a job's id, user and attempt), and every secret masked.

A context binding follows the work, not the code: the web binds `request_id` for each request, the worker binds
`request_id`, `job_id`, `user_id` and `attempt` for each run, and every line logged under it (by our code, a
provider, the governor) carries them, so `jq 'select(.request_id == "…")'` follows one submission from its POST
to the worker's last line.

Redaction runs on the finished line (JSON or text), so no field, message or traceback escapes it: bearer tokens,
`sk-…` provider keys, aijobs API tokens (`aij_…`), the session cookie, passwords in URLs, and the exact secrets the
settings hold. Fields named like a secret (`api_key`, `authorization`, `cookie`, `sealed_key`, …) are masked whole.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

# uvicorn adds `color_message` (its message with terminal colour codes) for its own console formatter: never data
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}

_NOTHING: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("aijobs_log_context", default=_NOTHING)


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add fields to every line logged from here on in this context (a request's task, a job's run); give the token
    to `unbind` where the work ends, so a task that goes on (a worker's loop) does not keep them."""
    return _context.set({**_context.get(), **fields})


def unbind(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


def bound() -> Mapping[str, Any]:
    """The fields bound in this context."""
    return _context.get()


# Field names whose values are secret whatever they hold (compared lower-case, `-` as `_`).
SECRET_FIELDS = frozenset(
    {"authorization", "cookie", "set_cookie", "api_key", "provider_key", "sealed_key", "password", "secret_key",
     "metrics_token", "token"}
)  # fmt: skip
_MASK = "***"
# Each keeps what names the secret (`Bearer `, `sk-`) and masks the rest; none matches a quote or a backslash, so a
# JSON line stays valid JSON.
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;\\]+"), r"\1" + _MASK),
    (re.compile(r"\b(sk-)[A-Za-z0-9_\-]{6,}"), r"\1" + _MASK),
    (re.compile(r"\b(aij_)[A-Za-z0-9_\-]{8,}"), r"\1" + _MASK),
    (re.compile(r"(aijobs_session=)[^;\s\"\\]+"), r"\1" + _MASK),
    (re.compile(r"(://[^/:@\s\"\\]*:)[^/@\s\"\\]+@"), r"\1" + _MASK + "@"),
]


class Redactor:
    """Masks secrets in a finished log line; `secrets` are exact values (the settings' keys and tokens)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        exact = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        # each as written raw and as JSON escapes it (a secret with a quote or a backslash in it)
        forms = {form for s in exact for form in (s, json.dumps(s, ensure_ascii=False)[1:-1])}
        self._exact = re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True)))) if forms else None

    def __call__(self, line: str) -> str:
        if self._exact is not None:
            line = self._exact.sub(_MASK, line)
        for pattern, replacement in _PATTERNS:
            line = pattern.sub(replacement, line)
        return line


def _secret_field(key: str) -> bool:
    return key.lower().replace("-", "_") in SECRET_FIELDS


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        for key in [k for k in out if _secret_field(k)]:
            out[key] = _MASK
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(out, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """LOG_JSON=false: one readable line, with the bound fields after the message, redacted all the same."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _context.get()
        if fields:
            line += " " + " ".join(f"{k}={_MASK if _secret_field(k) else v}" for k, v in fields.items())
        return self.redact(line)


def setup_logging(level: str = "INFO", *, json_lines: bool = True, secrets: Iterable[str] = ()) -> None:
    """One handler on the root logger; `secrets`: the exact values to mask (Settings.secret_values())."""
    handler = logging.StreamHandler(sys.stderr)
    redactor = Redactor(secrets)
    handler.setFormatter(JsonFormatter(redactor) if json_lines else TextFormatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
