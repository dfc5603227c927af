"""A client on one web host of the multi-host test, run inside that host's network namespace.

It submits jobs through its own host's web process, writes their ids where the other host's client finds them,
then watches every job of both clients through its own web process over SSE (`?after=0`: the whole story, replayed
from the Stream and then live), writing each event it receives as a JSON line. So the jobs the other client
submitted reach this one only across the network: web process → Redis on the database host → this web process.
It exits when every job it watches has sent its terminal event; a stream that ends early or is refused is written
as an `error` line for the test to report.

    python -m tests.netns_client --base http://10.77.0.11:8000 --token T --me a --peer b --dir D --submit 3 --text X
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import IO

import httpx

from .sse import read_events

TERMINAL = {"completed", "failed", "cancelled", "expired"}


async def healthy(client: httpx.AsyncClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{client.base_url} did not become healthy within {timeout} s")
        await asyncio.sleep(0.05)


async def peer_ids(path: Path, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(path.exists):
        if time.monotonic() > deadline:
            raise SystemExit(f"no job ids from the other client at {path} within {timeout} s")
        await asyncio.sleep(0.02)
    return list(json.loads(await asyncio.to_thread(path.read_text)))


def write(out: IO[str], line: dict[str, object]) -> None:
    out.write(json.dumps(line) + "\n")
    out.flush()


async def watch(client: httpx.AsyncClient, job_id: str, out: IO[str]) -> None:
    try:
        async with client.stream("GET", f"/api/jobs/{job_id}/events", params={"after": "0"}) as response:
            if response.status_code != 200:
                await response.aread()
                write(out, {"job_id": job_id, "error": f"{response.status_code} {response.text}"})
                return
            async for event in read_events(response):
                write(out, {"job_id": job_id, "id": event.id, "event": event.event, "data": event.data})
                if event.event == "status" and event.data.get("status") in TERMINAL:
                    return
    except httpx.HTTPError as exc:
        write(out, {"job_id": job_id, "error": repr(exc)})
        return
    write(out, {"job_id": job_id, "error": "the stream ended without a terminal event"})


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--me", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--submit", type=int, default=3)
    p.add_argument("--text", default="[[slow:4]]")
    p.add_argument("--timeout", type=float, default=90)
    args = p.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"}
    # Read timeout: SSE pings every SSE_PING_SECONDS, so a silent stream is a dead one.
    timeout = httpx.Timeout(10, read=30)
    async with httpx.AsyncClient(base_url=args.base, headers=headers, timeout=timeout) as client:
        await healthy(client, args.timeout)
        mine = []
        for i in range(args.submit):
            text = f"Job {i} submitted through web host {args.me}, about networks. {args.text}"
            r = await client.post("/api/jobs", json={"type": "summary", "input": {"text": text}})
            if r.status_code != 202:
                raise SystemExit(f"submit refused: {r.status_code} {r.text}")
            mine.append(r.json()["job_id"])
        ids_file = args.dir / f"ids-{args.me}.json"
        ids_file.with_suffix(".tmp").write_text(json.dumps(mine))
        os.replace(ids_file.with_suffix(".tmp"), ids_file)  # the other client never reads half a file
        theirs = await peer_ids(args.dir / f"ids-{args.peer}.json", args.timeout)
        with (args.dir / f"events-{args.me}.jsonl").open("a") as out:
            async with asyncio.timeout(args.timeout):
                await asyncio.gather(*(watch(client, job_id, out) for job_id in theirs + mine))


if __name__ == "__main__":
    asyncio.run(main())
