"""Records in the server/session database: sessions, the sandboxes they own, executions,
idempotent answers.

Used by a server and by embedded durable sessions (:mod:`sandlot.manager.sessions`). The
sandboxes here are ownership records (which tenant, which session, when it expires, when it
ended), kept after the sandbox is gone. The host-local registry of live sandboxes is
:mod:`sandlot.store.registry`.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidArgumentError, NotFoundError
from .database import (
    Database,
    epoch,
    executions,
    idempotency,
    insert_new,
    sandboxes,
    sessions,
    tenants,
    ts,
    ts_or_none,
)


def _now() -> datetime:
    return datetime.now(UTC)


class SessionRecord(BaseModel):
    id: str
    tenant: str
    metadata: dict[str, str] = Field(default_factory=dict)
    status: str = "active"  # active | ended
    last_seq: int = 0
    sandbox_id: str | None = None
    created_at: datetime
    updated_at: datetime
    # Where a durable session keeps its workspace ("local", "s3://bucket/prefix"); None: a
    # sandbox's own session, which ends with it.
    workspace: str | None = None
    idle_timeout: float | None = None
    checkpoint_every: float | None = None
    delete_after: datetime | None = None
    last_active_at: datetime | None = None
    checkpoint: int | None = None  # the latest checkpoint's number
    checkpointed_at: datetime | None = None
    lock_holder: str | None = None
    lock_since: datetime | None = None
    lock_execution: str | None = None
    volumes: list[dict[str, str]] = Field(default_factory=list)  # mounted by its sandboxes


class SandboxRecord(BaseModel):
    id: str
    tenant: str
    session_id: str
    provider: str
    metadata: dict[str, str] = Field(default_factory=dict)
    state: str = "running"  # running | ended
    created_at: datetime = Field(default_factory=_now)
    expires_at: datetime
    ended_at: datetime | None = None


class ExecutionRecord(BaseModel):
    id: str
    session_id: str
    sandbox_id: str
    kind: str  # command | code
    state: str = "running"  # running | ended
    pid: int | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    created_at: datetime = Field(default_factory=_now)
    ended_at: datetime | None = None
    outcome: dict[str, Any] | None = None


class StoredAnswer(BaseModel):
    method: str
    path: str
    body_hash: str
    status: int | None = None  # None: the first attempt is still running
    content_type: str | None = None
    body: bytes | None = None


def _session(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        tenant=row.tenant_id,
        metadata=json.loads(row.metadata),
        status=row.status,
        last_seq=row.last_seq,
        sandbox_id=row.sandbox_id,
        created_at=ts(row.created_at),
        updated_at=ts(row.updated_at),
        workspace=row.workspace,
        idle_timeout=row.idle_timeout,
        checkpoint_every=row.checkpoint_every,
        delete_after=ts_or_none(row.delete_after),
        last_active_at=ts_or_none(row.last_active_at),
        checkpoint=row.checkpoint,
        checkpointed_at=ts_or_none(row.checkpointed_at),
        lock_holder=row.lock_holder,
        lock_since=ts_or_none(row.lock_since),
        lock_execution=row.lock_execution,
        volumes=json.loads(row.volumes) if row.volumes else [],
    )


def _sandbox(row: Any) -> SandboxRecord:
    return SandboxRecord(
        id=row.id,
        tenant=row.tenant_id,
        session_id=row.session_id,
        provider=row.provider,
        metadata=json.loads(row.metadata),
        state=row.state,
        created_at=ts(row.created_at),
        expires_at=ts(row.expires_at),
        ended_at=ts_or_none(row.ended_at),
    )


def _execution(row: Any) -> ExecutionRecord:
    return ExecutionRecord(
        id=row.id,
        session_id=row.session_id,
        sandbox_id=row.sandbox_id,
        kind=row.kind,
        state=row.state,
        pid=row.pid,
        first_seq=row.first_seq,
        last_seq=row.last_seq,
        created_at=ts(row.created_at),
        ended_at=ts_or_none(row.ended_at),
        outcome=None if row.outcome is None else json.loads(row.outcome),
    )


def _answer(row: Any) -> StoredAnswer:
    return StoredAnswer(
        method=row.method,
        path=row.path,
        body_hash=row.body_hash,
        status=row.status,
        content_type=row.content_type,
        body=None if row.body is None else bytes(row.body),
    )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidArgumentError(
            "an idempotency key is 1 to 255 printable characters", key=str(key)[:100]
        )


class Records:
    def __init__(self, db: Database) -> None:
        self.db = db

    # sessions

    def create_session(
        self, tenant: str, metadata: dict[str, str] | None = None, **settings: Any
    ) -> SessionRecord:
        """A new, active session (``ses-`` + 12 hex characters) with an empty log.
        ``settings``: the durable session's columns (workspace, idle_timeout,
        checkpoint_every, delete_after as epoch seconds)."""
        now = time.time()
        meta = dict(metadata or {})
        with self.db.write() as conn:
            if not conn.execute(select(exists().where(tenants.c.id == tenant))).scalar():
                raise InvalidArgumentError(f"no tenant {tenant!r}", tenant=str(tenant))
            session_id = "ses-" + secrets.token_hex(6)
            conn.execute(
                insert(sessions).values(
                    id=session_id,
                    tenant_id=tenant,
                    metadata=json.dumps(meta),
                    status="active",
                    last_seq=0,
                    created_at=now,
                    updated_at=now,
                    last_active_at=now,
                    **settings,
                )
            )
            row = conn.execute(select(sessions).where(sessions.c.id == session_id)).one()
        return _session(row)

    def get_session(self, session_id: str, tenant: str | None = None) -> SessionRecord | None:
        """The session, or None; with ``tenant``, only if it is that tenant's."""
        query = select(sessions).where(sessions.c.id == session_id)
        if tenant is not None:
            query = query.where(sessions.c.tenant_id == tenant)
        with self.db.read() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _session(row)

    def set_session_sandbox(self, session_id: str, sandbox_id: str | None) -> None:
        self._update_one(
            sessions,
            session_id,
            "session",
            sandbox_id=sandbox_id,
            updated_at=time.time(),
        )

    def end_session(self, session_id: str) -> bool:
        """Mark a session ended (its events may then be pruned). False if unknown or already
        ended."""
        with self.db.write() as conn:
            result = conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.status != "ended")
                .values(status="ended", updated_at=time.time())
            )
        return result.rowcount == 1

    # sandboxes (the server's ownership records)

    def add_sandbox(self, rec: SandboxRecord) -> None:
        """Record a sandbox. InvalidArgumentError if its id is taken or its session or
        tenant is unknown."""
        try:
            with self.db.write() as conn:
                conn.execute(
                    insert(sandboxes).values(
                        id=rec.id,
                        tenant_id=rec.tenant,
                        session_id=rec.session_id,
                        provider=rec.provider,
                        metadata=json.dumps(rec.metadata),
                        state=rec.state,
                        created_at=epoch(rec.created_at),
                        expires_at=epoch(rec.expires_at),
                        ended_at=None if rec.ended_at is None else epoch(rec.ended_at),
                    )
                )
        except IntegrityError:
            raise InvalidArgumentError(
                f"cannot record sandbox {rec.id!r}: the id is taken, or session "
                f"{rec.session_id!r} or tenant {rec.tenant!r} does not exist",
                sandbox_id=rec.id,
            ) from None

    def get_sandbox(self, sandbox_id: str, tenant: str | None = None) -> SandboxRecord | None:
        query = select(sandboxes).where(sandboxes.c.id == sandbox_id)
        if tenant is not None:
            query = query.where(sandboxes.c.tenant_id == tenant)
        with self.db.read() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _sandbox(row)

    def list_sandboxes(
        self,
        tenant: str | None = None,
        metadata: dict[str, str] | None = None,
        state: str | None = "running",
    ) -> list[SandboxRecord]:
        """Sandboxes, oldest first: a tenant's or all, in one state or any (``state=None``),
        whose metadata holds every given key and value."""
        query = select(sandboxes).order_by(sandboxes.c.created_at, sandboxes.c.id)
        if state is not None:
            query = query.where(sandboxes.c.state == state)
        if tenant is not None:
            query = query.where(sandboxes.c.tenant_id == tenant)
        with self.db.read() as conn:
            found = [_sandbox(row) for row in conn.execute(query)]
        if metadata:
            wanted = metadata.items()
            found = [rec for rec in found if wanted <= rec.metadata.items()]
        return found

    def set_sandbox_expiry(self, sandbox_id: str, expires_at: datetime) -> None:
        self._update_one(sandboxes, sandbox_id, "sandbox", expires_at=epoch(expires_at))

    def end_sandbox(self, sandbox_id: str) -> bool:
        """Mark a sandbox ended and detach it from any session pointing at it. False if
        unknown or already ended."""
        now = time.time()
        with self.db.write() as conn:
            result = conn.execute(
                update(sandboxes)
                .where(sandboxes.c.id == sandbox_id, sandboxes.c.state != "ended")
                .values(state="ended", ended_at=now)
            )
            if result.rowcount != 1:
                return False
            conn.execute(
                update(sessions)
                .where(sessions.c.sandbox_id == sandbox_id)
                .values(sandbox_id=None, updated_at=now)
            )
        return True

    def count_sandboxes_by_state(self) -> dict[str, int]:
        query = select(sandboxes.c.state, func.count()).group_by(sandboxes.c.state)
        with self.db.read() as conn:
            return {state: int(n) for state, n in conn.execute(query)}

    # executions

    def add_execution(self, rec: ExecutionRecord, conn: Connection | None = None) -> None:
        """Record an execution (in ``conn``'s transaction when given)."""
        if conn is None:
            with self.db.write() as own:
                self.add_execution(rec, own)
            return
        try:
            conn.execute(
                insert(executions).values(
                    id=rec.id,
                    session_id=rec.session_id,
                    sandbox_id=rec.sandbox_id,
                    kind=rec.kind,
                    state=rec.state,
                    pid=rec.pid,
                    first_seq=rec.first_seq,
                    last_seq=rec.last_seq,
                    created_at=epoch(rec.created_at),
                    ended_at=None if rec.ended_at is None else epoch(rec.ended_at),
                    outcome=None if rec.outcome is None else json.dumps(rec.outcome),
                )
            )
        except IntegrityError:
            raise InvalidArgumentError(
                f"execution {rec.id!r} is already recorded", execution_id=rec.id
            ) from None

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(executions).where(executions.c.id == execution_id)
            ).one_or_none()
        return None if row is None else _execution(row)

    def resume_places(self, session_id: str) -> dict[str, list[Any]]:
        """Where the session's running commands stand in their agents' output logs, by
        execution (``sessions.resume``, written with their output; see
        :mod:`sandlot.transcript.recorder`)."""
        with self.db.read() as conn:
            value = conn.execute(
                select(sessions.c.resume).where(sessions.c.id == session_id)
            ).scalar_one_or_none()
        try:
            found = json.loads(value) if value else {}
        except ValueError:
            found = {}
        if not isinstance(found, dict):
            return {}
        return {k: v for k, v in found.items() if isinstance(v, list)}

    def set_execution_pid(self, execution_id: str, pid: int) -> None:
        self._update_one(executions, execution_id, "execution", pid=pid)

    def end_execution(
        self,
        execution_id: str,
        outcome: dict[str, Any],
        last_seq: int | None,
        conn: Connection | None = None,
    ) -> None:
        """Mark an execution ended (in ``conn``'s transaction when given)."""
        values = {
            "state": "ended",
            "ended_at": time.time(),
            "outcome": json.dumps(outcome),
            "last_seq": last_seq,
        }
        if conn is None:
            self._update_one(executions, execution_id, "execution", **values)
            return
        result = conn.execute(
            update(executions).where(executions.c.id == execution_id).values(**values)
        )
        if result.rowcount != 1:
            raise NotFoundError(f"no execution {execution_id!r}", id=execution_id)

    def running_executions(self, sandbox_id: str | None = None) -> list[ExecutionRecord]:
        query = (
            select(executions)
            .where(executions.c.state == "running")
            .order_by(executions.c.created_at, executions.c.id)
        )
        if sandbox_id is not None:
            query = query.where(executions.c.sandbox_id == sandbox_id)
        with self.db.read() as conn:
            return [_execution(row) for row in conn.execute(query)]

    # idempotency: one stored answer per (tenant, key)

    def reserve_idempotency(
        self, tenant: str, key: str, method: str, path: str, body_hash: str
    ) -> StoredAnswer | None:
        """Claim a key: None if it is new (a pending row now holds it), else what is stored
        under it (``status`` None: the first attempt is still running). The caller compares
        method, path and body hash to tell a replay from a reuse."""
        _check_key(key)
        row = {
            "tenant_id": tenant,
            "key": key,
            "method": method,
            "path": path,
            "body_hash": body_hash,
            "created_at": time.time(),
        }
        with self.db.write() as conn:
            # ON CONFLICT DO NOTHING: of two concurrent first attempts exactly one inserts
            # (PostgreSQL makes the second wait for the first to commit).
            if conn.execute(insert_new(self.db, idempotency, row)).first() is not None:
                return None
            stored = conn.execute(
                select(idempotency).where(
                    idempotency.c.tenant_id == tenant, idempotency.c.key == key
                )
            ).one()
        return _answer(stored)

    def complete_idempotency(
        self, tenant: str, key: str, status: int, content_type: str, body: bytes
    ) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(idempotency)
                .where(idempotency.c.tenant_id == tenant, idempotency.c.key == key)
                .values(status=status, content_type=content_type, body=bytes(body))
            )

    def release_idempotency(self, tenant: str, key: str) -> None:
        """Drop a pending claim (the first attempt failed before it had an answer), so a
        retry runs again. A completed answer stays."""
        with self.db.write() as conn:
            conn.execute(
                delete(idempotency).where(
                    idempotency.c.tenant_id == tenant,
                    idempotency.c.key == key,
                    idempotency.c.status.is_(None),
                )
            )

    def release_pending_idempotency(self) -> int:
        """Drop every claim still waiting for its answer: after a restart, nobody will give
        one, and a retry must be free to try again."""
        with self.db.write() as conn:
            result = conn.execute(delete(idempotency).where(idempotency.c.status.is_(None)))
        return int(result.rowcount)

    def prune_idempotency(self, older_than: float) -> int:
        """Forget answers (and abandoned claims) made before ``older_than`` (epoch seconds)."""
        with self.db.write() as conn:
            result = conn.execute(delete(idempotency).where(idempotency.c.created_at < older_than))
        return int(result.rowcount)

    def _update_one(self, table: Any, row_id: str, what: str, **values: Any) -> None:
        with self.db.write() as conn:
            result = conn.execute(update(table).where(table.c.id == row_id).values(**values))
        if result.rowcount != 1:
            raise NotFoundError(f"no {what} {row_id!r}", id=row_id)
