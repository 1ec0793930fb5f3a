"""Encryption of stored secrets: AES-256-GCM, one random 96-bit nonce per value.

A stored value reads ``version (1 byte) || nonce (12 bytes) || ciphertext and tag``. The
additional authenticated data binds it to its tenant and name, so a ciphertext copied to
another name (or another tenant) does not decrypt.

The key is 32 random bytes, written in urlsafe base64 (44 characters with the ``=`` padding,
or 43 without). It comes from:

1. ``SANDLOT_SECRET_KEY``, when set (several servers sharing one PostgreSQL database must all
   have the same key: set this, or copy the key file);
2. else the key file ``<home>/secret.key``, created on first use (mode 0600, never
   overwritten). A key file that others can read, or that is not ours, is refused.

Make a key with ``python -c "import secrets; print(secrets.token_urlsafe(32) + '=')"``.
Losing the key loses the secrets: they are stored nowhere else in the clear.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import stat
from pathlib import Path

from ..errors import SecretError

KEY_ENV = "SANDLOT_SECRET_KEY"
KEY_FILE = "secret.key"
KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = 1
_AAD_PREFIX = b"sandlot-secret\x00"


def decode_key(text: str, source: str) -> bytes:
    """32 bytes from their urlsafe base64 text (padding optional); a SecretError naming
    ``source``, never the text, otherwise."""
    cleaned = text.strip()
    try:
        raw = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        valid = base64.urlsafe_b64encode(raw).rstrip(b"=") == cleaned.rstrip("=").encode()
    except (binascii.Error, ValueError):
        valid = False
    if not valid or len(raw) != KEY_BYTES:
        raise SecretError(
            f"{source} is not a secret key: it must be {KEY_BYTES} random bytes in urlsafe "
            'base64 (44 characters), e.g. from python -c "import secrets; '
            "print(secrets.token_urlsafe(32) + '=')\""
        )
    return raw


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def _aad(tenant: str, name: str) -> bytes:
    return _AAD_PREFIX + json.dumps([tenant, name]).encode()


class Cipher:
    """Encrypts and decrypts the values of one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretError(f"a secret key is {KEY_BYTES} bytes, not {len(key)}")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "<sandlot.secrets.Cipher>"  # never the key

    def encrypt(self, tenant: str, name: str, value: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), _aad(tenant, name))
        return bytes([VERSION]) + nonce + sealed

    def decrypt(self, tenant: str, name: str, blob: bytes) -> str:
        from cryptography.exceptions import InvalidTag

        blob = bytes(blob)
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != VERSION:
            raise SecretError(
                f"the stored secret {name!r} is not in a format this sandlot reads "
                f"(version {blob[:1].hex() or 'none'})",
                name=name,
            )
        nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, _aad(tenant, name))
        except InvalidTag:
            raise SecretError(
                f"the secret {name!r} does not decrypt with this key: it was stored with "
                f"another key ({KEY_ENV} or the key file changed), or it was tampered with",
                name=name,
            ) from None
        return plain.decode("utf-8")


def key_path(home: Path) -> Path:
    return Path(home) / KEY_FILE


def load_key(home: Path, create: bool = True) -> bytes:
    """The key: ``SANDLOT_SECRET_KEY``, else ``<home>/secret.key`` (created when missing
    and ``create``; a SecretError when missing and not ``create``)."""
    text = os.environ.get(KEY_ENV)
    if text is not None and text.strip():
        return decode_key(text, KEY_ENV)
    path = key_path(home)
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        if not create:
            raise SecretError(
                f"no secret key: {KEY_ENV} is not set and there is no key file {path}",
                path=str(path),
            ) from None
    _create_key_file(path)
    return _read_key_file(path)


def load_cipher(home: Path, create: bool = True) -> Cipher:
    return Cipher(load_key(home, create))


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretError(
            f"cannot read the secret key file {path}: {exc.strerror or exc}", path=str(path)
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"the secret key file {path} is not a regular file", path=str(path))
        if info.st_uid != os.geteuid():
            raise SecretError(
                f"refusing the secret key file {path}: it belongs to uid {info.st_uid}, "
                f"not to this user (uid {os.geteuid()})",
                path=str(path),
            )
        if info.st_mode & 0o077:
            raise SecretError(
                f"refusing the secret key file {path}: its mode is "
                f"{stat.S_IMODE(info.st_mode):04o}, so others may read it; "
                f"run 'chmod 600 {path}' (and consider the key compromised if they did)",
                path=str(path),
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = "\x00"  # not base64: refused below
    return decode_key(text, f"the secret key file {path}")


def _create_key_file(path: Path) -> None:
    """Write a new random key, atomically: a private temporary file (O_EXCL, 0600) is
    filled and synced, then hard-linked to ``path``, which fails if ``path`` exists. So two
    processes starting at once agree on one key, and nobody ever reads a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = (encode_key(secrets.token_bytes(KEY_BYTES)) + "\n").encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _write_synced(os.open(temporary, flags, 0o600), text)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process won the race: its key is the key
    except OSError:
        # A file system without hard links: create the key file itself with O_EXCL.
        with contextlib.suppress(FileExistsError):
            _write_synced(os.open(path, flags, 0o600), text)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _write_synced(fd: int, data: bytes) -> None:
    """Write ``data`` to a new file's descriptor, sync it, close it."""
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
