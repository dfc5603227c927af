"""The streaming figure's floor: the simulated provider alone, N calls streaming stamped tokens to a no-op callback.

    python -m bench.stream_floor --jobs N --seconds S --rate R

What handing the tokens costs the worker process before aijobs does anything with them (the timer wake-up per
token, the stamp): the streaming figure's worker CPU per 1,000 tokens, minus this, is aijobs' own. Runs on the
same event loop as the worker (asyncio's default, as arq runs it). Prints one JSON line: CPU seconds, wall
seconds, tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from service.providers.simulated import SimulatedProvider


async def run(jobs: int, seconds: float, rate: float) -> dict[str, float]:
    provider = SimulatedProvider(delay=seconds)
    tokens = max(1, round(seconds * rate))
    count = 0

    async def on_delta(piece: str) -> None:
        nonlocal count
        count += 1

    async def one(i: int) -> None:
        content = f"[[slow:{seconds:g}]][[stamp:{tokens}]] stream number {i}"
        await provider.chat([{"role": "user", "content": content}], on_delta=on_delta)

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    return {"cpu": time.process_time() - cpu, "wall": time.monotonic() - wall, "tokens": count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_floor")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args.jobs, args.seconds, args.rate))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
