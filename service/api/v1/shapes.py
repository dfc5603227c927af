"""A job as OpenAI's objects: a Response (`response` and `chat` jobs), a chat completion and its chunks, a model list.

Ids carry the job's own: `resp_<job id>`, `msg_<job id>`, `chatcmpl-<job id>`; the native API and the page show the
same job under its plain id.
"""

from __future__ import annotations

from typing import Any

from ...config import Settings
from ...models import Job, JobStatus
from ...providers.factory import chat_model_name, image_model_name

RESPONSE_PREFIX = "resp_"
CHAT_PREFIX = "chatcmpl-"
FACADE_TYPES = frozenset({"response", "chat"})  # the job types a Response can be read from

STATUSES = {
    JobStatus.QUEUED: "queued",
    JobStatus.PROCESSING: "in_progress",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.EXPIRED: "failed",
}
# Our error codes as OpenAI's ResponseError codes; anything else is a server_error (the message says which).
ERROR_CODES = {"rate_limited": "rate_limit_exceeded", "content_refused": "invalid_prompt"}


def response_id(job_id: str) -> str:
    return RESPONSE_PREFIX + job_id


def message_id(job_id: str) -> str:
    return "msg_" + job_id


def job_id_of(public_id: str) -> str:
    """The job id inside a response or chat completion id (a plain job id is taken as it is)."""
    for prefix in (RESPONSE_PREFIX, CHAT_PREFIX):
        if public_id.startswith(prefix):
            return public_id[len(prefix) :]
    return public_id


def primary_model(settings: Settings) -> str:
    """The first model of the server's chat chain: what answers unless it fails over."""
    return chat_model_name(model=settings.ai_model, simulated=settings.uses_simulated_ai)


def output_text(job: Job) -> str:
    """The answer: the whole reply once completed, else what was written before it stopped (or so far)."""
    if job.status is JobStatus.COMPLETED and isinstance(job.result, dict):
        reply = job.result.get("reply")
        return reply if isinstance(reply, str) else ""
    return job.partial_output or ""


def incomplete(job: Job) -> bool:
    """Completed, but cut at max_output_tokens: OpenAI's `incomplete` response."""
    return (
        job.status is JobStatus.COMPLETED
        and isinstance(job.result, dict)
        and job.result.get("finish_reason") == ("length")
    )


def response_status(job: Job) -> str:
    return "incomplete" if incomplete(job) else STATUSES[job.status]


def item_status(job: Job) -> str:
    if job.status is JobStatus.COMPLETED:
        return "incomplete" if incomplete(job) else "completed"
    return "in_progress" if not job.terminal else "incomplete"


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(job: Job, text: str | None = None, *, status: str | None = None) -> dict[str, Any]:
    """The response's one output item; `text` None: the content as the job holds it."""
    content = [text_part(output_text(job) if text is None else text)]
    return {
        "type": "message",
        "id": message_id(job.id),
        "role": "assistant",
        "status": status or item_status(job),
        "content": content,
    }


def empty_item(job: Job) -> dict[str, Any]:
    """The output item as the stream first announces it: nothing written yet."""
    return {"type": "message", "id": message_id(job.id), "role": "assistant", "status": "in_progress", "content": []}


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_error(job: Job) -> dict[str, Any] | None:
    if job.status not in (JobStatus.FAILED, JobStatus.EXPIRED) or job.error is None:
        return None
    return {"code": ERROR_CODES.get(job.error.code, "server_error"), "message": job.error.message}


def response_object(job: Job, settings: Settings, *, with_output: bool = True) -> dict[str, Any]:
    """The Response as `GET /v1/responses/{id}` shows it (`with_output` False: as a stream's lifecycle events
    announce it, before the text); its output holds the text so far while the job runs."""
    given = job.input
    text = output_text(job)
    output = [message_item(job, text)] if with_output and (text or job.terminal) else []
    return {
        "id": response_id(job.id),
        "object": "response",
        "created_at": int(job.created_at),
        "status": response_status(job),
        "background": bool(given.get("background", False)),
        "completed_at": int(job.completed_at) if job.completed_at and job.status is JobStatus.COMPLETED else None,
        "error": response_error(job),
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete(job) else None,
        "instructions": given.get("instructions"),
        "max_output_tokens": given.get("max_output_tokens", given.get("max_tokens")),
        "metadata": given.get("metadata") or {},
        "model": job.model or given.get("model") or primary_model(settings),
        "output": output,
        "output_text": text if output else "",
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "reasoning": None,
        "store": True,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": response_usage(job.usage),
        "user": None,
    }


def chat_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    prompt = int((usage or {}).get("prompt_tokens") or 0)
    completion = int((usage or {}).get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(job: Job, settings: Settings) -> dict[str, Any]:
    return {
        "id": CHAT_PREFIX + job.id,
        "object": "chat.completion",
        "created": int(job.created_at),
        "model": job.model or primary_model(settings),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": output_text(job), "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": chat_usage(job.usage),
    }


def chat_chunk(
    job: Job, model: str, delta: dict[str, Any] | None, *, finish: str | None = None, usage: bool = False
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `usage`: the last one, with no choices and the tokens used (include_usage)."""
    chunk: dict[str, Any] = {
        "id": CHAT_PREFIX + job.id,
        "object": "chat.completion.chunk",
        "created": int(job.created_at),
        "model": model,
        "choices": [] if usage else [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}],
    }
    if usage:
        chunk["usage"] = chat_usage(job.usage)
    return chunk


def models(settings: Settings) -> list[dict[str, Any]]:
    """The models the server's providers answer with: the chat chain (AI_MODEL, then AI_FALLBACK_MODELS, a
    `provider:model` entry named as written) and the image model."""
    primary = "simulated" if settings.uses_simulated_ai else "openai"
    chain = [(primary_model(settings), primary)]
    for entry in settings.ai_fallback_models:
        name, sep, _ = entry.partition(":")
        chain.append((entry, name if sep and name in (*settings.providers, "openai", "simulated") else primary))
    image = image_model_name(model=settings.ai_image_model, simulated=settings.uses_simulated_ai)
    seen: dict[str, dict[str, Any]] = {}
    for model_id, owner in [*chain, (image, primary)]:
        seen.setdefault(model_id, {"id": model_id, "object": "model", "created": 0, "owned_by": owner})
    return list(seen.values())
