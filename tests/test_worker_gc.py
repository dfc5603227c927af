"""The worker process tunes its garbage collector before it runs (service.worker.tune_gc): what was alive at start
is frozen (full collections skip it) and young objects are collected less often. Process-wide, so checked in a
process of its own, and only the worker's entry and the bench's worker call it."""

from __future__ import annotations

import json
import subprocess
import sys

from service.worker import GC_YOUNG_THRESHOLD

PROBE = """
import gc, json
before = gc.get_threshold()
from service.worker import tune_gc
tune_gc()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_tune_gc_freezes_the_start_and_collects_young_objects_less_often() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    seen = json.loads(out.stdout)
    assert seen["before"][0] < GC_YOUNG_THRESHOLD
    assert seen["after"] == [GC_YOUNG_THRESHOLD, *seen["before"][1:]], "only the youngest generation's threshold"
    assert seen["frozen"] > 10_000, "the imported modules and the app's setup are frozen"


def test_only_the_process_entries_tune_it() -> None:
    """build_worker (used by tests and embedded runs, which share their process) leaves the collector alone."""
    import inspect

    from service import cli, worker

    assert "tune_gc()" not in inspect.getsource(worker.build_worker)
    assert "tune_gc()" in inspect.getsource(cli.cmd_worker)
