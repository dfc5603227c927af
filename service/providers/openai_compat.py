"""Provider for any OpenAI-compatible HTTP API (OpenAI, xAI Grok, Ollama, vLLM, LM Studio, OpenRouter...).

Every httpx exception and HTTP error status is translated here, at the boundary, into a `ProviderError`
so callers only ever decide "retry or give up" and show `.message` to a human. The API key never
appears in a message, a repr or a log line; provider error text is redacted before it is quoted.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from .base import ChatMessage, ChatResult, ImageResult, OnDelta, Usage, estimate_tokens, estimate_usage
from .errors import (
    AuthError,
    BadRequest,
    BadResponse,
    ContentRefused,
    ProviderError,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)

DEFAULT_MAX_RESPONSE_BYTES = 20 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
PROVIDER_TEXT_LIMIT = 300
CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})


class _Secret:
    """Holds the API key so that debuggers, `vars()` dumps and tracebacks-with-locals show `***`."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value or None

    def __repr__(self) -> str:
        return "'***'" if self.value else "None"


class OpenAICompatProvider:
    """Chat and image generation over `POST {base_url}/chat/completions` and `/images/generations`."""

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        default_model: str,
        image_model: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 120.0,
        name: str = "openai",
    ) -> None:
        self.name = name
        self.default_model = default_model
        self.image_model = image_model
        self._base_url = base_url.rstrip("/")
        self._api_key = _Secret(api_key)
        # Names the server key's rate-limit budget (the governor's): a hash, never the key; another key, another budget.
        self.key_id = hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "server"
        # httpx timeouts apply per operation (connect, each read), so a long stream is fine as long as it keeps moving.
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 15.0))
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=self._timeout)

    def __repr__(self) -> str:
        key = "<set>" if self._api_key.value else None
        return (
            f"{type(self).__name__}(name={self.name!r}, base_url={_display_url(self._base_url)!r}, "
            f"default_model={self.default_model!r}, image_model={self.image_model!r}, api_key={key})"
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # ----------------------------------------------------------------------------------------------- chat

    async def chat(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_delta: OnDelta | None = None,
        api_key: str | None = None,
    ) -> ChatResult:
        chosen = model or self.default_model
        payload: dict[str, Any] = {
            "model": chosen,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        }
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if temperature is not None:
            payload["temperature"] = temperature
        if on_delta is None:
            async with self._request("/chat/completions", payload, api_key) as response:
                body = await _read_capped(response, self.max_response_bytes)
            result = _chat_result(_json_object(body), messages, chosen, self._secrets(api_key))
            return replace(result, limits=rate_headers(response.headers))

        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        async with self._request("/chat/completions", payload, api_key) as response:
            if response.headers.get("content-type", "").startswith("application/json"):
                # Some servers ignore `stream: true`; treat the whole answer as a single delta.
                body = await _read_capped(response, self.max_response_bytes)
                result = _chat_result(_json_object(body), messages, chosen, self._secrets(api_key))
                if result.text:
                    await on_delta(result.text)
                return replace(result, limits=rate_headers(response.headers))
            result = await self._consume_stream(response, messages, chosen, on_delta, self._secrets(api_key))
            return replace(result, limits=rate_headers(response.headers))

    async def _consume_stream(
        self,
        response: httpx.Response,
        messages: list[ChatMessage],
        requested_model: str,
        on_delta: OnDelta,
        secrets: list[str],
    ) -> ChatResult:
        parts: list[str] = []
        usage: Usage | None = None
        finish_reason: str | None = None
        reported_model: str | None = None
        done = False
        async for data in _sse_data(response, self.max_response_bytes):
            if data.strip() == "[DONE]":
                done = True
                break
            chunk = _json_object(data.encode())
            if "error" in chunk:
                raise _stream_error(chunk, secrets)
            if isinstance(chunk.get("model"), str) and chunk["model"]:
                reported_model = chunk["model"]
            usage = _parse_usage(chunk.get("usage")) or usage
            choices = chunk.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                continue  # the usage-only final chunk has `choices: []`
            choice = choices[0]
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(piece, str) and piece:
                parts.append(piece)
                await on_delta(piece)
            if isinstance(choice.get("finish_reason"), str):
                finish_reason = choice["finish_reason"]
        if not done and finish_reason is None:
            raise ProviderServerError(
                "The AI provider's stream ended before the answer was complete; retrying usually helps."
            )
        text = "".join(parts)
        if finish_reason == "content_filter":
            raise ContentRefused(_refused_message(None))
        return ChatResult(
            text=text,
            model=reported_model or requested_model,
            usage=usage or estimate_usage(messages, text),
            finish_reason=finish_reason,
        )

    # ---------------------------------------------------------------------------------------------- image

    async def image(
        self,
        prompt: str,
        *,
        n: int = 1,
        size: str = "512x512",
        model: str | None = None,
        api_key: str | None = None,
    ) -> ImageResult:
        chosen = model or self.image_model
        payload: dict[str, Any] = {"prompt": prompt, "n": n, "size": size}
        if chosen:
            payload["model"] = chosen
        if not (chosen or "").startswith("gpt-image"):
            payload["response_format"] = "b64_json"  # gpt-image-* always returns base64 and rejects this field
        async with self._request("/images/generations", payload, api_key) as response:
            body = await _read_capped(response, self.max_response_bytes)
            limits = rate_headers(response.headers)
        data = _json_object(body)
        images = _images(data.get("data"))
        usage = _parse_usage(data.get("usage")) or Usage(prompt_tokens=estimate_tokens(prompt), estimated=True)
        reported = data.get("model")
        return ImageResult(
            images=images,
            model=reported if isinstance(reported, str) and reported else chosen or "default",
            usage=usage,
            limits=limits,
        )

    # ------------------------------------------------------------------------------------------- plumbing

    def _secrets(self, api_key: str | None) -> list[str]:
        return [k for k in (api_key, self._api_key.value) if k]

    def _headers(self, api_key: str | None) -> dict[str, str]:
        key = api_key or self._api_key.value
        return {"Authorization": f"Bearer {key}"} if key else {}

    @asynccontextmanager
    async def _request(self, path: str, payload: dict[str, Any], api_key: str | None) -> AsyncIterator[httpx.Response]:
        """POST and yield the streaming response; any httpx failure, here or in the caller's block, is translated.

        `client.stream` is used even for plain JSON so that the body size can be capped and so that a
        cancelled task leaves the `async with` and closes the upstream connection at once.
        """
        where = _display_url(self._base_url)
        try:
            async with self._client.stream(
                "POST", f"{self._base_url}{path}", json=payload, headers=self._headers(api_key), timeout=self._timeout
            ) as response:
                if not 200 <= response.status_code < 300:
                    body = await _read_capped(response, MAX_ERROR_BODY_BYTES, truncate=True)
                    raise _status_error(response.status_code, response.headers, body, self._secrets(api_key))
                yield response
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"The AI provider at {where} did not answer in time ({type(exc).__name__}); "
                "it may be overloaded, so try again later."
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise BadRequest(
                f"The AI provider URL {where!r} is not a valid http(s) URL; fix the configured base URL."
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"Could not reach the AI provider at {where} ({type(exc).__name__}); "
                "check that it is running and the base URL is right, then try again."
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderServerError(
                f"The AI provider at {where} sent a response that could not be read ({type(exc).__name__}); "
                "try again later."
            ) from exc


# ------------------------------------------------------------------------------------------------ helpers


def _display_url(url: str) -> str:
    """scheme://host[:port]/path without userinfo or query, which may carry credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else "<invalid URL>"


async def _read_capped(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """Read at most `limit` bytes, so a broken or hostile server cannot exhaust our memory."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            if truncate:
                chunks.append(chunk[: limit - (total - len(chunk))])
                break
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ProviderServerError:
    return ProviderServerError(
        f"The AI provider sent a response larger than {limit // (1024 * 1024)} MB, so it was refused; "
        "try a smaller request."
    )


async def _sse_data(response: httpx.Response, limit: int) -> AsyncIterator[str]:
    """Yield the `data` payload of each server-sent event, capping the total size read."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending: list[str] = []
    data_lines: list[str] = []
    total = 0

    def feed(line: str) -> str | None:
        line = line.removesuffix("\r")
        if not line:
            if not data_lines:
                return None
            event = "\n".join(data_lines)
            data_lines.clear()
            return event
        if line.startswith(":"):
            return None  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            data_lines.append(value.removeprefix(" "))
        return None

    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        pieces = decoder.decode(chunk).split("\n")
        pending.append(pieces[0])
        if len(pieces) == 1:
            continue
        lines = ["".join(pending), *pieces[1:-1]]
        pending = [pieces[-1]]
        for line in lines:
            if (event := feed(line)) is not None:
                yield event
    for line in ("".join(pending) + decoder.decode(b"", final=True), ""):
        if (event := feed(line)) is not None:
            yield event


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderServerError("The AI provider sent a response that is not valid JSON; retrying usually helps.")
    return data


def _chat_result(
    data: dict[str, Any], messages: list[ChatMessage], requested_model: str, secrets: list[str]
) -> ChatResult:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        if "error" in data:
            raise _stream_error(data, secrets)
        raise ProviderServerError("The AI provider's response contained no answer (no choices); retrying may help.")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    text = _content_text(message.get("content"))
    finish_reason = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
    refusal = message.get("refusal")
    if finish_reason == "content_filter" or (isinstance(refusal, str) and refusal and not text):
        raise ContentRefused(_refused_message(refusal if isinstance(refusal, str) else None))
    reported = data.get("model")
    return ChatResult(
        text=text,
        model=reported if isinstance(reported, str) and reported else requested_model,
        usage=_parse_usage(data.get("usage")) or estimate_usage(messages, text),
        finish_reason=finish_reason,
    )


def _content_text(content: object) -> str:
    """`content` is usually a string but some servers send a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _parse_usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None

    def count(*names: str) -> int | None:
        for name in names:
            value = raw.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    prompt = count("prompt_tokens", "input_tokens")
    completion = count("completion_tokens", "output_tokens")
    if prompt is None and completion is None:
        return None
    return Usage(prompt_tokens=prompt or 0, completion_tokens=completion or 0)


# Raster types a job's result may hold, each with the bytes its files start with. No SVG: it can carry scripts.
RASTER_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and "WEBP" at offset 8
}
_TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
_ACCEPTED = "PNG, JPEG, WebP or GIF"
_FIX = "check that AI_IMAGE_MODEL names an image model that returns PNG, JPEG, WebP or GIF"


class _Unusable(Exception):
    """One image item that cannot be used, and why (in words for the job's error)."""


def _images(items: object) -> list[str]:
    """The usable images of a response's `data` (each an https URL or a raster data: URL); an item that cannot be
    used is left out, and a response with none left is a `BadResponse` (retrying the same request will not help)."""
    if not isinstance(items, list) or not items:
        raise BadResponse(f"The AI provider's image response held no images (no `data` list); {_FIX}.")
    images: list[str] = []
    reasons: list[str] = []
    for index, item in enumerate(items):
        try:
            images.append(_image_url(item))
        except _Unusable as why:
            reasons.append(f"image {index + 1}: {why}")
    if not images:
        raise BadResponse(f"The AI provider's image response cannot be used ({'; '.join(reasons[:3])}); {_FIX}.")
    return images


def _image_url(item: object) -> str:
    if not isinstance(item, dict):
        raise _Unusable("not an object")
    url = item.get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return url
    if isinstance(url, str) and url[:5].lower() == "data:":
        return _data_url(url)
    b64 = item.get("b64_json")
    if isinstance(b64, str) and b64:
        return _raster_data_url(b64, None)
    if isinstance(url, str) and url:
        raise _Unusable(f"its url is neither https nor a data: URL ({url[:24]!r}…)")
    raise _Unusable("it has neither `url` nor `b64_json`")


def _data_url(url: str) -> str:
    """A `data:image/...;base64,` URL, checked: a raster type, base64 that decodes, bytes of that type."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise _Unusable("a data: URL without data")
    params = [p.strip().lower() for p in header.split(";")]
    declared = _TYPE_ALIASES.get(params[0], params[0])
    if declared == "image/svg+xml":
        raise _Unusable(f"an SVG image, which aijobs does not accept (it can carry scripts); only {_ACCEPTED}")
    if declared not in RASTER_MAGIC:
        raise _Unusable(f"a data: URL of type {declared or 'none'!r}; only {_ACCEPTED} images are accepted")
    if "base64" not in params[1:]:
        raise _Unusable("a data: URL that is not base64-encoded")
    return _raster_data_url(payload, declared)


def _raster_data_url(b64: str, declared: str | None) -> str:
    """`data:<type>;base64,<b64>` once the base64 decodes to a PNG, JPEG, WebP or GIF (of type `declared`, if
    given: providers differ, e.g. xAI returns JPEG, so an undeclared type is read from the bytes)."""
    b64 = "".join(b64.split())
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise _Unusable("its base64 does not decode") from None
    sniffed = _sniff_image_type(raw)
    if sniffed is None:
        what = "SVG" if raw.lstrip()[:5].lower() in (b"<svg ", b"<?xml", b"<svg>") else "not an image aijobs knows"
        raise _Unusable(f"its bytes are {what}; only {_ACCEPTED} images are accepted")
    if declared is not None and sniffed != declared:
        raise _Unusable(f"declared {declared} but its bytes are {sniffed}")
    return f"data:{sniffed};base64,{b64}"


def _sniff_image_type(raw: bytes) -> str | None:
    """The raster type the bytes start with, or None."""
    for kind, magics in RASTER_MAGIC.items():
        if raw.startswith(magics) and (kind != "image/webp" or raw[8:12] == b"WEBP"):
            return kind
    return None


def rate_headers(headers: httpx.Headers) -> dict[str, str] | None:
    """The `x-ratelimit-*` headers of an answer (OpenAI, Azure, Groq, vLLM's proxies...), for the governor."""
    found = {name: value for name, value in headers.items() if name.startswith("x-ratelimit-")}
    return found or None


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (Azure/OpenAI) or `Retry-After` (seconds or an HTTP-date)."""
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000.0)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _finite(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _error_details(body: bytes) -> tuple[str, set[str]]:
    """(message, codes) from an OpenAI-style `{"error": {...}}` body or the other shapes seen in the wild."""
    text = body.decode("utf-8", "replace")
    try:
        data: Any = json.loads(text)
    except ValueError:
        return text, set()
    if isinstance(data, list) and data:
        data = data[0]  # e.g. Google's OpenAI-compatible endpoint
    if not isinstance(data, dict):
        return text, set()
    error = data.get("error", data)
    if isinstance(error, str):
        return error, set()
    if not isinstance(error, dict):
        return text, set()
    codes = {str(error[k]) for k in ("code", "type") if isinstance(error.get(k), str | int)}
    message = error.get("message") or error.get("detail") or data.get("detail")
    return (message if isinstance(message, str) else text), codes


def _clean(text: str, secrets: Iterable[str]) -> str:
    """Quote provider text safely: no key, one line, at most ~300 characters."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= PROVIDER_TEXT_LIMIT else text[: PROVIDER_TEXT_LIMIT - 1] + "…"


def _refused_message(detail: str | None) -> str:
    said = f" Provider said: {_clean(detail, [])}" if detail else ""
    return f"The AI provider refused to process this content; rephrase the request and try again.{said}"


def _stream_error(chunk: dict[str, Any], secrets: list[str]) -> ProviderError:
    """An error object delivered with HTTP 200 (mid-stream or in place of choices)."""
    detail, codes = _error_details(json.dumps(chunk).encode())
    detail = _clean(detail, secrets)
    if codes & CONTENT_FILTER_CODES:
        return ContentRefused(_refused_message(detail))
    said = f" Provider said: {detail}" if detail else ""
    return ProviderServerError(f"The AI provider reported an error while answering; retrying may help.{said}")


def _status_error(status: int, headers: httpx.Headers, body: bytes, secrets: list[str]) -> ProviderError:
    detail, codes = _error_details(body)
    detail = _clean(detail, secrets)
    said = f" Provider said: {detail}" if detail else ""
    retry_after = parse_retry_after(headers)
    if status == 429 and "insufficient_quota" in codes:
        # OpenAI reports an exhausted account as 429, but waiting will not help.
        return AuthError(
            f"The AI provider account is out of quota or credits (HTTP 429): add billing or use another key.{said}",
            status=status,
        )
    if status == 429:
        wait = f" in {retry_after:g} s" if retry_after is not None else " later"
        return RateLimited(
            f"The AI provider is rate-limiting requests (HTTP 429); try again{wait}.{said}",
            status=status,
            retry_after=retry_after,
            limits=rate_headers(headers),
        )
    if status in (401, 403):
        return AuthError(
            f"The AI provider rejected the API key (HTTP {status}): check AI_API_KEY or the key you supplied.{said}",
            status=status,
        )
    if status == 402:
        return AuthError(
            f"The AI provider requires payment (HTTP 402): check the account's billing or use another key.{said}",
            status=status,
        )
    if 400 <= status < 500 and codes & CONTENT_FILTER_CODES:
        return ContentRefused(_refused_message(detail), status=status)
    if status == 408:
        return ProviderTimeout(f"The AI provider timed out (HTTP 408); try again later.{said}", status=status)
    if status >= 500:
        return ProviderServerError(
            f"The AI provider had a server error (HTTP {status}); trying again later usually helps.{said}",
            status=status,
            retry_after=retry_after,
        )
    if status == 404:
        return BadRequest(
            f"The AI provider returned HTTP 404: the model name or the base URL is probably wrong.{said}",
            status=status,
        )
    if 400 <= status < 500:
        return BadRequest(
            f"The AI provider rejected the request (HTTP {status}); change the model, parameters or input "
            f"before trying again.{said}",
            status=status,
        )
    return BadRequest(
        f"The AI provider answered with unexpected HTTP {status}; check the base URL (redirects are not followed).",
        status=status,
    )
