"""The data directory and the files in it are the service's alone: directories 0700, files 0600.

They hold users' inputs and results (the SQLite store and its WAL), sealed provider keys and the secret that opens
them (`secret_key`), and the embedded Redis' queue and event logs. Whatever we create is made private from the start;
what an older version left readable is tightened when the process starts, if it is ours: a directory someone else
owns, or a shared sticky one such as /tmp, is left as it is, with a warning saying what to do.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("aijobs.files")

DIR_MODE = 0o700
FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if not st.st_mode & 0o077:
        return
    if st.st_uid != os.getuid() or st.st_mode & stat.S_ISVTX:
        log.warning(
            "%s is open to other users and not ours to change: make it private (chmod %o %s), or point "
            "AIJOBS_DATA_DIR / DATABASE_URL at a directory of the service's own",
            path,
            mode,
            path,
        )
        return
    path.chmod(mode)


def private_dir(path: Path) -> Path:
    """`path` as a directory only we can enter: made 0700 if missing (its parents as usual), tightened if not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        pass
    _tighten(path, DIR_MODE)
    return path


def tighten_dir(path: Path) -> None:
    """Make an existing directory 0700 (one that does not exist yet is left to whoever creates it)."""
    if path.is_dir():
        _tighten(path, DIR_MODE)


def private_file(path: Path) -> Path:
    """`path` as a file only we can read: created empty with 0600 if missing, tightened if not.

    An existing file is never opened here, only chmod-ed: closing any descriptor of a file drops every POSIX lock
    this process holds on it, and SQLite keeps its locks on the database and -shm files that way."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    _tighten(path, FILE_MODE)
    return path


def tighten_file(path: Path) -> None:
    """Make an existing file 0600 (without opening it); a missing one is left alone."""
    _tighten(path, FILE_MODE)


def tighten_tree(root: Path) -> None:
    """Every directory (0700) and file (0600) under `root`, as left by an older version or another umask."""
    for dirpath, _, filenames in os.walk(root):
        _tighten(Path(dirpath), DIR_MODE)
        for name in filenames:
            _tighten(Path(dirpath) / name, FILE_MODE)


def private_umask() -> None:
    """preexec_fn part for a child whose files must be private from the start (the embedded redis-server)."""
    os.umask(0o077)
