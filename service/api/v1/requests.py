"""An OpenAI request body into the submission of a job: `POST /v1/responses` into a `response` job, `POST
/v1/chat/completions` into a `chat` job.

What aijobs can honour is taken; parameters that only tune sampling or bookkeeping are accepted and not applied
(IGNORED, listed in the README); anything that would change what comes back (tools, several choices, structured
output, images, a previous response) is refused with a 400 naming it, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ApiError
from ...schema import ValidationError, parse
from ...tasks.chat import ChatInput
from ...tasks.response import ResponseInput

RESPONSE_FIELDS = frozenset({"model", "input", "instructions", "max_output_tokens", "metadata", "background", "stream"})
RESPONSE_IGNORED = frozenset(
    {
        "temperature", "top_p", "top_logprobs", "store", "user", "safety_identifier", "prompt_cache_key",
        "prompt_cache_retention", "service_tier", "truncation", "parallel_tool_calls", "include", "stream_options",
        "reasoning", "max_tool_calls", "text", "tools", "tool_choice",
    }
)  # fmt: skip
CHAT_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n"})
CHAT_IGNORED = frozenset(
    {
        "temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "stop", "user", "metadata", "store",
        "logit_bias", "service_tier", "reasoning_effort", "safety_identifier", "prompt_cache_key", "verbosity",
        "parallel_tool_calls", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "modalities",
    }
)  # fmt: skip
# Where a field of a job's input came from in the OpenAI request, for `param` in a refusal (errors.job_param).
RESPONSE_PARAMS = {"messages": "input"}
CHAT_PARAMS = {"messages": "messages", "max_tokens": "max_tokens"}

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    job: dict[str, Any]  # the submission: {"type": "response", "input": {...}}
    background: bool
    stream: bool


@dataclass(frozen=True, slots=True)
class ChatRequest:
    job: dict[str, Any]  # {"type": "chat", "input": {...}}
    stream: bool
    include_usage: bool
    model: str | None


def bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, code, message, field=param)


def unsupported(param: str, what: str) -> ApiError:
    return ApiError(
        400,
        "unsupported_parameter",
        f"{what} is not supported by aijobs' OpenAI-compatible API (see the README, OpenAI-compatible API).",
        field=param,
    )


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "The request body must be a JSON object.")
    return body


def _unknown(body: dict[str, Any], known: frozenset[str], ignored: frozenset[str]) -> None:
    for name in sorted(body):
        if name not in known and name not in ignored:
            raise ApiError(400, "unknown_parameter", f"Unknown parameter: {name!r}.", field=name)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad(name, f"'{name}' must be true or false.", "invalid_type")
    return bool(value)


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise bad(name, f"'{name}' must be a string.", "invalid_type")
    return value


def _text(content: Any, param: str) -> str:
    """A message's content: a string, or a list of text parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(param, f"'{param}' must be a string or a list of text parts.", "invalid_type")
    pieces: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise unsupported(f"{param}[{i}]", f"A content part of type {kind!r} (only text parts are)")
        pieces.append(part["text"])
    return "\n".join(pieces)


def _message(item: Any, param: str) -> dict[str, str]:
    if not isinstance(item, dict):
        raise bad(param, f"'{param}' must be a message object.", "invalid_type")
    kind = item.get("type", "message")
    if kind != "message":
        raise unsupported(param, f"An input item of type {kind!r} (only messages are)")
    role = item.get("role")
    if role not in ROLES:
        raise unsupported(f"{param}.role", f"The role {role!r} (user, assistant, system and developer are)")
    return {"role": ROLES[role], "content": _text(item.get("content"), f"{param}.content")}


def _checked(cls: type, job_input: dict[str, Any], params: dict[str, str]) -> None:
    """Validate the job's input here too, to name the OpenAI parameter at fault in OpenAI's words."""
    try:
        parse(cls, job_input)
    except ValidationError as exc:
        head = exc.field.split(".")[0].split("[")[0]
        param = params.get(head, exc.field)
        raise bad(param, f"'{param}' ({exc.field}) {exc.message}.") from None


def response_request(body: Any) -> ResponseRequest:
    body = _object(body)
    _unknown(body, RESPONSE_FIELDS, RESPONSE_IGNORED)
    if body.get("tools"):
        raise unsupported("tools", "Tools")
    if body.get("tool_choice") not in (None, "auto", "none"):
        raise unsupported("tool_choice", "Forcing a tool")
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict) and text["format"].get("type") != "text":
        raise unsupported("text.format", "Structured output (text.format other than text)")
    raw = body.get("input")
    if isinstance(raw, str):
        messages = [{"role": "user", "content": raw}]
    elif isinstance(raw, list) and raw:
        messages = [_message(item, f"input[{i}]") for i, item in enumerate(raw)]
    else:
        raise bad("input", "'input' is required: a string, or a list of messages.", "missing_required_parameter")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad("metadata", "'metadata' must be an object of strings.", "invalid_type")
    background = _flag(body, "background")
    job_input: dict[str, Any] = {
        "messages": messages,
        "instructions": _optional_str(body, "instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": _optional_str(body, "model"),
        "metadata": metadata,
        "background": background,
    }
    _checked(ResponseInput, job_input, RESPONSE_PARAMS)
    return ResponseRequest({"type": "response", "input": job_input}, background, _flag(body, "stream"))


def chat_request(body: Any) -> ChatRequest:
    body = _object(body)
    _unknown(body, CHAT_FIELDS, CHAT_IGNORED)
    if body.get("n") not in (None, 1):
        raise unsupported("n", "More than one choice (n)")
    if body.get("tools"):
        raise unsupported("tools", "Tools")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise unsupported("response_format", "Structured output (response_format other than text)")
    if body.get("modalities") not in (None, ["text"]):
        raise unsupported("modalities", "Output other than text")
    if body.get("logprobs"):
        raise unsupported("logprobs", "Log probabilities")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("messages", "'messages' is required: a list of messages.", "missing_required_parameter")
    messages = [_message(item, f"messages[{i}]") for i, item in enumerate(raw)]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "'stream_options' must be an object.", "invalid_type")
    job_input = {"messages": messages, "max_tokens": limit}
    _checked(ChatInput, job_input, CHAT_PARAMS)
    return ChatRequest(
        {"type": "chat", "input": job_input},
        stream=_flag(body, "stream"),
        include_usage=bool(options and options.get("include_usage")),
        model=_optional_str(body, "model"),
    )
