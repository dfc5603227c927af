"""Polling: GET /api/jobs/{id} req/s at concurrency 50 vs a bare Starlette endpoint returning the same JSON."""

from __future__ import annotations

import httpx

from .alternate import CONCURRENCY, alternate
from .harness import Bench, Stat
from .loadgen import request_bytes
from .report import Row, cpu_note

BASE = "bare Starlette JSON"


def run(bench: Bench) -> list[Row]:
    aijobs = bench.servers.aijobs
    created = httpx.post(f"{aijobs.url}/api/jobs", json={"type": "noop", "input": {}}, timeout=10, headers=bench.auth)
    created.raise_for_status()
    job_id = created.json()["job_id"]
    sides = {
        "aijobs": (aijobs, request_bytes("GET", f"/api/jobs/{job_id}", headers=bench.auth)),
        BASE: (bench.servers.bare, request_bytes("GET", f"/json/{job_id}", headers=bench.auth)),
    }
    s = alternate(bench, "polling", sides)
    ours, base = s["aijobs"], s[BASE]
    cpu = cpu_note({name: side.cpu for name, side in s.items()})
    return [
        Row("polling", f"GET req/s (c={CONCURRENCY})", Stat.of(ours.rates), {BASE: Stat.of(base.rates)}, True, "", cpu),
        Row("polling", "GET p99 ms", Stat.of(ours.p99), {BASE: Stat.of(base.p99)}, False),
    ]
