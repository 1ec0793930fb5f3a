"""Where secrets are kept: encrypted at rest, listed by name and date only.

One async interface, :class:`SecretStore`; here, two places:

- :class:`LocalSecrets` (embedded mode): the ``secrets`` table of the host registry,
  ``<home>/state.db`` (:mod:`sandlot.store.registry`, mode 0600; before, a file of its own,
  ``secrets.db``, which the registry adopts on first open), for :func:`secret_store`, with the
  key of :mod:`sandlot.secrets.crypto` (``SANDLOT_SECRET_KEY`` or ``<home>/secret.key``);
- :class:`DatabaseSecrets` (server mode): the ``secrets`` table of a server's database
  (:mod:`sandlot.store.database`, SQLite or PostgreSQL), one tenant's rows, with the server's
  key.

The third, a server's ``/v1/secrets`` API seen from a client (what the CLI uses when
``SANDLOT_URL`` is set), is :class:`sandlot.remote.secrets.RemoteSecrets`.

Values are text (stored as UTF-8), at most 64 KiB, without NUL bytes (they end up in
environment variables and headers): :mod:`sandlot.secrets.models`. Every value is encrypted
with its tenant and name bound in (see :mod:`sandlot.secrets.crypto`). No method returns or
logs a value except ``get``.
"""

from __future__ import annotations

import asyncio
import builtins
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
    """The ``secrets`` table of ``<home>/state.db``, the host registry: ciphertexts, for
    embedded use."""

    def __init__(self, home: Path, tenant: str = LOCAL_TENANT) -> None:
        from ..store.registry import FILE

        self.home = Path(home)
        self.path = self.home / FILE
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
        """A connection of its own for one call (calls run in worker threads); the first
        also creates or migrates the registry."""
        from ..store import registry

        if self._ready:
            conn = registry.connect(self.home)
        else:
            conn = registry.open_registry(self.home)
            self._ready = True
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA secure_delete=ON")  # overwrite what is deleted or replaced
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
    """The embedded store: ``<home>/state.db``, ``home`` defaulting to the state folder
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
