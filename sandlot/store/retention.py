"""Retention: what of the event log is dropped, when, and in steps small enough to interleave.

Server mode only (the server's settings say what to keep); embedded sessions keep their logs.

Two rules, both only ever about *ended* sessions (a running session's log, and a durable
session's, which never ends, are never touched):

- **age**: the whole log of a session that ended (saw its last event) before ``older_than``;
- **size**: while a tenant's stored log bytes (``sessions.log_bytes``, compressed sizes,
  its durable sessions' included) are over its cap, its ended sessions' logs, oldest
  first, from their first event on: the cut may fall inside a session's log.

Each :meth:`Retention.step` is one transaction deleting at most :data:`BATCH_ROWS` events or
about :data:`BATCH_BYTES`, so the server's single writer thread runs other writes between
steps. What was dropped is a prefix of the session's log, recorded on its row
(``pruned_seq``, ``pruned_at``, ``pruned_why``); :meth:`EventLog.read
<sandlot.transcript.eventlog.EventLog.read>` answers for it with a ``pruned`` event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, delete, func, select, update

from .database import DROPPABLE, Database, events, sessions

BATCH_ROWS = 500
BATCH_BYTES = 2 * 1024 * 1024  # stored bytes: a step of 10-20 ms on SQLite here
AGE = "retention"
SIZE = "tenant_log_bytes"


@dataclass(frozen=True, slots=True)
class Pruned:
    """One step's work: events of one session up to ``through`` are gone."""

    session_id: str
    why: str
    through: int
    events: int
    bytes: int  # stored bytes


class Retention:
    """Steps through one maintenance pass after another; one writer thread at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Per tenant, the stored bytes still to drop in this pass: measured once a pass (a
        # scan of the sessions), then counted down by each step (an index lookup each).
        self._excess: dict[str, int] | None = None

    def step(self, older_than: float, tenant_log_bytes: int | None = None) -> Pruned | None:
        """Drop one batch of whatever is due first (age before size); None: nothing is, and
        the pass is over (the next one measures the tenants again)."""
        try:
            with self.db.write() as conn:
                due = self._aged(conn, older_than)
                if due is None and tenant_log_bytes is not None:
                    due = self._oversized(conn, tenant_log_bytes)
                if due is None:
                    self._excess = None
                    return None
                session_id, tenant, last_seq, why = due
                pruned = self._drop(conn, session_id, last_seq, why)
        except BaseException:
            self._excess = None  # the pass ends with the failure: the next one measures
            raise
        if why == SIZE and self._excess is not None:
            self._excess[tenant] -= pruned.bytes
        return pruned

    @staticmethod
    def _aged(conn: Connection, older_than: float) -> tuple[str, str, int, str] | None:
        row = conn.execute(
            select(sessions.c.id, sessions.c.tenant_id, sessions.c.last_seq)
            .where(DROPPABLE, sessions.c.updated_at < older_than)
            .order_by(sessions.c.updated_at)
            .limit(1)
        ).first()
        return None if row is None else (row[0], row[1], int(row[2]), AGE)

    def _oversized(self, conn: Connection, cap: int) -> tuple[str, str, int, str] | None:
        if self._excess is None:
            total = func.sum(sessions.c.log_bytes)
            over = select(sessions.c.tenant_id, total).group_by(sessions.c.tenant_id)
            rows = conn.execute(over.having(total > cap)).all()
            self._excess = {tenant: int(size) - cap for tenant, size in rows}
        for tenant, excess in list(self._excess.items()):
            row = None
            if excess > 0:
                row = conn.execute(
                    select(sessions.c.id, sessions.c.last_seq)
                    .where(DROPPABLE, sessions.c.tenant_id == tenant)
                    .order_by(sessions.c.updated_at)
                    .limit(1)
                ).first()
            if row is None:  # under the cap now, or nothing of its is droppable
                del self._excess[tenant]
                continue
            return row[0], tenant, int(row[1]), SIZE
        return None

    @staticmethod
    def _drop(conn: Connection, session_id: str, through: int, why: str) -> Pruned:
        """Delete the session's oldest events, up to ``through`` or one batch's worth."""
        sizes = conn.execute(
            select(events.c.seq, func.length(events.c.data))
            .where(events.c.session_id == session_id, events.c.seq <= through)
            .order_by(events.c.seq)
            .limit(BATCH_ROWS)
        ).all()
        cut, size = _cut(sizes, through)
        deleted = conn.execute(
            delete(events).where(events.c.session_id == session_id, events.c.seq <= cut)
        ).rowcount
        values: dict[str, Any] = {
            # A CASE, not max(): the same SQL on both databases; never below zero.
            "log_bytes": case((sessions.c.log_bytes > size, sessions.c.log_bytes - size), else_=0),
            "pruned_seq": cut,
            "pruned_at": time.time(),
            "pruned_why": why,
        }
        conn.execute(update(sessions).where(sessions.c.id == session_id).values(**values))
        return Pruned(session_id, why, cut, int(deleted), size)


def _cut(sizes: Sequence[Any], through: int) -> tuple[int, int]:
    """Where this batch ends, and the stored bytes up to there: ``through`` if the batch
    reaches it, else the seq where rows or bytes run out."""
    size = 0
    for seq, length in sizes:
        size += int(length or 0)
        if size >= BATCH_BYTES:
            return int(seq), size
    if len(sizes) == BATCH_ROWS:
        return int(sizes[-1][0]), size
    return through, size
