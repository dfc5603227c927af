"""scripts/bench runs end to end and prints every figure (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import FIGURES

from .postgres import PostgresForTests

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)  # ~50 s on a quiet machine, mostly waiting: far longer when other processes load it
def test_bench_prints_every_figure(tmp_path: Path) -> None:
    """Every figure but the PostgreSQL store's (the next test: each stays within the suite's per-test timeout)."""
    out_json = tmp_path / "bench.json"
    figures = ",".join(f for f in FIGURES if f != "pgstore")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--json", str(out_json), "--only", figures],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for figure in ("enqueue", "start latency", "drain", "e2e", "I/O concurrency", "polling", "goodput"):
        assert f"| {figure} |" in proc.stdout, proc.stdout
    for baseline in ("bare Starlette + arq", "bare arq", "SAQ", "arq, default 0.5 s poll", "bare Starlette JSON"):
        assert baseline in proc.stdout, proc.stdout
    assert "| push |" in proc.stdout and "bare Redis pub/sub" in proc.stdout, proc.stdout
    data = json.loads(out_json.read_text())
    figures_seen = {row["figure"] for row in data["rows"]}
    assert {"enqueue", "start latency", "drain", "e2e", "I/O concurrency", "push", "polling"} <= figures_seen
    events = next(row for row in data["rows"] if row["metric"] == "events per instant titles job")
    # queued, processing, ..., completed (8 on a quiet machine; more when load stretches a job past the 0.1 s windows
    # of progress and text coalescing: a count that depends on timing, so only its floor is checked)
    assert events["aijobs"]["median"] >= 3, events
    pushed = [r for r in data["push"]["push"] if r["transport"] in ("sse", "ws")]
    assert {r["transport"] for r in pushed} == {"sse", "ws"}
    assert all(r["delivered"] == 1.0 for r in pushed), pushed  # every subscriber got every event
    assert "| streaming |" in proc.stdout and "delta p99 ms" in proc.stdout, proc.stdout
    (stream,) = data["streaming"]  # the smoke's one case: every job ended, every stamped token reached its watcher
    assert stream["ended"] == stream["jobs"] and stream["latency"]["tokens"] == stream["stamps_expected"], stream
    assert stream["writes"]["claim"] == stream["jobs"] and stream["redis_per_job"] > 0, stream
    zero = [row for row in data["rows"] if not row["aijobs"]["median"] > 0]
    assert not zero, zero
    assert data["machine"]["nproc"] >= 1


@pytest.mark.timeout(600)  # ~30 s on a quiet machine; several times that under load
def test_bench_prints_the_postgresql_store_figures(tmp_path: Path, postgres: PostgresForTests) -> None:
    """`--only pgstore` on the suite's PostgreSQL: aijobs on PostgreSQL beside SQLite, Procrastinate and PgQueuer,
    two workers beside one, a few store writes per streamed job (not one per event) and its WAL; the bench's own
    databases are gone afterwards."""
    import psycopg

    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--quiet", "--only", "pgstore", "--json", str(out_json),
         "--postgres-url", postgres.admin_url],
        cwd=ROOT, capture_output=True, text=True, timeout=580,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| PostgreSQL store |" in proc.stdout, proc.stdout
    for baseline in ("aijobs, SQLite store", "Procrastinate (concurrency=", "PgQueuer (batch_size=", "1 worker"):
        assert baseline in proc.stdout, proc.stdout
    data = json.loads(out_json.read_text())
    rows = {row["metric"]: row for row in data["rows"]}
    drain = next(row for metric, row in rows.items() if metric.endswith("jobs/s, 1 worker"))
    assert len(drain["baselines"]) == 3 and all(b["median"] > 0 for b in drain["baselines"].values())
    writes = next(row for metric, row in rows.items() if metric.startswith("store writes per chat job"))
    assert 2 <= writes["aijobs"]["median"] < 20, "claim, a few checkpoints and the finish: not a write per event"
    assert next(row for metric, row in rows.items() if metric.startswith("WAL KiB"))["aijobs"]["median"] > 0
    made = data["postgres_databases"]
    assert len(made) == 3, made
    with psycopg.connect(postgres.admin_url) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (made,)).fetchall()
    assert left == [], "the bench drops the databases it made"
