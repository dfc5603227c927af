"""Push: publish → client latency at 1,000 SSE and WebSocket subscribers, and memory per connection.

PUSH HOOK: the push figure is written with the push gateway (branch `push`). When that lands it provides a
module with `run(quick: bool) -> dict`, either `bench/push_bench.py` or `scripts/bench_push.py`; this hook
calls whichever exists and turns its dict into rows. Until then the table says where to look.
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


def find_runner() -> Callable[[bool], dict[str, Any]] | None:
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
    raw = runner(quick)
    rows = []
    for key, value in raw.items():
        # Numbers become rows (no baseline known here); anything richer is kept in the JSON as it came.
        if isinstance(value, int | float):
            rows.append(Row("push", key, Stat.of([float(value)]), {}, False))
    return rows, raw
