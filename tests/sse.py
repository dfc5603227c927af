"""A small SSE reader over httpx for tests: parses whole events as the WHATWG spec does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: Any


async def read_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SseEvent(fields.get("id"), fields.get("event", "message"), json.loads("\n".join(data)))
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value


async def collect(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    positions: bool = False,
) -> tuple[list[SseEvent], httpx.Response]:
    """Read a stream to its end (the server closes after the terminal event), or `stop_after` events.

    The job's logged story only, unless `positions`: a `position` event (no id, not logged) comes whenever the job
    is still queued at a tick of POSITION_PUSH_SECONDS, which on a busy machine any job may be."""
    out: list[SseEvent] = []
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return out, response
        async for event in read_events(response):
            if event.event == "position" and not positions:
                continue
            out.append(event)
            if stop_after is not None and len(out) >= stop_after:
                break
    return out, response
