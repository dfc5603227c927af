"""HTTP load on two servers side by side: rounds alternate which side goes first, so drift hits both alike."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .harness import Bench, Server, percentile
from .loadgen import run_load

CONCURRENCY = 50


@dataclass
class SideStats:
    """Per-round figures of one side: requests/s, p50/p99 latency in ms, server CPU µs per request."""

    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def alternate(bench: Bench, figure: str, sides: dict[str, tuple[Server, bytes]]) -> dict[str, SideStats]:
    out = {name: SideStats() for name in sides}
    for r in range(bench.sizes.rounds):
        for name in list(sides) if r % 2 == 0 else list(reversed(sides)):
            server, req = sides[name]
            cpu_before = server.cpu()
            result = asyncio.run(
                run_load(server.port, lambda req=req: req, concurrency=CONCURRENCY, seconds=bench.sizes.load_seconds)
            )
            if result.errors:
                raise RuntimeError(f"{figure} on {name}: {result.errors} failed requests: {result.statuses}")
            stats = out[name]
            stats.rates.append(result.rate)
            stats.cpu.append((server.cpu() - cpu_before) / max(1, result.total) * 1e6)
            stats.p50.append(percentile(result.latencies, 50) * 1000)
            stats.p99.append(percentile(result.latencies, 99) * 1000)
            bench.log(
                f"{figure} round {r + 1} {name}: {result.rate:,.0f} req/s, server CPU {stats.cpu[-1]:.0f} µs/request"
            )
    bench.flush()
    return out
