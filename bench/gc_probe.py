"""Garbage-collection pauses of a bench server process, timed from inside it (scripts/bench-push's GC column).

`python -m bench.gc_probe MODULE [ARGS…]` runs MODULE as `python -m MODULE ARGS…` would (uvicorn, or
bench.floor_push), with a `gc.callbacks` hook timing every collection by generation. The bench drives it through
a command file (`GC_PROBE_FILE`.cmd, polled by a daemon thread: no signal handler to race the event loop):
`reset` forgets what was timed so far (sent once the connections have settled), `dump` writes what was timed
since to `GC_PROBE_FILE` as JSON: per generation the count, total and longest pause in ms, and how many objects
are frozen (gc.freeze); `collect` does the same and then times one forced full collection: what the next full
collection would cost, frozen objects excluded.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import Any


class Probe:
    def __init__(self) -> None:
        self.started = 0.0
        self.reset()

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        took = time.perf_counter() - self.started
        gen = info["generation"]
        self.count[gen] += 1
        self.total[gen] += took
        self.longest[gen] = max(self.longest[gen], took)

    def report(self) -> dict[str, Any]:
        return {
            f"gen{g}": {
                "count": self.count[g],
                "total_ms": round(self.total[g] * 1000, 2),
                "max_ms": round(self.longest[g] * 1000, 2),
            }
            for g in range(3)
        } | {"frozen": gc.get_freeze_count()}


def _serve(probe: Probe, out: Path) -> None:
    cmd = out.with_suffix(out.suffix + ".cmd")
    while True:
        time.sleep(0.05)
        try:
            what = cmd.read_text().strip()
        except FileNotFoundError:
            continue
        cmd.unlink(missing_ok=True)
        if what == "reset":
            probe.reset()
        elif what in ("dump", "collect"):
            report = probe.report()
            if what == "collect":  # what a full collection costs now: timed here, with the GIL held like any other
                started = time.perf_counter()
                gc.collect()
                report["forced_full_ms"] = round((time.perf_counter() - started) * 1000, 2)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(report))
            tmp.replace(out)


def main() -> None:
    probe = Probe()
    gc.callbacks.append(probe)
    out = os.environ.get("GC_PROBE_FILE")
    if out:
        threading.Thread(target=_serve, args=(probe, Path(out)), daemon=True, name="gc-probe").start()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
