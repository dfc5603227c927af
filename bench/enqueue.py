"""Enqueue: POST /api/jobs through uvicorn at concurrency 50, vs a bare Starlette endpoint that only calls
arq's enqueue_job, on the same uvicorn settings. Rounds alternate which side goes first."""

from __future__ import annotations

import asyncio

from .harness import Bench, Stat, percentile
from .loadgen import request_bytes, run_load
from .report import Row, cpu_note

CONCURRENCY = 50


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    sides = {
        "aijobs": (
            bench.servers.aijobs,
            request_bytes("POST", "/api/jobs", body=b'{"type":"noop","input":{}}', headers=bench.auth),
        ),
        "bare Starlette + arq": (bench.servers.bare, request_bytes("POST", "/enqueue", body=b"{}", headers=bench.auth)),
    }
    rates: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    p50: dict[str, list[float]] = {k: [] for k in sides}
    p99: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(sizes.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            server, req = sides[name]
            cpu_before = server.cpu()
            result = asyncio.run(
                run_load(server.port, lambda req=req: req, concurrency=CONCURRENCY, seconds=sizes.load_seconds)
            )
            if result.errors:
                raise RuntimeError(f"enqueue on {name}: {result.errors} failed requests: {result.statuses}")
            rates[name].append(result.rate)
            cpu[name].append((server.cpu() - cpu_before) / max(1, result.total) * 1e6)
            p50[name].append(percentile(result.latencies, 50) * 1000)
            p99[name].append(percentile(result.latencies, 99) * 1000)
            bench.log(
                f"enqueue round {r + 1} {name}: {result.rate:,.0f} req/s, server CPU {cpu[name][-1]:.0f} µs/request"
            )
            bench.flush()
    base = "bare Starlette + arq"
    return [
        Row(
            "enqueue",
            f"POST req/s (c={CONCURRENCY})",
            Stat.of(rates["aijobs"]),
            {base: Stat.of(rates[base])},
            True,
            "≥ 0.7",
            cpu_note(cpu),
        ),
        Row("enqueue", "POST p50 ms", Stat.of(p50["aijobs"]), {base: Stat.of(p50[base])}, False),
        Row("enqueue", "POST p99 ms", Stat.of(p99["aijobs"]), {base: Stat.of(p99[base])}, False),
    ]
