"""scripts/bench: every aijobs figure beside its baselines, from one run on this machine.

    scripts/bench [--quick] [--json FILE] [--only enqueue,latency,...] [--profile DIR] [--postgres-url URL]
        [--stream-jobs 1000,2000x1,2000x2,5000x5] [--stream-seconds 20] [--stream-rate 50]

Every figure but streaming by default (issue #17's streaming figure takes 15-20 minutes: --only streaming).

Redis: REDIS_URL if set (an empty database: the bench empties it between figures), else an embedded redis-server
on a free port; the job store is a temp SQLite file. The pgstore figure also needs a PostgreSQL: --postgres-url
(or BENCH_POSTGRES_URL), else this machine's at 127.0.0.1:5432, else an embedded one (bench/pg.py); it makes
databases of its own there and drops them at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import drain, e2e, enqueue, goodput, io_concurrency, latency, pgstore, polling, push, streaming
from .harness import Sizes, open_bench
from .report import Row, machine, table, write_json

FIGURES = ["enqueue", "latency", "drain", "e2e", "io", "push", "polling", "goodput", "pgstore", "streaming"]
DEFAULT = [f for f in FIGURES if f != "streaming"]  # 15-20 minutes at its sizes: only when asked for (--only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: under a minute")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes that only show every figure runs (tests)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--rounds", type=int, help="rounds per figure (default 3, drain and I/O 2; --quick 1)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="profile the aijobs drain worker and enqueue server into DIR (streaming: py-spy samples of its cases)",
    )
    parser.add_argument("--postgres-url", help="PostgreSQL server for pgstore (a user that may CREATE DATABASE)")
    parser.add_argument(
        "--stream-jobs",
        help="streaming: comma-separated cases, JOBS (a worker process per 1,000) or JOBSxWORKERS "
        "(default 1000,2000x1,2000x2,5000x5)",
    )
    parser.add_argument("--stream-seconds", type=float, help="streaming: seconds each job streams (default 20)")
    parser.add_argument("--stream-rate", type=float, help="streaming: tokens a second per job (default 50)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes.quick() if args.quick else Sizes()
    if args.stream_jobs:
        sizes.stream_jobs = tuple(s for s in args.stream_jobs.split(",") if s.strip())
    if args.stream_seconds:
        sizes.stream_seconds = args.stream_seconds
    if args.stream_rate:
        sizes.stream_rate = args.stream_rate
    if args.rounds:
        sizes.rounds = sizes.heavy_rounds = sizes.goodput_rounds = args.rounds
    chosen = args.only.split(",") if args.only else DEFAULT
    unknown = set(chosen) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")
    # SIGTERM (a `timeout`, a process manager) ends the run through the cleanup below: workers stopped, the
    # PostgreSQL databases it made dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    with open_bench(
        os.environ.get("REDIS_URL") or None, sizes, verbose=not args.quiet, postgres_url=args.postgres_url
    ) as bench:
        info = bench.redis.info("server")
        extra["machine"] = machine(str(info.get("redis_version", "")))
        extra["sizes"] = vars(sizes)
        for name in chosen:
            t = time.monotonic()
            if name == "enqueue":
                rows += enqueue.run(bench)
            elif name == "latency":
                rows += latency.run(bench)
            elif name == "drain":
                rows += drain.run(bench)
            elif name == "e2e":
                rows += e2e.run(bench)
            elif name == "io":
                rows += io_concurrency.run(bench)
            elif name == "push":
                push_rows, extra["push"] = push.run(bench, quick=args.quick)
                rows += push_rows
            elif name == "polling":
                rows += polling.run(bench)
            elif name == "goodput":
                rows += goodput.run(bench)
            elif name == "pgstore":
                rows += pgstore.run(bench)
                extra["postgres"] = f"{bench.pg.version} ({bench.pg.settings}), {bench.pg.how}"
                extra["postgres_databases"] = list(bench.pg.databases.values())  # dropped when the bench ends
            elif name == "streaming":
                stream_rows, extra["streaming"] = streaming.run(bench, profile=args.profile)
                rows += stream_rows
            bench.log(f"{name}: {time.monotonic() - t:.0f} s")
        if args.profile:
            from . import profile

            if chosen != ["streaming"]:  # streaming samples its own cases as they run (stream-*.txt)
                extra["profile"] = profile.run(bench, args.profile, postgres="pgstore" in chosen)
    extra["seconds"] = round(time.monotonic() - started, 1)
    m = extra["machine"]
    print()
    print(table(rows))
    print()
    pg = f", {extra['postgres']}" if "postgres" in extra else ""
    print(
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, Redis {m['redis']}{pg}; "
        f"{'--quick, ' if args.quick else ''}{sizes.rounds} rounds (drain and I/O {sizes.heavy_rounds}), "
        f"{extra['seconds']} s. "
        "Medians (min–max over rounds); baselines alternate with aijobs in the same run."
    )
    if args.json:
        write_json(args.json, rows, extra)
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
