"""The server secret and what it protects: signed session cookies, users' own provider keys and webhook secrets.

One secret (SECRET_KEY, or a file generated once in the data dir) yields independent keys per purpose through
HKDF, so a cookie signature can never be replayed as an encryption key. Provider keys are sealed with AES-GCM
(authenticated) with `user_id|job_id` as associated data: a ciphertext copied to another job or user won't open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .config import Settings
from .files import private_dir, private_file

log = logging.getLogger("aijobs.crypto")

SECRET_FILE = "secret_key"
_SEALED_VERSION = b"\x01"


def load_server_secret(settings: Settings) -> bytes:
    """SECRET_KEY if set; otherwise the data dir's secret file, created once (0600) by whichever process is first."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        _create_secret_file(path)
    private_file(path)  # one an older version wrote readable
    raw = path.read_text().strip()
    if len(raw) < 32:
        raise RuntimeError(f"{path} holds no usable secret; delete it to make a new one, or set SECRET_KEY")
    return raw.encode()


def _create_secret_file(path: Path) -> None:
    """Write to a private temp file, then hard-link it into place: atomic, and a concurrent starter's file wins."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)
            log.warning("SECRET_KEY is not set: generated one into %s; set SECRET_KEY in production", path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def derive_key(secret: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"aijobs:{purpose}".encode()).derive(secret)


def hash_token(token: str) -> str:
    """API tokens are random and long, so one SHA-256 is enough (no password stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "aij_" + secrets.token_urlsafe(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SignedSession(NamedTuple):
    user_id: str
    epoch: str
    session_id: str
    expires: int


class SessionSigner:
    """`<user_id>.<epoch>.<session_id>.<expires>.<hmac>`: every web process checks a cookie with its key alone.

    The epoch is a fingerprint of the user's current API token (`session_epoch`): revoking the token changes it,
    which signs out every browser session made before. The session id names this one sign-in, so signing out
    can record it as ended (UserStore.sign_out) and a copy of the cookie stops working too.
    """

    def __init__(self, secret: bytes, max_age: int) -> None:
        self._key = derive_key(secret, "session")
        self.max_age = max_age

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def sign(self, user_id: str, epoch: str = "", *, session_id: str | None = None, now: float | None = None) -> str:
        sid = session_id or secrets.token_urlsafe(16)
        body = f"{user_id}.{epoch}.{sid}.{int((now or time.time()) + self.max_age)}"
        return f"{body}.{self._mac(body)}"

    def verify(self, value: str, *, now: float | None = None) -> SignedSession | None:
        """The signed session, or None for anything forged, malformed or expired."""
        parts = value.split(".")
        if len(parts) != 5:
            return None
        user_id, epoch, sid, expires, mac = parts
        if not user_id or not sid or not expires.isdigit() or not mac:
            return None
        if not hmac.compare_digest(mac, self._mac(f"{user_id}.{epoch}.{sid}.{expires}")):
            return None
        if int(expires) < (now or time.time()):
            return None
        return SignedSession(user_id, epoch, sid, int(expires))


def session_epoch(token_hash: str) -> str:
    """A short fingerprint of a user's token hash: it changes when the token is revoked, and reveals nothing."""
    return hashlib.sha256(b"session-epoch:" + token_hash.encode()).hexdigest()[:16]


def _seal(aead: AESGCM, plaintext: str, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return _SEALED_VERSION + nonce + aead.encrypt(nonce, plaintext.encode(), aad)


def _open(aead: AESGCM, sealed: bytes, aad: bytes) -> str | None:
    if len(sealed) < 1 + 12 + 16 or sealed[:1] != _SEALED_VERSION:
        return None
    try:
        return aead.decrypt(sealed[1:13], sealed[13:], aad).decode()
    except InvalidTag:
        return None


class KeyBox:
    """Seals a user's provider key for one job; only someone holding the server secret can open it."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(derive_key(secret, "provider-keys"))

    @staticmethod
    def _aad(user_id: str, job_id: str) -> bytes:
        return f"{user_id}|{job_id}".encode()

    def seal(self, plaintext: str, *, user_id: str, job_id: str) -> bytes:
        return _seal(self._aead, plaintext, self._aad(user_id, job_id))

    def open(self, sealed: bytes, *, user_id: str, job_id: str) -> str | None:
        """The key, or None if the ciphertext was tampered with, moved, or sealed under another secret."""
        return _open(self._aead, sealed, self._aad(user_id, job_id))


WEBHOOK_SECRET_PREFIX = "whsec_"


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 32 random bytes in standard base64, as its verifiers read it."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` (Standard Webhooks, symmetric signatures)."""
    key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class SecretBox:
    """Seals users' webhook signing secrets. Signing needs the secret itself, so it is encrypted (like provider keys),
    not hashed (like API tokens); a key of its own (HKDF purpose) and the user as associated data."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(derive_key(secret, "webhook-secrets"))

    def seal(self, plaintext: str, *, user_id: str) -> bytes:
        return _seal(self._aead, plaintext, f"{user_id}|webhook".encode())

    def open(self, sealed: bytes, *, user_id: str) -> str | None:
        """The secret, or None if the ciphertext was tampered with, moved to another user, or the server key changed."""
        return _open(self._aead, sealed, f"{user_id}|webhook".encode())
