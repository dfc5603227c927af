"""Push: publish → client latency at 1,000 SSE and WebSocket subscribers, and memory per connection.

The measurement itself lives in `scripts/bench_push.py` (also runnable alone as `scripts/bench-push`, which
sweeps 100/1,000/5,000); here it runs at `Sizes.push_subscribers` and its rows become table rows, with bare
Redis pub/sub to one subscriber as the baseline of the latencies, the naive fan-out of issue #3
(bench/naive_push.py: sse-starlette encoding per client) as the reference of the SSE rows, and the floor
(bench/floor_push.py: bare uvloop, one `transport.write` per client and nothing else) as what no Python server
can beat on this machine.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import ROOT, Bench, Stat
from .report import Row

NOT_YET = "push: see scripts/bench-push"
NAIVE = "naive fan-out (sse-starlette per client)"
FLOOR = "floor (bare uvloop, one write per client)"


def find_runner() -> Callable[..., dict[str, Any]] | None:
    try:
        module = importlib.import_module("bench.push_bench")
        return module.run  # type: ignore[no-any-return]
    except ImportError:
        pass
    script = Path(ROOT) / "scripts" / "bench_push.py"
    if script.exists():
        spec = importlib.util.spec_from_file_location("bench_push", script)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return getattr(module, "run", None)
    return None


def run(bench: Bench, *, quick: bool) -> tuple[list[Row], dict[str, Any] | str]:
    runner = find_runner()
    if runner is None:
        print(NOT_YET, flush=True)
        return [], NOT_YET
    extra = {"events": bench.sizes.push_events} if bench.sizes.push_events else {}
    raw = runner(quick, [bench.sizes.push_subscribers], **extra)  # type: ignore[call-arg]
    measured = raw.get("push", [])
    base = next((r for r in measured if r.get("transport") == "redis-pubsub"), None)
    naive = {r["subscribers"]: r for r in measured if r.get("transport") == "naive" and r.get("delivered")}
    floor = {r["subscribers"]: r for r in measured if r.get("transport") == "floor" and r.get("delivered")}
    rows = []
    for r in measured:
        if r.get("transport") in ("redis-pubsub", "naive", "floor"):
            continue
        label = f"{r['transport']} × {r['subscribers']}"
        ref = naive.get(r["subscribers"]) if r["transport"] == "sse" else None
        bottom = floor.get(r["subscribers"])
        for key in ("p50_ms", "p99_ms"):
            baseline = {"bare Redis pub/sub, 1 subscriber": Stat.of([float(base[key])])} if base else {}
            if bottom is not None:
                baseline[FLOOR] = Stat.of([float(bottom[key])])
            if ref is not None:
                baseline[NAIVE] = Stat.of([float(ref[key])])
            rows.append(Row("push", f"{label} {key[:3]} ms", Stat.of([float(r[key])]), baseline, False))
        kb = {NAIVE: Stat.of([float(ref["rss_per_conn_kb"])])} if ref is not None else {}
        rows.append(Row("push", f"{label} server KB/conn", Stat.of([float(r["rss_per_conn_kb"])]), kb, False))
    return rows, raw
