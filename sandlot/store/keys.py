"""API keys and the tenants they belong to, in the server/session database.

Used by a server (authentication, ``sandlot server keys``) and by embedded durable sessions,
which only make sure their one tenant, ``local``, exists.

A token reads ``sl_<key id>_<secret>``: the key id (12 hex characters) finds the row, and
the whole token's SHA-256 is compared with the stored one. The secret is 32 random bytes, so
a fast hash is the right one: there is nothing to brute-force that a slow hash (bcrypt,
scrypt) would protect, and authentication stays a microsecond on every request.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidArgumentError
from .database import Database, api_keys, insert_new, tenants, ts, ts_or_none

TOKEN = re.compile(r"sl_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
LAST_USED_EVERY = 60.0  # seconds between last_used_at updates of one key


LOCAL_TENANT = "local"  # the tenant of every caller while a loopback server has no keys


class ApiKey(BaseModel):
    id: str
    tenant: str
    name: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class NewKey(BaseModel):
    key: ApiKey
    token: str  # the secret: shown once, never stored


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant=row.tenant_id,
        name=row.name,
        admin=bool(row.admin),
        created_at=ts(row.created_at),
        revoked_at=ts_or_none(row.revoked_at),
        last_used_at=ts_or_none(row.last_used_at),
    )


def _check_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= 64
        or not name.isprintable()
        or not name.strip()
    ):
        raise InvalidArgumentError(
            f"a key name is 1 to 64 printable characters, not {name!r}", name=str(name)[:100]
        )
    return name


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.tenant_id,
    api_keys.c.name,
    api_keys.c.admin,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
    api_keys.c.last_used_at,
)


class Keys:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, tenant: str | None = None, admin: bool = False) -> NewKey:
        """A new key. Without ``tenant``, for a new tenant (``t-`` + 8 hex characters) named
        after the key; a tenant given must exist."""
        _check_name(name)
        for _attempt in range(5):  # ids are random: retry the (unlikely) collision
            key_id = secrets.token_hex(6)
            token = f"sl_{key_id}_{secrets.token_urlsafe(32)}"
            now = time.time()
            try:
                with self.db.write() as conn:
                    if tenant is None:
                        tenant_id = "t-" + secrets.token_hex(4)
                        conn.execute(
                            insert(tenants).values(id=tenant_id, name=name, created_at=now)
                        )
                    else:
                        tenant_id = tenant
                        if not conn.execute(
                            select(exists().where(tenants.c.id == tenant))
                        ).scalar():
                            raise InvalidArgumentError(f"no tenant {tenant!r}", tenant=str(tenant))
                    conn.execute(
                        insert(api_keys).values(
                            id=key_id,
                            tenant_id=tenant_id,
                            name=name,
                            secret_hash=_hash(token),
                            admin=bool(admin),
                            created_at=now,
                        )
                    )
            except IntegrityError:
                continue
            key = ApiKey(
                id=key_id, tenant=tenant_id, name=name, admin=bool(admin), created_at=ts(now)
            )
            return NewKey(key=key, token=token)
        raise RuntimeError("could not find a free key id")  # pragma: no cover

    def ensure_tenant(self, tenant_id: str, name: str | None = None) -> None:
        """Create a tenant unless it exists (named ``name``, else its id)."""
        if not isinstance(tenant_id, str) or not 1 <= len(tenant_id) <= 64:
            raise InvalidArgumentError(f"not a tenant id: {tenant_id!r}")
        row = {"id": tenant_id, "name": name or tenant_id, "created_at": time.time()}
        with self.db.write() as conn:
            conn.execute(insert_new(self.db, tenants, row))

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key this token belongs to, else None (malformed, unknown, wrong secret
        or revoked)."""
        match = TOKEN.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            return None
        key_id = match.group(1)
        with self.db.read() as conn:
            row = conn.execute(
                select(*_COLUMNS, api_keys.c.secret_hash).where(api_keys.c.id == key_id)
            ).one_or_none()
        if row is None or not hmac.compare_digest(row.secret_hash, _hash(token)):
            return None
        if row.revoked_at is not None:
            return None
        key = _key(row)
        now = time.time()
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
            with self.db.write() as conn:
                conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == key_id)
                    .where(
                        (api_keys.c.last_used_at.is_(None))
                        | (api_keys.c.last_used_at <= now - LAST_USED_EVERY)
                    )
                    .values(last_used_at=now)
                )
            key.last_used_at = ts(now)
        return key

    def list(
        self, tenant: str | None = None, include_revoked: bool = False
    ) -> builtins.list[ApiKey]:
        query = select(*_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant_id == tenant)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.db.read() as conn:
            return [_key(row) for row in conn.execute(query)]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key at once. False if there is no such key or it was already revoked."""
        with self.db.write() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return result.rowcount == 1

    def any_active(self) -> bool:
        with self.db.read() as conn:
            return bool(
                conn.execute(select(exists().where(api_keys.c.revoked_at.is_(None)))).scalar()
            )

    def tenants(self) -> builtins.list[str]:
        with self.db.read() as conn:
            return [r[0] for r in conn.execute(select(tenants.c.id).order_by(tenants.c.id))]
