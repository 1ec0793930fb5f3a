"""Where secrets are kept: encrypted at rest, listed by name and date only.

One async interface, :class:`SecretStore`, three places:

- :class:`LocalSecrets`: an SQLite file ``<home>/secrets.db`` (mode 0600), for embedded use
  (:func:`secret_store`), with the key of :mod:`sandlot.secrets.crypto` (``SANDLOT_SECRET_KEY``
  or ``<home>/secret.key``);
- :class:`DatabaseSecrets`: the ``secrets`` table of a server's store (SQLite or PostgreSQL),
  one tenant's rows, with the server's key;
- :class:`sandlot.remote.secrets.RemoteSecrets`: a sandlot server's ``/v1/secrets`` API (what
  the CLI uses when ``SANDLOT_URL`` is set). Values go in, never out: ``get`` is refused.

Values are text (stored as UTF-8), at most 64 KiB, without NUL bytes (they end up in
environment variables and headers): :mod:`sandlot.secrets.models`. Every value is encrypted
with its tenant and name bound in (see :mod:`sandlot.secrets.crypto`). No method returns or
logs a value except ``get``.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .crypto import Cipher, load_cipher
from .models import (
    MAX_VALUE_BYTES,
    SecretInfo,
    check_name,
    check_value,
    secret_not_found,
)

if TYPE_CHECKING:
    from ..store.database import Database

T = TypeVar("T")

LOCAL_TENANT = "local"  # the one tenant of an embedded store (as a keyless server's callers)
DB_FILE = "secrets.db"


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


class SecretStore(ABC):
    """Secrets by name: ``await store.set("TOKEN", value)``, ``await store.get("TOKEN")``."""

    @abstractmethod
    async def set(self, name: str, value: str) -> None:
        """Store ``value`` under ``name``, replacing what was there."""

    @abstractmethod
    async def get(self, name: str) -> str:
        """The value of ``name``; SecretNotFoundError naming it when absent."""

    @abstractmethod
    async def list(self) -> builtins.list[SecretInfo]:
        """Names and dates, sorted by name; never values."""

    @abstractmethod
    async def delete(self, name: str) -> bool:
        """Forget ``name``; False when there was nothing to forget."""


class LocalSecrets(SecretStore):
    """``<home>/secrets.db``: an SQLite file of ciphertexts, for embedded use."""

    def __init__(self, home: Path, tenant: str = LOCAL_TENANT) -> None:
        self.home = Path(home)
        self.path = self.home / DB_FILE
        self.tenant = tenant
        self._cipher: Cipher | None = None
        self._ready = False

    def __repr__(self) -> str:
        return f"LocalSecrets({str(self.home)!r})"

    def _cipher_for(self, create: bool) -> Cipher:
        if self._cipher is None:
            self._cipher = load_cipher(self.home, create)
        return self._cipher

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created 0600 before SQLite opens it; its -wal and -shm files get the same mode.
            # Only if new: closing a descriptor of a database another connection of this
            # process has open would drop the process's (POSIX) locks on it.
            if not self.path.exists():
                try:
                    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                    os.close(os.open(self.path, flags, 0o600))
                except FileExistsError:
                    pass
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA secure_delete=ON")  # overwrite what is deleted or replaced
            if not self._ready:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS secrets ("
                    " tenant_id TEXT NOT NULL,"
                    " name TEXT NOT NULL,"
                    " ciphertext BLOB NOT NULL,"
                    " created_at REAL NOT NULL,"
                    " updated_at REAL NOT NULL,"
                    " PRIMARY KEY (tenant_id, name))"
                )
                self._ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _set(self, name: str, value: str) -> None:
        blob = self._cipher_for(True).encrypt(self.tenant, name, value)
        now = time.time()
        conn = self._connect()
        try:
            conn.execute(
                "INSERT INTO secrets (tenant_id, name, ciphertext, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, name) DO UPDATE SET "
                "ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                (self.tenant, name, blob, now, now),
            )
        finally:
            conn.close()

    def _get(self, name: str) -> str:
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT ciphertext FROM secrets WHERE tenant_id = ? AND name = ?",
                (self.tenant, name),
            ).fetchone()
        finally:
            conn.close()
        if row is None:
            raise secret_not_found(name)
        return self._cipher_for(False).decrypt(self.tenant, name, row[0])

    def _list(self) -> builtins.list[SecretInfo]:
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT name, created_at, updated_at FROM secrets WHERE tenant_id = ? "
                "ORDER BY name",
                (self.tenant,),
            ).fetchall()
        finally:
            conn.close()
        return [SecretInfo(name=n, created_at=_ts(c), updated_at=_ts(u)) for n, c, u in rows]

    def _delete(self, name: str) -> bool:
        conn = self._connect()
        try:
            cursor = conn.execute(
                "DELETE FROM secrets WHERE tenant_id = ? AND name = ?", (self.tenant, name)
            )
            return cursor.rowcount > 0
        finally:
            conn.close()

    async def set(self, name: str, value: str) -> None:
        await asyncio.to_thread(self._set, check_name(name), check_value(value))

    async def get(self, name: str) -> str:
        return await asyncio.to_thread(self._get, check_name(name))

    async def list(self) -> builtins.list[SecretInfo]:
        return await asyncio.to_thread(self._list)

    async def delete(self, name: str) -> bool:
        return await asyncio.to_thread(self._delete, check_name(name))


Writer = Callable[..., Awaitable[Any]]


class DatabaseSecrets(SecretStore):
    """One tenant's secrets in the ``secrets`` table of a server's :class:`Database`.

    ``home`` is where the key file lives (default: the state folder) unless ``cipher`` is
    given; ``writer`` runs a blocking write (default ``asyncio.to_thread``; the server passes
    its hub's single writer thread)."""

    def __init__(
        self,
        db: Database,
        tenant: str,
        *,
        home: Path | None = None,
        cipher: Cipher | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.db = db
        self.tenant = tenant
        self.home = home
        self._cipher = cipher
        self._writer: Writer = writer or asyncio.to_thread

    def __repr__(self) -> str:
        return f"DatabaseSecrets({self.db!r}, {self.tenant!r})"

    def _cipher_for(self, create: bool) -> Cipher:
        if self._cipher is None:
            from ..store import default_home

            self._cipher = load_cipher(self.home or default_home(), create)
        return self._cipher

    def _set(self, name: str, value: str) -> None:
        from ..store.database import stored_secrets as secrets

        blob = self._cipher_for(True).encrypt(self.tenant, name, value)
        now = time.time()
        row = {
            "tenant_id": self.tenant,
            "name": name,
            "ciphertext": blob,
            "created_at": now,
            "updated_at": now,
        }
        if self.db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        statement = insert(secrets).values(row)
        statement = statement.on_conflict_do_update(
            index_elements=[secrets.c.tenant_id, secrets.c.name],
            set_={"ciphertext": blob, "updated_at": now},
        )
        with self.db.write() as conn:
            conn.execute(statement)

    def _get(self, name: str) -> str:
        from sqlalchemy import select

        from ..store.database import stored_secrets as secrets

        with self.db.read() as conn:
            blob = conn.execute(
                select(secrets.c.ciphertext).where(
                    secrets.c.tenant_id == self.tenant, secrets.c.name == name
                )
            ).scalar_one_or_none()
        if blob is None:
            raise secret_not_found(name)
        return self._cipher_for(False).decrypt(self.tenant, name, blob)

    def _list(self) -> builtins.list[SecretInfo]:
        from sqlalchemy import select

        from ..store.database import stored_secrets as secrets

        with self.db.read() as conn:
            rows = conn.execute(
                select(secrets.c.name, secrets.c.created_at, secrets.c.updated_at)
                .where(secrets.c.tenant_id == self.tenant)
                .order_by(secrets.c.name)
            ).all()
        return [SecretInfo(name=n, created_at=_ts(c), updated_at=_ts(u)) for n, c, u in rows]

    def _delete(self, name: str) -> bool:
        from sqlalchemy import delete

        from ..store.database import stored_secrets as secrets

        with self.db.write() as conn:
            result = conn.execute(
                delete(secrets).where(secrets.c.tenant_id == self.tenant, secrets.c.name == name)
            )
        return bool(result.rowcount)

    async def set(self, name: str, value: str) -> None:
        await self._writer(self._set, check_name(name), check_value(value))

    async def get(self, name: str) -> str:
        return await asyncio.to_thread(self._get, check_name(name))

    async def list(self) -> builtins.list[SecretInfo]:
        return await asyncio.to_thread(self._list)

    async def delete(self, name: str) -> bool:
        deleted: bool = await self._writer(self._delete, check_name(name))
        return deleted


def secret_store(home: Path | None = None) -> LocalSecrets:
    """The embedded store: ``<home>/secrets.db``, ``home`` defaulting to the state folder
    (``SANDLOT_HOME``, see :func:`sandlot.store.default_home`)."""
    if home is None:
        from ..store import default_home

        home = default_home()
    return LocalSecrets(home)


__all__ = [
    "LOCAL_TENANT",
    "MAX_VALUE_BYTES",
    "DatabaseSecrets",
    "LocalSecrets",
    "SecretInfo",
    "SecretStore",
    "check_name",
    "check_value",
    "secret_store",
]
