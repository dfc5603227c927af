"""A small HTTP client for a running aijobs server, as any API client would use it (the `aijobs submit`, `jobs` and
`stats` commands are built on it): a Bearer token, JSON errors turned into `ClientError`, and a job's live events
over SSE that resume after the last `seq` on any cut, so a watcher sees every event once and in order.

It imports nothing of the server: it speaks only the public API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})


@dataclass
class ClientError(Exception):
    """A refusal from the server (its JSON error), or no answer at all (`status` 0)."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.message} ({self.code}{f', HTTP {self.status}' if self.status else ''})"


def _error(response: httpx.Response) -> ClientError:
    try:
        err = response.json()["error"]
        return ClientError(response.status_code, str(err["code"]), str(err["message"]))
    except (ValueError, KeyError, TypeError):
        return ClientError(response.status_code, f"http_{response.status_code}", response.text[:200] or "no body")


def ends_job(event: dict[str, Any]) -> bool:
    if event.get("kind") == "status":
        return event.get("status") in TERMINAL
    if event.get("kind") == "snapshot":
        return event.get("job", {}).get("status") in TERMINAL
    return False


class Client:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(0, "unreachable", f"could not reach {self.url}: {exc!r}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json() if response.content else None

    async def submit(
        self, job_type: str, payload: dict[str, Any], *, priority: int | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"type": job_type, "input": payload}
        if priority is not None:
            body["priority"] = priority
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        job: dict[str, Any] = await self._call("POST", "/api/jobs", json=body, headers=headers)
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = await self._call("GET", f"/api/jobs/{job_id}")
        return job

    async def jobs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v not in (None, "")}
        page: dict[str, Any] = await self._call("GET", "/api/jobs", params=params)
        return page

    async def cancel(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = await self._call("POST", f"/api/jobs/{job_id}/cancel", json={})
        return job

    async def retry(self, job_id: str, *, provider_key: str | None = None) -> dict[str, Any]:
        body = {"user_provided_key": provider_key} if provider_key else {}
        job: dict[str, Any] = await self._call("POST", f"/api/jobs/{job_id}/retry", json=body)
        return job

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._call("GET", "/api/stats")
        return stats

    async def events(self, job_id: str, *, after: int | None = None, retries: int = 8) -> AsyncIterator[dict[str, Any]]:
        """The job's events until its terminal one: a snapshot first (unless resuming), then live. A cut stream is
        resumed after the last seq received (backing off 0.25 s doubling to 4 s, `retries` times in a row)."""
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                async with self.http.stream(
                    "GET", f"/api/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(30, read=None)
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error(response)
                    async for event in _sse(response):
                        failures = 0
                        if "seq" in event:
                            if last is not None and event["seq"] <= last:
                                continue
                            last = event["seq"]
                        yield event
                        if ends_job(event):
                            return
            except ClientError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
            except httpx.HTTPError:
                pass
            failures += 1
            if failures > retries:
                raise ClientError(0, "stream_lost", f"the event stream of job {job_id} kept failing; try again")
            await asyncio.sleep(min(0.25 * 2 ** (failures - 1), 4.0))


async def _sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each SSE event's JSON `data`; an `event: error` (the server ended the stream) is raised as its 401."""
    kind, data = "message", list[str]()
    async for line in response.aiter_lines():
        if line == "":
            if data:
                body = json.loads("\n".join(data))
                if kind == "error":
                    err = body.get("error", {})
                    raise ClientError(401, str(err.get("code", "stream_ended")), str(err.get("message", "")))
                yield body
            kind, data = "message", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            kind = line[6:].strip()
