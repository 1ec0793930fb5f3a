"""The event log's hot path: appending a batch and the execution records it implies.

Every command writes at least two batches (its start and its end), on the path of its round
trip, so the cost of one append matters: through SQLAlchemy's Core it is about 0.6 ms here,
through the SQLite driver directly 0.04 ms. On SQLite this writer therefore holds one raw
connection, used only from the hub's single database-writer thread, and speaks plain SQL
against the tables of :mod:`sandlot.store.database` (their columns are named once, below).
On PostgreSQL, where the network round trip dominates, it goes through
:meth:`EventLog.append <sandlot.transcript.eventlog.EventLog.append>` and :class:`Records`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from ..errors import NotFoundError
from ..store.database import Database
from ..store.encoding import pack
from ..store.records import ExecutionRecord, Records, epoch
from .eventlog import Event, EventLog

TERMINAL = frozenset({"exit", "error"})

_BUMP = (
    "UPDATE sessions SET last_seq = last_seq + ?, log_bytes = log_bytes + ?, updated_at = ?"
    " WHERE id = ? RETURNING last_seq"
)
_EVENT = (
    "INSERT INTO events (session_id, seq, execution_id, kind, data, encoding, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_START = (
    "INSERT INTO executions (id, session_id, sandbox_id, kind, state, pid, created_at)"
    " VALUES (?, ?, ?, ?, 'running', ?, ?)"
)
_RESUME = "UPDATE executions SET resume = ? WHERE id = ? AND state = 'running'"
_END = "UPDATE executions SET state = 'ended', ended_at = ?, outcome = ?, last_seq = ? WHERE id = ?"
Item = tuple[str | None, str, bytes]
Progress = Mapping[str, tuple[int, ...]]  # a command's place in the agent's log, by execution


class LogWriter:
    """Appends batches; not thread-safe: one writer at a time owns it."""

    def __init__(self, db: Database, log: EventLog, records: Records) -> None:
        self.db = db
        self.log = log
        self.records = records
        self._raw: sqlite3.Connection | None = None
        # An SQLite append takes tens of microseconds: cheaper to run on the caller's thread
        # than to hand to another (when no other write is running, see Hub._commit).
        self.inline = db.dialect == "sqlite"

    def append(
        self,
        session_id: str,
        items: Sequence[Item],
        starts: Sequence[ExecutionRecord] = (),
        progress: Progress | None = None,
    ) -> list[Event]:
        """Append the items (numbered in order), insert the started executions' records,
        store where running commands stand in the agent's log (``progress``: what a restart
        resumes from, so it must commit with the output it describes) and end those whose
        exit or error is in the batch: one transaction."""
        if not items:
            return []
        if self.db.dialect != "sqlite":
            return self.log.append(
                session_id, items, lambda conn, out: self._derive(conn, out, starts, progress)
            )
        return self._append_sqlite(session_id, items, starts, progress)

    def _derive(
        self,
        conn: Connection,
        events: list[Event],
        starts: Sequence[ExecutionRecord],
        progress: Progress | None,
    ) -> None:
        for record in starts:
            self.records.add_execution(record, conn)
        for execution_id, place in (progress or {}).items():
            self.records.set_resume(execution_id, json.dumps(place), conn)
        for event in events:
            if event.kind in TERMINAL and event.execution_id is not None:
                self.records.end_execution(event.execution_id, _outcome(event), event.seq, conn)

    def _connection(self) -> sqlite3.Connection:
        if self._raw is None:
            raw = self.db.engine.raw_connection()
            self._raw = raw.driver_connection
            self._pool_entry = raw  # keeps the connection checked out of the pool
        assert self._raw is not None
        return self._raw

    def _append_sqlite(
        self,
        session_id: str,
        items: Sequence[Item],
        starts: Sequence[ExecutionRecord],
        progress: Progress | None,
    ) -> list[Event]:
        db = self._connection()
        stored = [pack(kind, data) for _, kind, data in items]  # before the lock is taken
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            size = sum(len(data) for data, _ in stored)
            row = db.execute(_BUMP, (len(items), size, now, session_id)).fetchone()
            if row is None:
                raise NotFoundError(f"no session {session_id!r}", session_id=session_id)
            first = int(row[0]) - len(items) + 1
            events = [
                Event(session_id, first + i, execution_id, kind, bytes(data), now)
                for i, (execution_id, kind, data) in enumerate(items)
            ]
            db.executemany(
                _EVENT,
                [
                    (session_id, e.seq, e.execution_id, e.kind, data, encoding, now)
                    for e, (data, encoding) in zip(events, stored, strict=True)
                ],
            )
            for record in starts:
                db.execute(
                    _START,
                    (
                        record.id,
                        record.session_id,
                        record.sandbox_id,
                        record.kind,
                        record.pid,
                        epoch(record.created_at),
                    ),
                )
            if progress:
                for execution_id, place in progress.items():
                    db.execute(_RESUME, (json.dumps(place), execution_id))
            for event in events:
                if event.kind in TERMINAL and event.execution_id is not None:
                    outcome = json.dumps(_outcome(event))
                    db.execute(_END, (now, outcome, event.seq, event.execution_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return events

    def close(self) -> None:
        if self._raw is not None:
            self._pool_entry.close()
            self._raw = None


def _outcome(event: Event) -> dict[str, Any]:
    try:
        value = json.loads(event.data) if event.data else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {"value": value}
