"""A deterministic, offline provider: the default without an API key, and the way to demo every error path.

Directives, written anywhere in a user message (or in an image prompt) and stripped before replying:

    [[fail:429]]  [[fail:429:retry_after=3]]   RateLimited (retry_after defaults to 1.0)
    [[fail:500]]  (any 5xx)                      ProviderServerError
    [[fail:400]]  [[fail:401]]  (any 4xx)        BadRequest / AuthError (401, 403)
    [[fail:timeout]]                             ProviderTimeout, after min(delay, 0.5) s
    [[fail:refused]]                             ContentRefused
    [[fail:midstream]]                           streams half the reply, then ProviderServerError
    [[fail:KIND:times=N]]                        fails only the first N identical calls on this instance
    [[echo:TEXT]]                                the reply is exactly TEXT
    [[slow:SECONDS]]                             this call takes SECONDS instead of `delay`
    [[stamp:N]]                                  the reply is N tokens handed on a fixed schedule over the
                                                 call's seconds; every STAMP_EVERY-th is `~` and the wall-clock
                                                 microseconds (mod 16**9, 9 hex digits) at which it is handed to
                                                 the caller, the others `tok ` (the streaming bench's latency
                                                 stamps, ~5 characters a token on average as in real text)

With `limit` (an `UpstreamLimit`), the simulator also enforces a provider's sustained RPM/TPM per key: every answer
carries the `x-ratelimit-*` headers, and a call over the budget raises RateLimited with them and a Retry-After.

Model names inject failures too: `sim-fail-500`, `sim-fail-400`, `sim-fail-429`, `sim-fail-timeout`...

System-message conventions shape the reply: `FORMAT:titles:N` gives N numbered titles, `FORMAT:summary:N` a
summary of at most N sentences (at most 3; `FORMAT:summary`: 3); otherwise a 40-80 word conversational paragraph.
`max_tokens` cuts the reply at a word so that its counted completion tokens (~4 characters each) stay within it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from .base import ChatMessage, ChatResult, ImageResult, OnDelta, Usage, estimate_tokens, estimate_usage
from .errors import (
    AuthError,
    BadRequest,
    ContentRefused,
    ProviderError,
    ProviderServerError,
    ProviderTimeout,
    RateLimited,
)
from .upstream_limit import UpstreamLimit

_DIRECTIVE = re.compile(r"\[\[(fail|echo|slow|stamp):(.*?)\]\]", re.DOTALL)
STAMP_MODULO = 16**9  # [[stamp:N]]: microseconds wrap after ~19 hours; 9 hex digits a token
STAMP_EVERY = 4  # [[stamp:N]]: tokens 0, 4, 8... carry the stamp
_TITLES = re.compile(r"FORMAT:titles:(\d+)")
_SUMMARY = re.compile(r"FORMAT:summary(?::(\d+))?")
_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*")
_TOKEN = re.compile(r"\s*\S+\s*|\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_STOPWORDS = frozenset(
    """about above after again against also been before being below between both could does doing down during each
    from further have having here into just more most once only other over same should some such than that their
    theirs them then there these they this those through under until very were what when where which while with
    would your yours please write give tell make made want need like know help explain something anything best
    ways using used good great many much well thing things able don't it's what's i'm that's there's""".split()
)
_FALLBACK_WORDS = ("ideas", "context", "details", "examples", "questions", "practice")
_TITLE_TEMPLATES = (
    "The Hidden Side of {a}",
    "{a} and {b}: A Practical Guide",
    "Why {a} Matters More Than You Think",
    "Rethinking {a} for a World of {b}",
    "From {a} to {b}",
    "A Beginner's Guide to {a}",
    "What {a} Teaches Us About {b}",
    "{a}, {b} and the Future of {c}",
    "Inside the World of {a}",
    "Seven Lessons on {a}",
    "The Surprising Link Between {a} and {b}",
    "How {a} Shapes {b}",
    "Making Sense of {a}",
    "{a} Without the Jargon",
    "The Case for {a}",
    "Notes on {a} and {b}",
)
_CHAT_TEMPLATES = (
    "When thinking about {a}, it helps to consider how it relates to {b}.",
    "Many people find that {a} becomes much clearer once you look at concrete examples.",
    "In short, {a} and {b} are more closely connected than they first appear.",
    "A good next step would be to explore {a} in a little more depth.",
    "There are several angles to {a}, from the practical to the theoretical.",
    "One useful way to approach {a} is to break it into smaller, more manageable parts.",
    "It is worth noting that {b} often plays a bigger role than expected.",
    "If you are weighing {a} against {b}, start with the trade-offs that matter most to you.",
    "Experts tend to agree that {a} rewards patience and careful attention to {b}.",
    "Keep in mind that context matters: what works for {a} may not carry over to {b}.",
)
_CHAT_OPENERS = (
    "Great question about {a}.",
    "Here is a quick take on {a}.",
    "Happy to help with {a}.",
    "Let's talk about {a}.",
)


@dataclass(frozen=True, slots=True)
class _Failure:
    kind: str
    times: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class _Directives:
    failure: _Failure | None = None
    echo: str | None = None
    slow: float | None = None
    stamp: int | None = None


class SimulatedProvider:
    """Same input, same output, no network; `delay` is the rough total duration of a call."""

    DEFAULT_MODEL = "sim-1"
    IMAGE_MODEL = "sim-image-1"

    def __init__(
        self,
        *,
        delay: float = 2.0,
        token_delay: float | None = None,
        name: str = "simulated",
        default_model: str = DEFAULT_MODEL,
        limit: UpstreamLimit | None = None,
    ) -> None:
        self.name = name
        self.default_model = default_model
        self.image_model = self.IMAGE_MODEL
        self.delay = max(0.0, delay)
        self.token_delay = token_delay
        self.limit = limit
        self.enforces_limits = limit is not None  # without one, the governor leaves its calls alone
        self._attempts: dict[str, int] = {}  # hash of the request -> calls seen, only for `times=` directives

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, default_model={self.default_model!r}, "
            f"delay={self.delay!r}, token_delay={self.token_delay!r})"
        )

    async def aclose(self) -> None:
        return None

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
        _check_model(chosen)
        directives = _Directives()
        cleaned: list[ChatMessage] = []
        for message in messages:
            if message["role"] == "user":
                found, text = _parse_directives(message["content"])
                directives = _merge(directives, found)
                cleaned.append({"role": "user", "content": text})
            else:
                cleaned.append(message)
        limits = self._take(api_key, sum(estimate_tokens(m["content"]) for m in messages) + (max_tokens or 256))
        delay = self.delay if directives.slow is None else directives.slow
        request = json.dumps(messages, sort_keys=True) if directives.failure is not None else ""
        failure = self._due_failure(directives.failure, request)
        if failure is not None and failure.kind != "midstream":
            await self._fail(failure, delay)
        if directives.stamp is not None:
            text = await _emit_stamped(directives.stamp, on_delta, delay)
            usage = estimate_usage(messages, text)
            return ChatResult(text=text, model=chosen, usage=usage, finish_reason="stop", limits=limits)

        text = directives.echo if directives.echo is not None else _reply(cleaned)
        tokens = list(_tokens(text))
        truncated = max_tokens is not None and directives.echo is None and estimate_tokens(text) > max_tokens
        if truncated:
            tokens = _cut(tokens, 4 * max(1, max_tokens or 1))
            text = "".join(tokens)
        per_token = self._per_token(delay, len(tokens), directives.slow is not None)
        if failure is not None:  # midstream: emit half, then break like a dropped upstream stream would
            await self._emit(tokens[: len(tokens) // 2], on_delta, per_token)
            raise ProviderServerError(
                "Simulated failure: the stream broke halfway ([[fail:midstream]]); retrying usually helps.", status=500
            )
        await self._emit(tokens, on_delta, per_token)
        finish = "length" if truncated else "stop"
        usage = estimate_usage(messages, text)
        return ChatResult(text=text, model=chosen, usage=usage, finish_reason=finish, limits=limits)

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
        _check_model(chosen)
        directives, cleaned = _parse_directives(prompt)
        limits = self._take(api_key, estimate_tokens(prompt))
        delay = self.delay if directives.slow is None else directives.slow
        failure = self._due_failure(directives.failure, "image:" + prompt)
        if failure is not None:
            await self._fail(failure, delay)
        if delay > 0:
            await asyncio.sleep(delay)
        width, height = _parse_size(size)
        images = [_svg_data_url(cleaned, i, width, height) for i in range(max(1, min(n, 10)))]
        usage = Usage(prompt_tokens=estimate_tokens(prompt), estimated=True)
        return ImageResult(images=images, model=chosen, usage=usage, limits=limits)

    def _take(self, api_key: str | None, tokens: int) -> dict[str, str] | None:
        """Charge the call to the key's budget (when a limit is set): its headers, or RateLimited with them."""
        if self.limit is None:
            return None
        allowed, wait, headers = self.limit.take(api_key or "", tokens)
        if not allowed:
            raise RateLimited(
                f"Simulated rate limit: over {self.limit.requests} requests per {self.limit.period:g} s on this key "
                f"(HTTP 429); try again in {wait:.2f} s.",
                status=429,
                retry_after=wait if self.limit.retry_after else None,
                limits=headers,
            )
        return headers

    def _due_failure(self, failure: _Failure | None, request: str) -> _Failure | None:
        """Apply `times=N`: count identical requests on this instance and stop failing after N."""
        if failure is None or failure.times is None:
            return failure
        key = hashlib.sha256(request.encode()).hexdigest()
        self._attempts[key] = seen = self._attempts.get(key, 0) + 1
        return failure if seen <= failure.times else None

    def _per_token(self, delay: float, count: int, overridden: bool) -> float:
        if self.token_delay is not None and not overridden:
            return max(0.0, self.token_delay)
        return delay / count if count else 0.0

    async def _emit(self, tokens: list[str], on_delta: OnDelta | None, per_token: float) -> None:
        if on_delta is None:
            if per_token > 0:
                await asyncio.sleep(per_token * len(tokens))
            return
        for token in tokens:
            if per_token > 0:
                await asyncio.sleep(per_token)
            await on_delta(token)

    async def _fail(self, failure: _Failure, delay: float) -> None:
        if failure.kind == "timeout":
            if delay > 0:
                await asyncio.sleep(min(delay, 0.5))
            raise ProviderTimeout("Simulated timeout: the AI provider did not answer in time; try again later.")
        raise _failure_error(failure.kind, failure.retry_after, source=f"[[fail:{failure.kind}]]")


async def _emit_stamped(count: int, on_delta: OnDelta | None, seconds: float) -> str:
    """[[stamp:N]]: N tokens, token i due at start + (i + 1) * seconds / N whatever the caller's own pace (a
    fixed schedule, as an upstream that keeps sending would keep it; a late loop hands the overdue ones at
    once), every STAMP_EVERY-th stamped with the wall clock at the moment it is handed over: sampled, so that
    the streamed text is about as long as real text (a stamp on every token would double what the store
    appends)."""
    loop = asyncio.get_running_loop()
    per_token = seconds / count if count else 0.0
    start = loop.time()
    tokens: list[str] = []
    for i in range(count):
        wait = start + (i + 1) * per_token - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        token = f"~{time.time_ns() // 1000 % STAMP_MODULO:09x} " if i % STAMP_EVERY == 0 else "tok "
        tokens.append(token)
        if on_delta is not None:
            await on_delta(token)
    return "".join(tokens)


def _check_model(model: str) -> None:
    if model.startswith("sim-fail-"):
        kind = model.removeprefix("sim-fail-")
        if kind == "timeout":
            raise ProviderTimeout(f"Simulated timeout from model {model!r}; try again later or use another model.")
        raise _failure_error(kind, None, source=f"model {model!r}")


def _failure_error(kind: str, retry_after: float | None, *, source: str) -> ProviderError:
    if kind == "refused":
        return ContentRefused(f"Simulated refusal ({source}): the provider declined this content; rephrase it.")
    if kind == "midstream":
        return ProviderServerError(f"Simulated broken stream ({source}); retrying usually helps.", status=500)
    status = int(kind) if kind.isdigit() else 0
    if status == 429:
        wait = 1.0 if retry_after is None else retry_after
        return RateLimited(
            f"Simulated rate limit (HTTP 429, {source}); try again in {wait:g} s.", status=429, retry_after=wait
        )
    if 500 <= status < 600:
        return ProviderServerError(
            f"Simulated server error (HTTP {status}, {source}); trying again later usually helps.",
            status=status,
            retry_after=retry_after,
        )
    if status in (401, 403):
        return AuthError(
            f"Simulated auth failure (HTTP {status}, {source}): check AI_API_KEY or the key you supplied.",
            status=status,
        )
    if 400 <= status < 500:
        return BadRequest(f"Simulated bad request (HTTP {status}, {source}); change the request.", status=status)
    return BadRequest(
        f"Unknown simulated failure {kind!r} ({source}); use 429, 5xx, 4xx, timeout, refused or midstream.", status=400
    )


def _parse_directives(text: str) -> tuple[_Directives, str]:
    failure: _Failure | None = None
    echo: str | None = None
    slow: float | None = None
    stamp: int | None = None
    for match in _DIRECTIVE.finditer(text):
        name, arg = match.group(1), match.group(2)
        if name == "echo" and echo is None:
            echo = arg
        elif name == "slow" and slow is None:
            slow = _number(arg, "slow")
        elif name == "fail" and failure is None:
            failure = _parse_failure(arg)
        elif name == "stamp" and stamp is None:
            stamp = max(1, min(int(_number(arg, "stamp")), 1_000_000))
    cleaned = _DIRECTIVE.sub("", text).strip()
    return _Directives(failure=failure, echo=echo, slow=slow, stamp=stamp), cleaned


def _parse_failure(arg: str) -> _Failure:
    kind, *options = arg.strip().split(":")
    times: int | None = None
    retry_after: float | None = None
    for option in options:
        key, _, value = option.partition("=")
        if key.strip() == "times":
            times = int(_number(value, "times"))
        elif key.strip() == "retry_after":
            retry_after = _number(value, "retry_after")
        else:
            raise BadRequest(f"Unknown option {option!r} in [[fail:{arg}]]; use times=N or retry_after=SECONDS.")
    return _Failure(kind=kind.strip().lower(), times=times, retry_after=retry_after)


def _number(value: str, what: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise BadRequest(f"The simulated directive {what}={value!r} needs a non-negative number.")
    return number


def _merge(a: _Directives, b: _Directives) -> _Directives:
    return _Directives(
        failure=a.failure or b.failure,
        echo=a.echo if a.echo is not None else b.echo,
        slow=a.slow if a.slow is not None else b.slow,
        stamp=a.stamp if a.stamp is not None else b.stamp,
    )


# --------------------------------------------------------------------------------------------- replies


def _rng(*parts: str) -> random.Random:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _keywords(text: str) -> list[str]:
    """Distinct content-looking words, longest first: a cheap stand-in for picking the topic nouns."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text):
        lower = word.strip("'\u2019-").lower()
        if len(lower) >= 4 and lower not in _STOPWORDS and not lower.endswith("ly"):
            seen.setdefault(lower)
    return sorted(seen, key=len, reverse=True) or list(_FALLBACK_WORDS)


def _reply(messages: list[ChatMessage]) -> str:
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return _reply_to(system, user)


@functools.lru_cache(maxsize=256)
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(text))


@functools.lru_cache(maxsize=256)
def _reply_to(system: str, user: str) -> str:
    """The reply is a function of the prompt alone (seeded by it), so a repeated prompt is not worked out again:
    the simulator stands in for a network call, and should cost the worker about as little CPU as one."""
    rng = _rng(system, user)
    words = _keywords(user)
    if titles := _TITLES.search(system):
        return _titles(words, max(1, min(int(titles.group(1)), 50)), rng)
    if summary := _SUMMARY.search(system):
        return _summary(user, words, rng, max(1, int(summary.group(1) or 3)))
    return _conversation(words, rng)


def _pick(words: list[str], rng: random.Random, k: int) -> list[str]:
    """k words, distinct while the vocabulary allows, biased towards the start of the text."""
    pool = words[: max(k, 8)]
    chosen = rng.sample(pool, min(k, len(pool)))
    while len(chosen) < k:
        chosen.append(rng.choice(words))
    return chosen


def _titles(words: list[str], count: int, rng: random.Random) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for i in range(count):
        title = ""
        for _ in range(8):
            a, b, c = (w.capitalize() for w in _pick(words, rng, 3))
            title = rng.choice(_TITLE_TEMPLATES).format(a=a, b=b, c=c)
            if title not in seen:
                break
        if title in seen:
            title = f"{title}, Part {i + 1}"
        seen.add(title)
        lines.append(f"{i + 1}. {title}")
    return "\n".join(lines)


def _cut(tokens: Sequence[str], limit: int) -> list[str]:
    """The leading tokens whose text (trailing space dropped) fits in `limit` characters; at least one, cut."""
    kept: list[str] = []
    length = 0
    for token in tokens:
        if length + len(token.rstrip()) > limit:
            break
        kept.append(token)
        length += len(token)
    if not kept:
        kept = [tokens[0][:limit]]
    kept[-1] = kept[-1].rstrip()
    return kept


def _summary(text: str, words: list[str], rng: random.Random, max_sentences: int) -> str:
    sentences = [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]
    if not sentences:
        return "The text is empty, so there is nothing to summarize."
    picked = _pick(words, rng, min(5, len(words)))
    topic = picked[0] if len(picked) == 1 else f"{picked[0]} and {picked[1]}"
    rest = picked[2:]
    out = [f"This text is mainly about {topic}."]
    lead = sentences[0].split()
    first = " ".join(lead[:25]) + ("…" if len(lead) > 25 else "")
    out.append(first if first.endswith((".", "!", "?", "…")) else first + ".")
    if rest:
        joined = rest[0] if len(rest) == 1 else ", ".join(rest[:-1]) + f" and {rest[-1]}"
        out.append(f"It also touches on {joined}.")
    return " ".join(out[:max_sentences])


def _conversation(words: list[str], rng: random.Random) -> str:
    target = rng.randint(40, 70)
    a, b = _pick(words, rng, 2)
    sentences = [rng.choice(_CHAT_OPENERS).format(a=a)]
    templates = list(_CHAT_TEMPLATES)
    rng.shuffle(templates)
    count = len(sentences[0].split())
    for template in templates:
        if count >= target:
            break
        a, b = _pick(words, rng, 2)
        sentence = template.format(a=a, b=b)
        sentences.append(sentence)
        count += len(sentence.split())
    return " ".join(sentences)


# ---------------------------------------------------------------------------------------------- images


def _parse_size(size: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", size or "")
    if not match:
        return 512, 512
    width, height = (max(16, min(int(v), 2048)) for v in match.groups())
    return width, height


def _svg_data_url(prompt: str, index: int, width: int, height: int) -> str:
    rng = _rng(prompt, str(index))
    title = escape(" ".join(prompt.split()[:8]) or "Simulated image", {'"': "&quot;"})
    hue = rng.randrange(360)
    shapes = [f'<rect width="{width}" height="{height}" fill="hsl({hue},45%,90%)"/>']
    for _ in range(rng.randint(3, 6)):
        color = f"hsl({(hue + rng.randrange(40, 320)) % 360},{rng.randint(45, 80)}%,{rng.randint(40, 65)}%)"
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randint(min(width, height) // 12, min(width, height) // 4)
        if rng.random() < 0.5:
            shapes.append(f'<circle cx="{x}" cy="{y}" r="{r}" fill="{color}" fill-opacity="0.8"/>')
        else:
            shapes.append(
                f'<rect x="{x - r}" y="{y - r}" width="{2 * r}" height="{r + r // 2}" rx="{r // 5}" '
                f'fill="{color}" fill-opacity="0.8"/>'
            )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>{title}</title>{''.join(shapes)}</svg>"
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")
