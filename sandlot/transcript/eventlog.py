"""Each session's ordered event log, with gapless per-session sequence numbers.

An append is one transaction: bump ``sessions.last_seq`` by the batch size (``RETURNING`` the
new value), then insert the batch numbered up to it. The UPDATE locks the session's row
(PostgreSQL) or the database (SQLite, ``BEGIN IMMEDIATE``) until commit, so concurrent
appenders, in this process or another, take turns and every number is used exactly once.
The same UPDATE adds the batch's stored bytes to ``sessions.log_bytes`` (what retention
by size counts); big output is stored compressed (:mod:`sandlot.store.encoding`).

Retention (:mod:`sandlot.store.retention`) drops a prefix of an ended session's log and
records the cut in ``sessions.pruned_seq``. A read that reaches back into the dropped part
gets one ``pruned`` event in its place, numbered ``pruned_seq``::

    {"event": "pruned", "through": 812, "why": "retention", "at": 1765000000.0}

``why`` is ``retention`` (the session ended longer ago than the server keeps logs) or
``tenant_log_bytes`` (its tenant's logs were over their size cap).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, text, update

from ..errors import InvalidArgumentError, NotFoundError
from ..store.database import Database, events, sessions
from ..store.encoding import pack, unpack


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
_PG_SQL = """
    WITH bumped AS (
        UPDATE sessions
        SET last_seq = last_seq + :n, log_bytes = log_bytes + :stored, updated_at = :now
        WHERE id = :session_id
        RETURNING last_seq
    )
    INSERT INTO events (session_id, seq, execution_id, kind, data, encoding, created_at)
    SELECT :session_id, bumped.last_seq - :n + item.ord, item.execution_id, item.kind,
           item.data, item.encoding, :now
    FROM bumped, unnest(
        CAST(:execution_ids AS text[]), CAST(:kinds AS text[]), CAST(:datas AS bytea[]),
        CAST(:encodings AS smallint[])
    ) WITH ORDINALITY AS item(execution_id, kind, data, encoding, ord)
    RETURNING seq
    """
_PG_APPEND = text(_PG_SQL)
_PG_APPEND_RESUME = text(
    _PG_SQL.replace("updated_at = :now", "updated_at = :now, resume = :resume")
)
Item = tuple[str | None, str, bytes]
Stored = list[tuple[bytes, int]]  # each item's stored bytes and encoding


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        session_id: str,
        items: Sequence[tuple[str | None, str, bytes]],
        also: Callable[[Connection, list[Event]], None] | None = None,
        resume: str | None = None,
    ) -> list[Event]:
        """Append ``(execution_id, kind, data)`` items to a session's log, numbered in order,
        in one transaction. Raises NotFoundError for an unknown session. ``also`` runs in the
        same transaction with the numbered events (records derived from them commit with
        them, or not at all). ``resume``: the session's new ``resume`` value, stored by the
        same UPDATE (:meth:`sandlot.transcript.logwriter.LogWriter.append`)."""
        if not items:
            return []
        now = time.time()
        batch = [(execution_id, kind, bytes(data)) for execution_id, kind, data in items]
        stored = [pack(kind, data) for _, kind, data in batch]
        with self.db.write() as conn:
            if self.db.dialect == "postgresql":
                last = self._append_postgresql(conn, session_id, batch, stored, now, resume)
            else:
                last = self._append_sqlite(conn, session_id, batch, stored, now, resume)
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
        conn: Connection,
        session_id: str,
        batch: list[Item],
        stored: Stored,
        now: float,
        resume: str | None = None,
    ) -> int | None:
        also = {} if resume is None else {"resume": resume}
        last = conn.execute(
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(
                last_seq=sessions.c.last_seq + len(batch),
                log_bytes=sessions.c.log_bytes + sum(len(data) for data, _ in stored),
                updated_at=now,
                **also,
            )
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
                    "encoding": encoding,
                    "created_at": now,
                }
                for i, ((execution_id, kind, _), (data, encoding)) in enumerate(
                    zip(batch, stored, strict=True)
                )
            ],
        )
        return int(last)

    @staticmethod
    def _append_postgresql(
        conn: Connection,
        session_id: str,
        batch: list[Item],
        stored: Stored,
        now: float,
        resume: str | None = None,
    ) -> int | None:
        also = {} if resume is None else {"resume": resume}
        seqs = conn.execute(
            _PG_APPEND if resume is None else _PG_APPEND_RESUME,
            {
                **also,
                "session_id": session_id,
                "n": len(batch),
                "stored": sum(len(data) for data, _ in stored),
                "now": now,
                "execution_ids": [item[0] for item in batch],
                "kinds": [item[1] for item in batch],
                "datas": [data for data, _ in stored],
                "encodings": [encoding for _, encoding in stored],
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
        ``execution_id`` is given. An unknown session reads as empty. Where retention
        dropped events this read reaches back to, a ``pruned`` event comes first (above)."""
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, not {limit}")
        query = select(
            events.c.session_id,
            events.c.seq,
            events.c.execution_id,
            events.c.kind,
            events.c.data,
            events.c.created_at,
            events.c.encoding,
        ).where(events.c.session_id == session_id, events.c.seq > after)
        if execution_id is not None:
            query = query.where(events.c.execution_id == execution_id)
        query = query.order_by(events.c.seq).limit(limit)
        cut = select(sessions.c.pruned_seq, sessions.c.pruned_why, sessions.c.pruned_at).where(
            sessions.c.id == session_id, sessions.c.pruned_seq > after
        )
        with self.db.read() as conn:  # one snapshot: the cut and the events agree
            rows = conn.execute(query).all()
            pruned = conn.execute(cut).one_or_none()
        out = [Event(r[0], r[1], r[2], r[3], unpack(bytes(r[4]), r[6]), r[5]) for r in rows]
        # An execution's first event is its "started": if that is still here, nothing of
        # this execution was dropped.
        if pruned is not None and not (execution_id and out and out[0].kind == "started"):
            out = [_pruned_event(session_id, execution_id, *pruned), *out[: limit - 1]]
        return out

    def last_seq(self, session_id: str) -> int:
        """The newest sequence number in a session's log (0: none yet)."""
        with self.db.read() as conn:
            last = conn.execute(
                select(sessions.c.last_seq).where(sessions.c.id == session_id)
            ).scalar_one_or_none()
        if last is None:
            raise NotFoundError(f"no session {session_id!r}", session_id=session_id)
        return int(last)


def _pruned_event(
    session_id: str, execution_id: str | None, through: int, why: str | None, at: float | None
) -> Event:
    """What a reader gets in place of the events retention dropped."""
    data: dict[str, Any] = {"event": "pruned", "through": through, "why": why, "at": at}
    body = json.dumps(data, separators=(",", ":")).encode()
    return Event(session_id, through, execution_id, "pruned", body, at or 0.0)
