"""Durable sessions in the server/session database: listing, the run lock, leases, and what
the reaper looks for. Used by a server and by embedded durable sessions alike.

Every change is one short transaction whose ``WHERE`` clause carries its precondition (the
lock is free, the lease is still this holder's), so processes sharing the database never
need to coordinate otherwise: of two callers racing for a lock, exactly one row update
succeeds.
"""

from __future__ import annotations

import builtins
import secrets
import time
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, delete, insert, or_, select, update

from ..errors import SessionBusyError, SessionNotFoundError
from .database import Database, events, executions, leases, sandboxes, sessions, ts, ts_or_none
from .records import SessionRecord, _session


class LeaseRecord(BaseModel):
    id: str
    session_id: str
    sandbox_id: str
    holder: str
    spec_key: str
    ttl: float
    created_at: float
    expires_at: float
    released_at: float | None = None


class LockState(BaseModel):
    """Who holds a session's run lock (all None: nobody)."""

    holder: str | None = None
    since: float | None = None
    execution: str | None = None
    sandbox: str | None = None
    pid: int | None = None


def _lease(row: Any) -> LeaseRecord:
    return LeaseRecord.model_validate(row._asdict())


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- sessions ---------------------------------------------------------------------------

    def get(self, session_id: str, tenant: str | None = None) -> SessionRecord:
        query = select(sessions).where(sessions.c.id == session_id)
        if tenant is not None:
            query = query.where(sessions.c.tenant_id == tenant)
        with self.db.read() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            raise SessionNotFoundError(f"no session {session_id!r}", id=session_id)
        return _session(row)

    def list(
        self, tenant: str, metadata: dict[str, str] | None = None, limit: int = 1000
    ) -> builtins.list[SessionRecord]:
        """A tenant's sessions, newest first, whose metadata holds every given pair."""
        query = (
            select(sessions)
            .where(sessions.c.tenant_id == tenant)
            .order_by(sessions.c.created_at.desc(), sessions.c.id)
        )
        with self.db.read() as conn:
            found = [_session(row) for row in conn.execute(query)]
        if metadata:
            found = [s for s in found if metadata.items() <= s.metadata.items()]
        return found[:limit]

    def sandboxes(self, session_id: str) -> builtins.list[dict[str, Any]]:
        """Every sandbox the session has had, oldest first."""
        query = (
            select(sandboxes.c.id, sandboxes.c.provider, sandboxes.c.state,
                   sandboxes.c.created_at, sandboxes.c.ended_at)
            .where(sandboxes.c.session_id == session_id)
            .order_by(sandboxes.c.created_at, sandboxes.c.id)
        )  # fmt: skip
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [
            {"id": r[0], "provider": r[1], "state": r[2], "created_at": ts(r[3]),
             "ended_at": ts_or_none(r[4])}
            for r in rows
        ]  # fmt: skip

    def set_sandbox(self, session_id: str, sandbox_id: str | None, *, only_if: str | None) -> bool:
        """Point the session at its sandbox (None: it has none). ``only_if``: only while it
        still points at that one (an ending sandbox never clears its successor)."""
        where = [sessions.c.id == session_id]
        if only_if is not None:
            where.append(sessions.c.sandbox_id == only_if)
        now = time.time()
        with self.db.write() as conn:
            result = conn.execute(
                update(sessions)
                .where(*where)
                .values(sandbox_id=sandbox_id, updated_at=now, last_active_at=now)
            )
        return result.rowcount == 1

    def set_checkpoint(self, session_id: str, number: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id)
                .values(checkpoint=number, checkpointed_at=time.time())
            )

    def delete(self, session_id: str) -> None:
        """The session's rows: its log, executions, sandbox records, leases and itself."""
        with self.db.write() as conn:
            conn.execute(delete(events).where(events.c.session_id == session_id))
            conn.execute(delete(executions).where(executions.c.session_id == session_id))
            conn.execute(delete(leases).where(leases.c.session_id == session_id))
            conn.execute(delete(sandboxes).where(sandboxes.c.session_id == session_id))
            conn.execute(delete(sessions).where(sessions.c.id == session_id))

    # -- the run lock -----------------------------------------------------------------------

    def lock(self, session_id: str, holder: str, execution: str, sandbox: str) -> None:
        """Take the session's run lock, or raise SessionBusyError naming who has it."""
        now = time.time()
        with self.db.write() as conn:
            result = conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.lock_holder.is_(None))
                .values(
                    lock_holder=holder,
                    lock_since=now,
                    lock_execution=execution,
                    lock_sandbox=sandbox,
                    lock_pid=None,
                    last_active_at=now,
                )
            )
        if result.rowcount != 1:
            state = self.lock_state(session_id)  # raises for an unknown session
            since = time.strftime("%H:%M:%S", time.gmtime(state.since or 0))
            raise SessionBusyError(
                f"session {session_id} is busy: {state.holder} has run {state.execution} "
                f"since {since} UTC (pass force=True to cancel it and take over)",
                id=session_id,
                holder=state.holder,
                since=state.since,
                execution=state.execution,
            )

    def lock_state(self, session_id: str) -> LockState:
        query = select(
            sessions.c.lock_holder, sessions.c.lock_since, sessions.c.lock_execution,
            sessions.c.lock_sandbox, sessions.c.lock_pid,
        ).where(sessions.c.id == session_id)  # fmt: skip
        with self.db.read() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            raise SessionNotFoundError(f"no session {session_id!r}", id=session_id)
        return LockState(holder=row[0], since=row[1], execution=row[2], sandbox=row[3], pid=row[4])

    def set_lock_pid(self, session_id: str, execution: str, pid: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.lock_execution == execution)
                .values(lock_pid=pid)
            )

    def unlock(self, session_id: str, execution: str | None = None) -> bool:
        """Release the lock (only if ``execution`` still holds it, when given). False if it
        was no longer held by it: another caller took it over."""
        where = [sessions.c.id == session_id]
        where.append(
            sessions.c.lock_execution == execution
            if execution is not None
            else sessions.c.lock_holder.is_not(None)
        )
        with self.db.write() as conn:
            result = conn.execute(
                update(sessions)
                .where(*where)
                .values(
                    lock_holder=None,
                    lock_since=None,
                    lock_execution=None,
                    lock_sandbox=None,
                    lock_pid=None,
                    last_active_at=time.time(),
                )
            )
        return result.rowcount == 1

    # -- leases -----------------------------------------------------------------------------

    def add_lease(
        self, session_id: str, sandbox_id: str, holder: str, spec_key: str, ttl: float
    ) -> LeaseRecord:
        now = time.time()
        lease = LeaseRecord(
            id="ls-" + secrets.token_hex(6),
            session_id=session_id,
            sandbox_id=sandbox_id,
            holder=holder,
            spec_key=spec_key,
            ttl=ttl,
            created_at=now,
            expires_at=now + ttl,
        )
        with self.db.write() as conn:
            conn.execute(insert(leases).values(**lease.model_dump()))
        return lease

    def heartbeat(self, lease_id: str) -> bool:
        """Extend a live lease by its ttl. False if it expired or was released (its sandbox
        may be gone: the holder must attach again)."""
        now = time.time()
        with self.db.write() as conn:
            result = conn.execute(
                update(leases)
                .where(
                    leases.c.id == lease_id,
                    leases.c.released_at.is_(None),
                    leases.c.expires_at >= now,
                )
                .values(expires_at=now + leases.c.ttl)
            )
        return result.rowcount == 1

    def release_lease(self, lease_id: str) -> bool:
        with self.db.write() as conn:
            result = conn.execute(
                update(leases)
                .where(leases.c.id == lease_id, leases.c.released_at.is_(None))
                .values(released_at=time.time())
            )
        return result.rowcount == 1

    def live_leases(self, session_id: str) -> builtins.list[LeaseRecord]:
        now = time.time()
        query = select(leases).where(
            leases.c.session_id == session_id,
            leases.c.released_at.is_(None),
            leases.c.expires_at >= now,
        )
        with self.db.read() as conn:
            return [_lease(row) for row in conn.execute(query)]

    def last_lease(self, session_id: str, sandbox_id: str) -> LeaseRecord | None:
        query = (
            select(leases)
            .where(leases.c.session_id == session_id, leases.c.sandbox_id == sandbox_id)
            .order_by(leases.c.created_at.desc())
            .limit(1)
        )
        with self.db.read() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _lease(row)

    def expire_leases(self) -> builtins.list[LeaseRecord]:
        """Mark every lease whose holder stopped heartbeating released; return them."""
        now = time.time()
        with self.db.write() as conn:
            rows = conn.execute(
                update(leases)
                .where(leases.c.released_at.is_(None), leases.c.expires_at < now)
                .values(released_at=now)
                .returning(*leases.c)
            ).all()
        return [_lease(row) for row in rows]

    # -- what the reaper looks at -------------------------------------------------------------

    def due(self, tenant: str | None = None) -> builtins.list[SessionRecord]:
        """Sessions with something timed to do: a sandbox attached (idle timeout, periodic
        checkpoint), or a time to be deleted at."""
        query = select(sessions).where(
            or_(
                sessions.c.sandbox_id.is_not(None),
                and_(sessions.c.delete_after.is_not(None), sessions.c.delete_after < time.time()),
            )
        )
        if tenant is not None:
            query = query.where(sessions.c.tenant_id == tenant)
        with self.db.read() as conn:
            return [_session(row) for row in conn.execute(query)]
