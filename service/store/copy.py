"""`aijobs store copy`: every row of a SQLite store into a migrated PostgreSQL one, resumably.

Resumable by construction rather than by bookkeeping: each table is read in primary-key order in batches, each batch
inserted in a transaction of its own with `ON CONFLICT DO NOTHING`, so a copy cut off anywhere and run again skips
what already arrived and adds the rest; nothing is duplicated and no separate progress record can go stale. The rows
go over as they are, every column (sealed provider keys as their ciphertext: nothing is decrypted). The counters
PostgreSQL keeps beside the rows (each user's active jobs, the 64 queue_count rows) are then recomputed from the
rows in one transaction, so they are right whatever a cut-off run left behind.

Synchronous (sqlite3 and psycopg's blocking API): a one-off operator command with nothing to overlap.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import migrations as sqlite_migrations
from . import pg_migrations

# Parents before children, so a copy cut off between tables never leaves a job whose user is missing.
TABLES: list[tuple[str, tuple[str, ...]]] = [
    ("users", ("id",)),
    ("signed_out_sessions", ("session_id",)),
    ("jobs", ("id",)),
    ("job_secrets", ("job_id",)),
    ("idempotency_keys", ("user_id", "key")),
    ("webhook_secrets", ("user_id",)),
    ("webhook_deliveries", ("id",)),
    ("operator_actions", ("id",)),
]
BATCH_SIZE = 500
PROGRESS_EVERY = 2.0  # seconds between progress lines within one table


class CopyError(Exception):
    """Why the copy refuses to start or stopped, worded as what to do next."""


@dataclass
class Copied:
    table: str
    total: int = 0  # rows in the source
    copied: int = 0  # inserted by this run
    present: int = 0  # already in the destination (an earlier run's)


def sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise CopyError(f"the source must be a SQLite store (sqlite:///PATH), not {_shown(url)}")
    path = Path(url.removeprefix("sqlite:///"))
    if not path.is_file():
        raise CopyError(f"no SQLite store at {path}: check the path (the default is <AIJOBS_DATA_DIR>/aijobs.db)")
    return path


def _shown(url: str) -> str:
    from .postgres import _shown as shown

    return shown(url)


def open_source(path: Path) -> sqlite3.Connection:
    """Read-only: the copy never changes the store it moves away from."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    want = len(sqlite_migrations.MIGRATIONS)
    if version != want:
        db.close()
        if version > want:
            raise CopyError(f"{path} is at schema version {version}, newer than this code's {want}: run a newer aijobs")
        raise CopyError(
            f"{path} is at schema version {version}, older than this code's {want}: run "
            f"`DATABASE_URL=sqlite:///{path} aijobs migrate` first, then copy again"
        )
    return db


def open_destination(url: str) -> Any:
    import psycopg

    if not url.startswith(("postgresql://", "postgres://")):
        raise CopyError(f"the destination must be a PostgreSQL store (postgresql://…), not {_shown(url)}")
    try:
        conn = psycopg.connect(url, prepare_threshold=None, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise CopyError(f"cannot connect to {_shown(url)} ({str(exc).strip()}): check the URL and the server") from None
    with conn.transaction():
        (has,) = conn.execute("SELECT to_regclass('aijobs_schema') IS NOT NULL").fetchone() or (False,)
        row = conn.execute("SELECT version FROM aijobs_schema").fetchone() if has else None
    version, want = (int(row[0]) if row else 0), len(pg_migrations.MIGRATIONS)
    if version != want:
        conn.close()
        how = "run a newer aijobs" if version > want else f"run `DATABASE_URL={_shown(url)} aijobs migrate` first"
        raise CopyError(f"{_shown(url)} is at schema version {version}, this code's is {want}: {how}")
    return conn


def _columns(src: sqlite3.Connection, dst: Any, table: str) -> tuple[list[str], set[str]]:
    """The columns to copy (the destination's stored ones; generated ones are computed there) and which of them are
    booleans (SQLite keeps 0/1). Refuses if either side has a column the other lacks: nothing is dropped silently."""
    theirs = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
    with dst.transaction():
        rows = dst.execute(
            "SELECT column_name, data_type, is_generated FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()
    ours = [name for name, _, generated in rows if generated == "NEVER"]
    if set(theirs) != set(ours):
        raise CopyError(
            f"table {table}: the stores' columns differ (only in SQLite: {sorted(set(theirs) - set(ours))}, only in "
            f"PostgreSQL: {sorted(set(ours) - set(theirs))}): are both at this release's schema?"
        )
    return ours, {name for name, kind, _ in rows if kind == "boolean"}


def insert_batch(dst: Any, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    """One batch, one transaction: all of it arrives or none. How many rows were new."""
    with dst.transaction(), dst.cursor() as cur:
        cur.executemany(sql, rows, returning=True)
        new = 0
        while True:
            new += len(cur.fetchall())
            if not cur.nextset():
                return new


def copy_table(
    src: sqlite3.Connection,
    dst: Any,
    table: str,
    key: tuple[str, ...],
    *,
    batch_size: int,
    say: Callable[[str], None],
) -> Copied:
    names, booleans = _columns(src, dst, table)
    flags = [n in booleans for n in names]
    cols = ", ".join(names)
    insert = (
        f"INSERT INTO {table} ({cols}) VALUES ({', '.join(['%s'] * len(names))}) ON CONFLICT DO NOTHING RETURNING 1"
    )
    keys = ", ".join(key)
    at = [names.index(k) for k in key]
    first = f"SELECT {cols} FROM {table} ORDER BY {keys} LIMIT ?"
    after = f"SELECT {cols} FROM {table} WHERE ({keys}) > ({', '.join('?' * len(key))}) ORDER BY {keys} LIMIT ?"
    done = Copied(table, total=int(src.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]))
    last: tuple[Any, ...] | None = None
    shown_at = time.monotonic()
    while True:
        rows = src.execute(first, (batch_size,)) if last is None else src.execute(after, (*last, batch_size))
        batch = [tuple(bool(v) if f and v is not None else v for v, f in zip(r, flags, strict=True)) for r in rows]
        if not batch:
            return done
        new = insert_batch(dst, insert, batch)
        if new < len(batch) and len(key) == 1:
            _check_skipped_are_ours(dst, table, key[0], [r[at[0]] for r in batch])
        done.copied += new
        done.present += len(batch) - new
        last = tuple(batch[-1][i] for i in at)
        if time.monotonic() - shown_at >= PROGRESS_EVERY:
            shown_at = time.monotonic()
            say(f"  {table}: {done.copied + done.present} of {done.total} rows …")


def _check_skipped_are_ours(dst: Any, table: str, key: str, ids: list[Any]) -> None:
    """A skipped row must be the same row already there (same key), not a clash on another unique column (a user
    of the same name made in the destination under another id): that copy would lose the source's row silently."""
    with dst.transaction():
        there = {r[0] for r in dst.execute(f"SELECT {key} FROM {table} WHERE {key} = ANY(%s)", (ids,))}
    missing = [i for i in ids if i not in there]
    if missing:
        raise CopyError(
            f"{table}: {len(missing)} row(s) clash with different rows already in the destination (e.g. {key} "
            f"{missing[0]}: a user of the same name made there?). Copy into a fresh database: drop it, create it, "
            "run `aijobs migrate`, and copy again."
        )


def recount(dst: Any) -> None:
    """The counters PostgreSQL keeps beside the rows, from the rows themselves (a submit adds to user_active, not a
    trigger, so copied jobs are not counted there; queue_count is recomputed too, whatever a cut-off run left)."""
    with dst.transaction():
        dst.execute("LOCK TABLE jobs IN SHARE MODE")  # no job changes status while its counts are taken
        dst.execute(
            "INSERT INTO user_active (user_id, n) SELECT user_id, COUNT(*) FILTER (WHERE status IN "
            "('queued', 'processing')) FROM jobs GROUP BY user_id ON CONFLICT (user_id) DO UPDATE SET n = EXCLUDED.n"
        )
        dst.execute(
            "UPDATE user_active u SET n = 0 WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.user_id = u.user_id)"
        )
        dst.execute(
            "UPDATE queue_count q SET n = COALESCE(c.n, 0) FROM queue_count q2 LEFT JOIN (SELECT hashtext(id) & 63 "
            "AS shard, COUNT(*) AS n FROM jobs WHERE status = 'queued' GROUP BY 1) c ON c.shard = q2.shard "
            "WHERE q.shard = q2.shard"
        )


def copy_store(
    source_url: str, destination_url: str, *, batch_size: int = BATCH_SIZE, say: Callable[[str], None] = print
) -> list[Copied]:
    """Copy every table, then recount; what each table got. A dropped connection midway raises psycopg's error:
    the caller says to run it again (it continues where it stopped)."""
    if batch_size < 1:
        raise CopyError("--batch-size must be at least 1")
    src = open_source(sqlite_path(source_url))
    try:
        dst = open_destination(destination_url)
        try:
            say(f"Copying {source_url} to {_shown(destination_url)}")
            out = []
            for table, key in TABLES:
                done = copy_table(src, dst, table, key, batch_size=batch_size, say=say)
                say(f"  {table}: {done.copied} copied, {done.present} already there ({done.total} in the source)")
                out.append(done)
            recount(dst)
            return out
        finally:
            dst.close()
    finally:
        src.close()
