"""Users, their API tokens (as SHA-256 hashes only) and sealed per-job provider keys, in either store.

Kept apart from the job store's lifecycle code: it shares the store's connection (`store.db`, SQLite's `?`
placeholders on both) and migrations, nothing else.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ..crypto import hash_token, new_token, session_epoch
from ..models import iso, now
from .base import JobStore, UniqueViolation

if TYPE_CHECKING:
    pass


class UserExists(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    created_at: float
    operator: bool = False  # may open /admin and act on anyone's jobs (checked where it matters: `operator`)

    def to_public(self) -> dict[str, str | None]:
        return {"id": self.id, "name": self.name, "created_at": iso(self.created_at)}


TOKEN_CACHE_SECONDS = 30.0
TOKEN_CACHE_SIZE = 10_000

V = TypeVar("V")


class _Remembered(Generic[V]):
    """Values kept for TOKEN_CACHE_SECONDS, at most TOKEN_CACHE_SIZE of them (then it starts over)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        hit = self.entries.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, key: str, value: V) -> None:
        if len(self.entries) >= TOKEN_CACHE_SIZE:
            self.entries.clear()
        self.entries[key] = (time.monotonic() + TOKEN_CACHE_SECONDS, value)

    def drop(self, key: str | None = None, *, where: Callable[[V], bool] | None = None) -> None:
        """Forget one key, the values `where` picks, or (neither given) everything."""
        if key is not None:
            self.entries.pop(key, None)
        elif where is not None:
            for k in [k for k, (_, v) in self.entries.items() if where(v)]:
                del self.entries[k]
        else:
            self.entries.clear()


class UserStore:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        # Every API request presents its token: remembering valid ones for a short while spares a store round trip
        # per request. A revocation clears it (`forget`, told by a broadcast); TOKEN_CACHE_SECONDS bounds the rest.
        self._tokens: _Remembered[User] = _Remembered()  # token hash -> its user
        self._epochs: _Remembered[str] = _Remembered()  # user id -> session epoch, same lifetime and clearing
        self._signed_out: _Remembered[bool] = _Remembered()  # session id -> signed out?, same lifetime

    async def create(self, name: str, *, operator: bool = False) -> tuple[User, str]:
        """A new user and their API token: the token is returned this once and never stored."""
        token = new_token()
        user = User(id=uuid.uuid4().hex, name=name, created_at=now(), operator=operator)
        try:
            await self.store.db.execute(
                "INSERT INTO users (id, name, token_hash, created_at, is_operator) VALUES (?, ?, ?, ?, ?)",
                (user.id, user.name, hash_token(token), user.created_at, operator),
            )
        except (UniqueViolation, sqlite3.IntegrityError):
            raise UserExists(name) from None
        return user, token

    async def get_or_create(self, name: str) -> User:
        """The named user, made on first use (the dev demo user); its token is never shown."""
        found = await self.by_name(name)
        if found is not None:
            return found
        try:
            user, _ = await self.create(name)
        except UserExists:
            found = await self.by_name(name)
            assert found is not None
            return found
        return user

    async def _one(self, sql: str, params: tuple[str, ...]) -> User | None:
        async with self.store.db.execute(sql, params) as cur:
            row = await cur.fetchone()
        return User(id=row[0], name=row[1], created_at=row[2]) if row else None

    async def by_token(self, token: str) -> User | None:
        digest = hash_token(token)
        user = self._tokens.get(digest)
        if user is not None:
            return user
        user = await self._one("SELECT id, name, created_at FROM users WHERE token_hash = ?", (digest,))
        if user is not None:  # only valid tokens are kept, so junk tokens can't grow the cache
            self._tokens.put(digest, user)
        return user

    async def revoke(self, name: str, *, reissue: bool = False) -> tuple[User, str | None] | None:
        """Make the user's API token worthless (its hash is replaced); with `reissue`, the new token, shown once."""
        token = new_token()
        async with self.store.db.execute(
            "UPDATE users SET token_hash = ? WHERE name = ? RETURNING id, name, created_at", (hash_token(token), name)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        user = User(id=row[0], name=row[1], created_at=row[2])
        self.forget(user.id)
        return user, token if reissue else None

    async def session_epoch(self, user_id: str) -> str | None:
        """The epoch a session cookie of this user must carry (None: no such user); see `SessionSigner`."""
        epoch = self._epochs.get(user_id)
        if epoch is not None:
            return epoch
        async with self.store.db.execute("SELECT token_hash FROM users WHERE id = ?", (user_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        epoch = session_epoch(row[0])
        self._epochs.put(user_id, epoch)
        return epoch

    async def sign_out(self, session_id: str, user_id: str, expires_at: float) -> None:
        """Record a browser session as signed out until its cookie would expire anyway; older records go."""
        self._signed_out.put(session_id, True)
        await self.store.db.execute(
            "INSERT INTO signed_out_sessions (session_id, user_id, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (session_id) DO NOTHING",  # standard SQL: the PostgreSQL store runs it too
            (session_id, user_id, expires_at),
        )
        await self.store.db.execute("DELETE FROM signed_out_sessions WHERE expires_at < ?", (time.time(),))

    async def signed_out(self, session_id: str) -> bool:
        """Whether this session was signed out (remembered like tokens; a broadcast sets it at once)."""
        known = self._signed_out.get(session_id)
        if known is not None:
            return known
        async with self.store.db.execute(
            "SELECT 1 FROM signed_out_sessions WHERE session_id = ?", (session_id,)
        ) as cur:
            found = await cur.fetchone() is not None
        self._signed_out.put(session_id, found)
        return found

    def saw_sign_out(self, session_id: str) -> None:
        """Another web process signed this session out (told on the auth channel): refuse it from now on."""
        self._signed_out.put(session_id, True)

    def forget(self, user_id: str | None = None) -> None:
        """Drop remembered tokens: one user's (after a revocation), or all (when revocations may have been missed)."""
        if user_id is None:
            self._tokens.drop()
            self._epochs.drop()
            self._signed_out.drop()
            return
        self._epochs.drop(user_id)
        self._tokens.drop(where=lambda user: user.id == user_id)

    async def by_id(self, user_id: str) -> User | None:
        return await self._one("SELECT id, name, created_at FROM users WHERE id = ?", (user_id,))

    async def by_name(self, name: str) -> User | None:
        return await self._one("SELECT id, name, created_at FROM users WHERE name = ?", (name,))

    async def list(self) -> list[User]:
        async with self.store.db.execute(
            "SELECT id, name, created_at, is_operator FROM users ORDER BY created_at"
        ) as cur:
            rows = await cur.fetchall()
        return [User(id=r[0], name=r[1], created_at=r[2], operator=bool(r[3])) for r in rows]

    async def operator(self, user_id: str) -> User | None:
        """The user, only if they are an operator. Read from the store on every call, never cached: taking the role
        away (`aijobs users operator NAME --off`) holds from the next request, with no broadcast to miss. Only
        /admin and /api/admin/* ask."""
        async with self.store.db.execute(
            "SELECT id, name, created_at, is_operator FROM users WHERE id = ?", (user_id,)
        ) as cur:
            row = await cur.fetchone()
        return User(id=row[0], name=row[1], created_at=row[2], operator=True) if row and row[3] else None

    async def set_operator(self, name: str, operator: bool) -> User | None:
        """Give the named user the operator role, or take it away; None if there is no such user."""
        async with self.store.db.execute(
            "UPDATE users SET is_operator = ? WHERE name = ? RETURNING id, name, created_at, is_operator",
            (operator, name),
        ) as cur:
            row = await cur.fetchone()
        return User(id=row[0], name=row[1], created_at=row[2], operator=bool(row[3])) if row else None


class JobSecrets:
    """Sealed provider keys, one per job; only ciphertext is ever written, and it is deleted when the job ends."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def put(self, job_id: str, user_id: str, ciphertext: bytes) -> None:
        await self.store.db.execute(
            "INSERT INTO job_secrets (job_id, user_id, ciphertext, created_at) VALUES (?, ?, ?, ?)",
            (job_id, user_id, ciphertext, now()),
        )

    async def get(self, job_id: str) -> bytes | None:
        async with self.store.db.execute("SELECT ciphertext FROM job_secrets WHERE job_id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return bytes(row[0]) if row else None

    async def delete(self, job_id: str) -> None:
        await self.store.db.execute("DELETE FROM job_secrets WHERE job_id = ?", (job_id,))

    async def delete_finished(self, *, grace: float = 60.0) -> int:
        """Drop the keys of jobs that ended without a run forgetting them (expired, swept, purged).

        A key is sealed just before its job's row is written, so a key with no job is only dropped after `grace`.
        """
        async with self.store.db.execute(
            "DELETE FROM job_secrets WHERE job_id NOT IN (SELECT id FROM jobs WHERE status IN ('queued','processing')) "
            "AND (created_at < ? OR job_id IN (SELECT id FROM jobs))",
            (now() - grace,),
        ) as cur:
            return cur.rowcount
