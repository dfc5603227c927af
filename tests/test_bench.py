"""scripts/bench runs end to end and prints every figure (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)  # ~50 s on a quiet machine, mostly waiting: far longer when other processes load it
def test_bench_prints_every_figure(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--json", str(out_json)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for figure in ("enqueue", "start latency", "drain", "I/O concurrency", "polling", "goodput"):
        assert f"| {figure} |" in proc.stdout, proc.stdout
    for baseline in ("bare Starlette + arq", "bare arq", "SAQ", "arq, default 0.5 s poll", "bare Starlette JSON"):
        assert baseline in proc.stdout, proc.stdout
    assert "| push |" in proc.stdout and "bare Redis pub/sub" in proc.stdout, proc.stdout
    data = json.loads(out_json.read_text())
    figures = {row["figure"] for row in data["rows"]}
    assert {"enqueue", "start latency", "drain", "I/O concurrency", "push", "polling"} <= figures
    pushed = [r for r in data["push"]["push"] if r["transport"] in ("sse", "ws")]
    assert {r["transport"] for r in pushed} == {"sse", "ws"}
    assert all(r["delivered"] == 1.0 for r in pushed), pushed  # every subscriber got every event
    zero = [row for row in data["rows"] if not row["aijobs"]["median"] > 0]
    assert not zero, zero
    assert data["machine"]["nproc"] >= 1
