"""Polling: GET /api/jobs/{id} req/s at concurrency 50 vs a bare Starlette endpoint returning the same JSON."""

from __future__ import annotations

import asyncio

import httpx

from .harness import Bench, Stat, percentile
from .loadgen import request_bytes, run_load
from .report import Row, cpu_note

CONCURRENCY = 50


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    aijobs = bench.servers.aijobs
    created = httpx.post(f"{aijobs.url}/api/jobs", json={"type": "noop", "input": {}}, timeout=10, headers=bench.auth)
    created.raise_for_status()
    job_id = created.json()["job_id"]
    sides = {
        "aijobs": (aijobs, request_bytes("GET", f"/api/jobs/{job_id}", headers=bench.auth)),
        "bare Starlette JSON": (bench.servers.bare, request_bytes("GET", f"/json/{job_id}", headers=bench.auth)),
    }
    rates: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
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
                raise RuntimeError(f"polling on {name}: {result.errors} failed requests: {result.statuses}")
            rates[name].append(result.rate)
            cpu[name].append((server.cpu() - cpu_before) / max(1, result.total) * 1e6)
            p99[name].append(percentile(result.latencies, 99) * 1000)
            bench.log(
                f"polling round {r + 1} {name}: {result.rate:,.0f} req/s, server CPU {cpu[name][-1]:.0f} µs/request"
            )
    bench.flush()
    base = "bare Starlette JSON"
    return [
        Row(
            "polling",
            f"GET req/s (c={CONCURRENCY})",
            Stat.of(rates["aijobs"]),
            {base: Stat.of(rates[base])},
            True,
            "",
            cpu_note(cpu),
        ),
        Row("polling", "GET p99 ms", Stat.of(p99["aijobs"]), {base: Stat.of(p99[base])}, False),
    ]
