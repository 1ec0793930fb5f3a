"""Each session's ordered event log, with gapless per-session sequence numbers.

An append is one transaction: bump ``sessions.last_seq`` by the batch size (``RETURNING`` the
new value), then insert the batch numbered up to it. The UPDATE locks the session's row
(PostgreSQL) or the database (SQLite, ``BEGIN IMMEDIATE``) until commit, so concurrent
appenders, in this process or another, take turns and every number is used exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, text, update

from ..errors import InvalidArgumentError, NotFoundError
from .database import Database, events, sessions


@dataclass(frozen=True, slots=True)
class Event:
    session_id: str
    seq: int
    execution_id: str | None
    kind: str
    data: bytes
    created_at: float


_INSERT = insert(events)
# PostgreSQL: the UPDATE and the INSERT of an append as one statement (half the time of two
# round trips and an executemany). Nothing is inserted for an unknown session.
_PG_APPEND = text(
    """
    WITH bumped AS (
        UPDATE sessions SET last_seq = last_seq + :n, updated_at = :now
        WHERE id = :session_id
        RETURNING last_seq
    )
    INSERT INTO events (session_id, seq, execution_id, kind, data, created_at)
    SELECT :session_id, bumped.last_seq - :n + item.ord, item.execution_id, item.kind,
           item.data, :now
    FROM bumped, unnest(
        CAST(:execution_ids AS text[]), CAST(:kinds AS text[]), CAST(:datas AS bytea[])
    ) WITH ORDINALITY AS item(execution_id, kind, data, ord)
    RETURNING seq
    """
)


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        session_id: str,
        items: Sequence[tuple[str | None, str, bytes]],
        also: Callable[[Connection, list[Event]], None] | None = None,
    ) -> list[Event]:
        """Append ``(execution_id, kind, data)`` items to a session's log, numbered in order,
        in one transaction. Raises NotFoundError for an unknown session. ``also`` runs in the
        same transaction with the numbered events (records derived from them commit with
        them, or not at all)."""
        if not items:
            return []
        now = time.time()
        batch = [(execution_id, kind, bytes(data)) for execution_id, kind, data in items]
        with self.db.write() as conn:
            if self.db.dialect == "postgresql":
                last = self._append_postgresql(conn, session_id, batch, now)
            else:
                last = self._append_sqlite(conn, session_id, batch, now)
            if last is None:
                raise NotFoundError(f"no session {session_id!r}", session_id=session_id)
            first = last - len(batch) + 1
            out = [
                Event(session_id, first + i, execution_id, kind, data, now)
                for i, (execution_id, kind, data) in enumerate(batch)
            ]
            if also is not None:
                also(conn, out)
        return out

    @staticmethod
    def _append_sqlite(
        conn: Connection, session_id: str, batch: list[tuple[str | None, str, bytes]], now: float
    ) -> int | None:
        last = conn.execute(
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(last_seq=sessions.c.last_seq + len(batch), updated_at=now)
            .returning(sessions.c.last_seq)
        ).scalar_one_or_none()
        if last is None:
            return None
        first = last - len(batch) + 1
        conn.execute(
            _INSERT,
            [
                {
                    "session_id": session_id,
                    "seq": first + i,
                    "execution_id": execution_id,
                    "kind": kind,
                    "data": data,
                    "created_at": now,
                }
                for i, (execution_id, kind, data) in enumerate(batch)
            ],
        )
        return int(last)

    @staticmethod
    def _append_postgresql(
        conn: Connection, session_id: str, batch: list[tuple[str | None, str, bytes]], now: float
    ) -> int | None:
        seqs = conn.execute(
            _PG_APPEND,
            {
                "session_id": session_id,
                "n": len(batch),
                "now": now,
                "execution_ids": [item[0] for item in batch],
                "kinds": [item[1] for item in batch],
                "datas": [item[2] for item in batch],
            },
        ).all()
        return max(row[0] for row in seqs) if seqs else None

    def read(
        self,
        session_id: str,
        after: int = 0,
        *,
        execution_id: str | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Events with ``seq > after``, ascending, at most ``limit``; only one execution's if
        ``execution_id`` is given. An unknown session reads as empty."""
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, not {limit}")
        query = select(
            events.c.session_id,
            events.c.seq,
            events.c.execution_id,
            events.c.kind,
            events.c.data,
            events.c.created_at,
        ).where(events.c.session_id == session_id, events.c.seq > after)
        if execution_id is not None:
            query = query.where(events.c.execution_id == execution_id)
        query = query.order_by(events.c.seq).limit(limit)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [Event(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def last_seq(self, session_id: str) -> int:
        """The newest sequence number in a session's log (0: none yet)."""
        with self.db.read() as conn:
            last = conn.execute(
                select(sessions.c.last_seq).where(sessions.c.id == session_id)
            ).scalar_one_or_none()
        if last is None:
            raise NotFoundError(f"no session {session_id!r}", session_id=session_id)
        return int(last)

    def prune(self, older_than: float) -> int:
        """Delete the events older than ``older_than`` (epoch seconds) of ended sessions.
        Returns how many were deleted. A session's ``last_seq`` is kept, so numbering never
        restarts."""
        ended = select(sessions.c.id).where(sessions.c.status == "ended")
        with self.db.write() as conn:
            result = conn.execute(
                delete(events).where(
                    events.c.created_at < older_than, events.c.session_id.in_(ended)
                )
            )
        return int(result.rowcount)
