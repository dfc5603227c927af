"""I/O concurrency: N simulated 1 s AI calls on one worker with max_jobs M; wall time vs the ideal N/M s.

aijobs runs a registry task awaiting `ctx.ai.chat` on the SimulatedProvider (delay 1 s); arq and SAQ run
`asyncio.sleep(1)`, with the same concurrency.
"""

from __future__ import annotations

from .drain import burst
from .harness import Bench, Stat
from .report import Row


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    n, m, delay = sizes.io_jobs, sizes.io_max_jobs, sizes.io_seconds
    ideal = n / m * delay
    names = {"aijobs": "aijobs", "arq": f"bare arq (max_jobs={m})", "saq": f"SAQ (concurrency={m})"}
    walls: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    systems = list(names)
    for r in range(sizes.heavy_rounds):
        order = systems[r % 3 :] + systems[: r % 3]
        for system in order:
            result = burst(bench, system, "ai_call", n, m, sim_delay=delay)
            walls[system].append(result.seconds)
            cpu[system].append(result.cpu_per_job_us[0])
            bench.log(
                f"io round {r + 1} {system}: {result.seconds:.2f} s (ideal {ideal:.1f} s); "
                f"worker CPU per job {result.cpu_per_job_us[0]:.0f} µs"
            )
    return [
        Row(
            "I/O concurrency",
            f"{n:,} × {delay:g} s calls, max_jobs={m}: wall s (ideal {ideal:g})",
            Stat.of(walls["aijobs"]),
            {names["arq"]: Stat.of(walls["arq"]), names["saq"]: Stat.of(walls["saq"])},
            False,
            f"≤ {ideal * 1.1:.1f} s",
            f"aijobs ÷ ideal = {Stat.of(walls['aijobs']).median / ideal:.2f}; worker CPU/job: "
            + ", ".join(f"{k} {Stat.of(v).median:.0f} µs" for k, v in cpu.items()),
        )
    ]
