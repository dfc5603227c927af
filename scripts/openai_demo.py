"""Background mode for any model, with nothing but the official `openai` SDK pointed at aijobs.

    scripts/dev                                          # web + worker + the simulated provider
    scripts/aijobs users revoke demo --new-token         # a token for the user the page is signed in as
    scripts/openai-demo --api-key aij_…                  # this script (the page shows its three responses)

Three responses, as an app would make them: one created in the background and polled; one streamed, cut after a
few events and resumed with `starting_after`, checked to arrive whole and in order; one cancelled (twice). Then
the user's history, where all three are jobs like any other. The `[[slow:N]]` in the prompts asks the simulated
provider to take N seconds, so there is time to cut and cancel; a real model needs no such hint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from openai import OpenAI


def background(client: OpenAI) -> str:
    response = client.responses.create(
        model="gpt-4o-mini", input="How do background jobs help a web app? [[slow:2]]", background=True
    )
    print(f"1. background  {response.id}: {response.status}", end="", flush=True)
    last = response.status
    while response.status in ("queued", "in_progress"):
        time.sleep(0.25)
        response = client.responses.retrieve(response.id)
        if response.status != last:
            print(f" -> {response.status}", end="", flush=True)
            last = response.status
    print(f"\n   {response.output_text[:100]}…")
    return response.id


def stream_cut_and_resume(client: OpenAI) -> str:
    stream = client.responses.create(
        model="gpt-4o-mini", input="Tell me about lighthouses. [[slow:4]]", stream=True, background=True
    )
    first: list[Any] = []
    for event in stream:
        first.append(event)
        if sum(e.type == "response.output_text.delta" for e in first) == 5:
            break
    stream.close()  # the connection is gone mid-answer (a deploy, a train going into a tunnel)
    response_id, cut = first[0].response.id, first[-1].sequence_number
    print(f"2. streamed    {response_id}: cut after {len(first)} events (sequence_number {cut})")
    with client.responses.retrieve(response_id, stream=True, starting_after=cut) as resumed:
        rest = list(resumed)
    print(f"   resumed with starting_after={cut}: {len(rest)} more events, {rest[0].sequence_number} to ", end="")
    print(f"{rest[-1].sequence_number}, ending with {rest[-1].type}")
    with client.responses.retrieve(response_id, stream=True) as replay:  # the whole stream again, from the start
        whole = list(replay)
    numbers = [e.sequence_number for e in first + rest]
    text = "".join(e.delta for e in first + rest if e.type == "response.output_text.delta")
    final = rest[-1].response
    in_order = numbers == sorted(set(numbers)) and numbers == [e.sequence_number for e in whole]
    whole_text = text == final.output_text
    print(f"   in order, nothing missing or repeated: {in_order}; the text is the whole answer: {whole_text}")
    if not (in_order and whole_text):
        raise SystemExit("the resumed stream does not match the response")
    return str(response_id)


def cancel(client: OpenAI) -> str:
    response = client.responses.create(model="gpt-4o-mini", input="Write a long essay. [[slow:60]]", background=True)
    while response.status == "queued":
        time.sleep(0.1)
        response = client.responses.retrieve(response.id)
    cancelled = client.responses.cancel(response.id)
    again = client.responses.cancel(response.id)
    print(f"3. cancelled   {response.id}: {response.status} -> cancel: {cancelled.status}, again: {again.status}")
    return response.id


def in_history(client: OpenAI, ids: list[str]) -> None:
    """The native API beside /v1 (the SDK's own low-level `get`): the three are jobs in the user's history."""
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    jobs = client.get(f"{root}/api/jobs?limit=50", cast_to=object)
    assert isinstance(jobs, dict)
    mine = {job["job_id"]: job for job in jobs["jobs"]}
    print("4. history     (GET /api/jobs; the page shows the same jobs)")
    for public in ids:
        job = mine.get(public.removeprefix("resp_"))
        print(f"   {public}: " + (f"{job['type']} job, {job['status']}" if job else "MISSING"))
        if job is None:
            raise SystemExit("a response is missing from the history")
    print(f"   open {root}/ to see them on the page")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="an aijobs API token (aij_…)")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("give an aijobs API token: --api-key aij_… (or OPENAI_API_KEY)")
    # The only lines an app changes to run on aijobs: where the API is, and the key.
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    ids = [background(client), stream_cut_and_resume(client), cancel(client)]
    in_history(client, ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
