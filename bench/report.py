"""The table: each aijobs figure beside its baselines from the same run, as medians with the min-max of rounds."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import Stat


@dataclass
class Row:
    figure: str
    metric: str
    aijobs: Stat
    baselines: dict[str, Stat] = field(default_factory=dict)
    higher_is_better: bool = True
    target: str = ""
    note: str = ""

    def ratio(self, name: str) -> float | None:
        base = self.baselines[name].median
        if not base or not self.aijobs.median:
            return None
        return self.aijobs.median / base

    def to_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "metric": self.metric,
            "aijobs": self.aijobs.to_dict(),
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "ratios": {k: self.ratio(k) for k in self.baselines},
            "higher_is_better": self.higher_is_better,
            "target": self.target,
            "note": self.note,
        }


def cpu_note(cpu: dict[str, list[float]]) -> str:
    """'server CPU/request: a X µs, b Y µs' from per-round samples."""
    return "server CPU/request: " + ", ".join(f"{k} {Stat.of(v).median:.0f} µs" for k, v in cpu.items())


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_stat(stat: Stat) -> str:
    if len(stat.values) <= 1:
        return fmt(stat.median)
    return f"{fmt(stat.median)} ({fmt(stat.low)}–{fmt(stat.high)})"


def table(rows: list[Row]) -> str:
    """Markdown, so the README can carry it as printed."""
    lines = [
        "| figure | metric | aijobs | baseline | baseline value | aijobs ÷ baseline | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        names = list(row.baselines) or ["—"]
        for i, name in enumerate(names):
            base = row.baselines.get(name)
            ratio = row.ratio(name) if base else None
            lines.append(
                "| "
                + " | ".join(
                    [
                        row.figure if i == 0 else "",
                        row.metric if i == 0 else "",
                        fmt_stat(row.aijobs) if i == 0 else "",
                        name,
                        fmt_stat(base) if base else "—",
                        f"{ratio:.2f}" if ratio is not None else "—",
                        row.target if i == 0 else "",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def machine(redis_version: str = "") -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, ValueError, subprocess.CalledProcessError):
        nproc = 0
    return {
        "nproc": nproc,
        "cpu": cpu,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis": redis_version,
    }


def write_json(path: Path, rows: list[Row], extra: dict[str, Any]) -> None:
    path.write_text(json.dumps({"rows": [r.to_dict() for r in rows], **extra}, indent=2, default=str))
