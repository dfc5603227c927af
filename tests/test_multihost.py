"""Web and worker processes on separate hosts of a real network (issue 16, point 8).

Five Linux network namespaces on one switch (tests/netns.py): a database host running Redis and PostgreSQL, two web
hosts and two worker hosts, every process talking to the others over TCP across veth links. A client on each web
host (tests/netns_client.py) submits jobs through its own web process and watches those of the other one through
it. Then one worker host is unplugged in the middle of its jobs: its leases lapse, the other worker's sweeper takes
the jobs over and finishes them; when the cable goes back in, the cut-off worker wakes up believing it still runs
them, and its late writes are refused (the store's lease fencing, the Stream's seq order). Checked: every event
reached both clients once and in seq order, the cut-off worker's jobs completed on the other worker, nothing the
cut-off worker sent after the cut changed a row or a Stream, and every job has one terminal event.

Needs root for the namespaces. Without them the test fails saying why, unless AIJOBS_SKIP_NETNS=1 says to skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from service.events import EventLog
from service.models import TERMINAL_STATUSES

from .conftest import make_user, until
from .netns import PREFIX, cluster, ip
from .procs import FAST_LEASES, ROOT, pid_of, store_sql

JOBS_PER_CLIENT = 3
CONCURRENCY = 3  # per worker: the six jobs run three on each worker host
LEASE = float(FAST_LEASES["LEASE_SECONDS"])
SWEEP = float(FAST_LEASES["SWEEP_SECONDS"])


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def streams(redis: Redis, ids: list[str]) -> dict[str, list[tuple[int, str, dict]]]:
    """Each job's whole Stream: (seq, kind, data) in log order."""
    log = EventLog(redis)
    return {j: [(e.seq, e.kind.value, e.data) for e in await log.read_after(j, 0)] for j in ids}


async def test_a_cut_off_worker_hosts_jobs_finish_elsewhere_and_its_late_writes_are_refused(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        token = await make_user(c.settings, "alice")
        for host in ("web-a", "web-b"):
            c.start(
                host, ["-m", "service.cli", "web"], HOST=c.net.hosts[host], PORT="8000", SSE_PING_SECONDS="1",
                COOKIE_SECURE="false", AIJOBS_DATA_DIR=str(tmp_path / host),
            )  # fmt: skip
        workers = {
            host: c.start(
                host,
                ["-m", "service.cli", "worker"],
                WORKER_CONCURRENCY=str(CONCURRENCY),
                WORKER_POLL_DELAY="0.02",
                AIJOBS_DATA_DIR=str(tmp_path / host),
                LOG_JSON="true",
                **FAST_LEASES,
            )  # fmt: skip
            for host in ("work-a", "work-b")
        }

        async def workers_ready() -> bool:
            for w in workers.values():
                assert w.proc.poll() is None, w.log()[-3000:]
            return all("Starting worker" in w.log() for w in workers.values())

        await until(workers_ready, timeout=60, what="both workers started")

        # A client on each web host: it submits through its own host, then watches every job through it.
        shared = tmp_path / "clients"
        shared.mkdir()
        clients = {}
        for me, peer in (("a", "b"), ("b", "a")):
            web = f"web-{me}"
            clients[me] = c.start(
                web,
                ["-m", "tests.netns_client", "--base", f"http://{c.net.hosts[web]}:8000", "--token", token,
                 "--me", me, "--peer", peer, "--dir", str(shared), "--submit", str(JOBS_PER_CLIENT),
                 "--text", "[[slow:4]]"],
            )  # fmt: skip

        async def submitted() -> bool:
            for client in clients.values():
                assert client.proc.poll() in (None, 0), client.log()[-3000:]
            return all((shared / f"ids-{me}.json").exists() for me in clients)

        await until(submitted, timeout=60, what="both clients submitting")
        by_web = {me: json.loads((shared / f"ids-{me}.json").read_text()) for me in clients}
        ids = by_web["a"] + by_web["b"]
        assert len(set(ids)) == 2 * JOBS_PER_CLIENT

        def rows() -> dict[str, dict]:
            return {r["id"]: r for r in store_sql(c.settings, "SELECT * FROM jobs WHERE id = ANY(?)", (ids,))}

        async def all_running() -> bool:
            return all(r["status"] == "processing" and r["percentage"] > 0 for r in rows().values())

        await until(all_running, timeout=60, what="all six jobs running")
        cut, other = workers["work-b"], workers["work-a"]
        running = rows()
        victims = sorted(j for j, r in running.items() if pid_of(r) == cut.pid)
        assert len(victims) == CONCURRENCY, {j: pid_of(r) for j, r in running.items()}  # three on each worker host

        # Unplug worker host b mid-job. Its leases lapse; worker a's sweeper takes the jobs over and runs them.
        cut_mark = len(cut.log())
        c.net.cut("work-b")
        cut_at = time.monotonic()
        taken: dict[str, float] = {}

        async def taken_over() -> bool:
            for j, r in rows().items():
                if j in victims and j not in taken and pid_of(r) != cut.pid:
                    taken[j] = round(time.monotonic() - cut_at, 1)
            return len(taken) == len(victims)

        # Lease + sweep, and a margin for a loaded machine: a take-over waits for the lease, not for the link.
        await until(taken_over, timeout=LEASE + SWEEP + 10, what="the cut-off worker's jobs taken over")

        async def all_completed() -> bool:
            return all(r["status"] == "completed" for r in rows().values())

        await until(all_completed, timeout=60, what="every job completed while worker host b is cut off")
        print(f"taken over {taken} s after the cut; all completed {time.monotonic() - cut_at:.1f} s after it")
        redis = Redis.from_url(c.redis.local_url)
        try:
            settled_rows, settled_streams = rows(), await streams(redis, ids)

            # Plug it back in: worker b wakes up believing it runs three jobs, and tries to write them.
            restore_mark = len(cut.log())
            c.net.restore("work-b")
            restored_at = time.monotonic()

            def lost(since: int) -> set[str]:
                return {
                    line["job_id"] for line in json_lines(cut.log()[since:]) if line["msg"].startswith("lease lost")
                }

            async def all_lost() -> bool:
                assert cut.proc.poll() is None, "worker b died"  # it must live through the cut
                return lost(cut_mark) == set(victims)

            try:
                await until(all_lost, timeout=60, what="worker b's runs ending lease lost")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{c.net.describe('work-b')}\n{cut.log()[-5000:]}") from None
            # Each renewal is bounded by the lease left to it (a silent path cannot hold the heartbeat), so worker b
            # normally stops its runs itself during the cut, as their leases lapse, and sends nothing late; a run
            # that still had a write on the cut link when it came back is refused by the store (a lease token that
            # is not the job's). Either way every run ended lease lost (above), and the rows and Streams below are
            # exactly as they were before the restore: nothing worker b sent changed anything.
            late = lost(restore_mark)
            print(
                f"{len(victims) - len(late)} of worker b's runs stopped themselves during the cut, {len(late)} were "
                f"refused after the restore ({time.monotonic() - restored_at:.1f} s after it)"
            )
            for client in clients.values():
                assert await asyncio.to_thread(client.proc.wait, 60) == 0, client.log()[-3000:]
            final_rows, final_streams = rows(), await streams(redis, ids)
        finally:
            await redis.aclose()

    # Nothing worker b sent after the link came back changed a row or a Stream: its writes were refused.
    assert final_rows == settled_rows
    assert final_streams == settled_streams
    assert not any(
        line.get("job_id") in victims and line["msg"] in ("job completed", "job failed")
        for line in json_lines(cut.log())
    ), "worker b recorded no outcome for the jobs it lost"

    for j, row in final_rows.items():
        history = [h["error"] for h in json.loads(row["history"] or "[]")]
        assert row["status"] == "completed" and pid_of(row) == other.pid, (j, row)  # finished on worker host a
        assert history == (["worker_lost", None] if j in victims else [None]), (j, history)
        stream = final_streams[j]
        seqs = [seq for seq, _, _ in stream]
        assert seqs == sorted(set(seqs)), (j, seqs)
        terminal = [d for _, kind, d in stream if kind == "status" and d["status"] in TERMINAL_STATUSES]
        assert len(terminal) == 1 and terminal[0]["status"] == "completed", (j, terminal)
        assert stream[-1][0] == row["seq"], (j, stream[-1], row["seq"])  # the store ends where the Stream does

    # Every event reached the clients on both web hosts once and in seq order: the other host's jobs too.
    for me in clients:
        received = json_lines((shared / f"events-{me}.jsonl").read_text())
        assert not [line for line in received if "error" in line], received
        for j in ids:
            mine = [line for line in received if line["job_id"] == j and line["event"] != "position"]
            got = [(int(line["id"]), line["event"]) for line in mine]
            assert got == [(seq, kind) for seq, kind, _ in final_streams[j]], (me, j, got)
            assert all(int(line["id"]) == line["data"]["seq"] for line in mine)


_GATED = """
import sys
from pathlib import Path
from _pytest.outcomes import Failed, Skipped
from tests.netns import cluster
try:
    with cluster(Path(sys.argv[1])):
        print("namespaces made")
except (Failed, Skipped) as exc:
    print(type(exc).__name__, exc.msg)
"""


async def test_without_namespaces_the_test_fails_saying_why_unless_told_to_skip(tmp_path: Path) -> None:
    """Where namespaces cannot be made, the setup fails with the reason; AIJOBS_SKIP_NETNS=1 makes it a skip that
    says the same. Run as root, the check runs with every capability dropped (util-linux's setpriv), as in a
    container without CAP_SYS_ADMIN: `ip netns add` itself is refused. Run unprivileged, it is refused before."""
    no_caps = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    env = {k: v for k, v in os.environ.items() if k != "AIJOBS_SKIP_NETNS"}
    runs = [
        await asyncio.create_subprocess_exec(
            *no_caps,
            sys.executable,
            "-c",
            _GATED,
            str(tmp_path),
            cwd=ROOT,
            env=extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for extra in (env, {**env, "AIJOBS_SKIP_NETNS": "1"})
    ]
    failed, skipped = [(await run.communicate())[0].decode() for run in runs]
    reason = "Operation not permitted" if no_caps else "making network namespaces needs root"
    assert failed.startswith("Failed the multi-host test cannot make its network namespaces: "), failed
    assert reason in failed and "set AIJOBS_SKIP_NETNS=1 to skip it explicitly" in failed, failed
    assert skipped.startswith("Skipped AIJOBS_SKIP_NETNS=1: ") and reason in skipped, skipped
    assert not [
        name for name in ip("netns", "list").split() if name.startswith(tuple(f"{PREFIX}{r.pid}-" for r in runs))
    ]
