"""Signed URLs for exposed ports: a token that is itself the credential for one port of one
sandbox until it expires, so a browser or a webhook can reach it without an API key.

A token is ``<payload>.<mac>``, both base64url without padding: the payload is JSON naming
the sandbox, the port, the tenant and the expiry (Unix seconds); the MAC is HMAC-SHA256 of
the payload under a secret that only this server knows. The secret is 32 random bytes in
``port-signing.key`` in the server's state folder, created mode 0600 on first use; deleting
it (and restarting) revokes every signed URL at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuthenticationError, ForbiddenError, ServerError

SECRET_FILE = "port-signing.key"
MAX_EXPIRES_IN = 7 * 86400  # a signed URL is a bearer credential: keep its life bounded
# Domain separation: a MAC made here means nothing to any other use of the same secret.
CONTEXT = b"sandlot-port-url-v1."


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: ``port`` of ``sandbox_id`` (of ``tenant``) until ``expires``."""

    sandbox_id: str
    port: int
    tenant: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, home: Path) -> None:
        self.path = home / SECRET_FILE
        self._key: bytes | None = None

    def key(self) -> bytes:
        if self._key is None:
            self._key = _load_or_create(self.path)
        return self._key

    def sign(self, grant: Grant) -> str:
        payload = {"s": grant.sandbox_id, "p": grant.port, "t": grant.tenant, "e": grant.expires}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(body))}"

    def verify(self, token: str, now: float | None = None) -> Grant:
        """The grant of a genuine, unexpired token; AuthenticationError for anything forged
        or malformed, ForbiddenError once it has expired."""
        forged = AuthenticationError("this port URL's signature is not valid")
        body, dot, mac = token.partition(".")
        if not dot or not body or not mac:
            raise forged
        try:
            given = _unb64(mac)
        except (binascii.Error, ValueError):
            raise forged from None
        # Constant time, and before the payload is parsed: nothing unsigned is looked at.
        if not hmac.compare_digest(given, self._mac(body)):
            raise forged
        try:
            payload = json.loads(_unb64(body))
            grant = Grant(
                str(payload["s"]), int(payload["p"]), str(payload["t"]), int(payload["e"])
            )
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise forged from None
        if grant.expires <= (time.time() if now is None else now):
            raise ForbiddenError("this signed port URL has expired", expired_at=grant.expires)
        return grant

    def _mac(self, body: str) -> bytes:
        return hmac.new(self.key(), CONTEXT + body.encode("ascii"), hashlib.sha256).digest()


def _load_or_create(path: Path) -> bytes:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written aside, then linked into place: a concurrent reader never sees half a key,
    # and of two servers creating it at once, the first link wins for both.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> bytes:
    with open(path, "rb") as source:
        mode = os.fstat(source.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ServerError(
                f"{path} may be readable by others (mode {stat.S_IMODE(mode):o}); "
                "it signs port URLs: make it 0600 (or delete it to make a new one)"
            )
        raw = source.read().strip()
    try:
        key = bytes.fromhex(raw.decode("ascii"))
    except ValueError:
        raise ServerError(f"{path} is not a hex key (delete it to make a new one)") from None
    if len(key) < 32:
        raise ServerError(f"{path} holds too short a key (delete it to make a new one)")
    return key
