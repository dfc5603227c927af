"""Enqueue: POST /api/jobs through uvicorn at concurrency 50, vs a bare Starlette endpoint that only calls
arq's enqueue_job, on the same uvicorn settings. Rounds alternate which side goes first."""

from __future__ import annotations

from .alternate import CONCURRENCY, alternate
from .harness import Bench, Stat
from .loadgen import request_bytes
from .report import Row, cpu_note

BASE = "bare Starlette + arq"


def run(bench: Bench) -> list[Row]:
    body = b'{"type":"noop","input":{}}'
    sides = {
        "aijobs": (bench.servers.aijobs, request_bytes("POST", "/api/jobs", body=body, headers=bench.auth)),
        BASE: (bench.servers.bare, request_bytes("POST", "/enqueue", body=b"{}", headers=bench.auth)),
    }
    s = alternate(bench, "enqueue", sides)
    ours, base = s["aijobs"], s[BASE]
    cpu = cpu_note({name: side.cpu for name, side in s.items()})
    return [
        Row(
            "enqueue",
            f"POST req/s (c={CONCURRENCY})",
            Stat.of(ours.rates),
            {BASE: Stat.of(base.rates)},
            True,
            "≥ 0.7",
            cpu,
        ),
        Row("enqueue", "POST p50 ms", Stat.of(ours.p50), {BASE: Stat.of(base.p50)}, False),
        Row("enqueue", "POST p99 ms", Stat.of(ours.p99), {BASE: Stat.of(base.p99)}, False),
    ]
