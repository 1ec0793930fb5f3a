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
# The same, also storing where the session's running commands stand (see LogWriter._resume).
_BUMP_RESUME = _BUMP.replace("updated_at = ?", "updated_at = ?, resume = ?")
_EVENT = (
    "INSERT INTO events (session_id, seq, execution_id, kind, data, encoding, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_START = (
    "INSERT INTO executions (id, session_id, sandbox_id, kind, state, pid, created_at)"
    " VALUES (?, ?, ?, ?, 'running', ?, ?)"
)
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
        self._places: dict[str, dict[str, str]] = {}  # see _resume

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
        resume = self._resume(session_id, items, progress)
        if self.db.dialect != "sqlite":
            return self.log.append(
                session_id, items, lambda conn, out: self._derive(conn, out, starts), resume
            )
        return self._append_sqlite(session_id, items, starts, resume)

    def _resume(
        self, session_id: str, items: Sequence[Item], progress: Progress | None
    ) -> str | None:
        """The session's ``resume`` value after this batch (None: unchanged): a JSON object,
        execution id -> place. It rides on the UPDATE of the session's row that every append
        makes anyway (a row of its own per batch cost a tenth more per append), and is kept
        here, each place encoded once, for the sessions with running commands: this writer
        is the only one to write it, and knows every place stored (those of a previous
        process through :meth:`remember`)."""
        places = self._places.get(session_id)
        if places is None:
            if not progress:
                return None  # the common case: nothing to do
            places = {}
        changed = False
        if places:
            for execution_id, kind, _ in items:
                if kind in TERMINAL and execution_id in places:
                    del places[execution_id]
                    changed = True
        if progress:
            for execution_id, place in progress.items():
                places[execution_id] = _encode(place)
            changed = True
        if places:
            self._places[session_id] = places
        else:
            self._places.pop(session_id, None)
        if not changed:
            return None
        # Execution ids are ours (ex- and hex digits): nothing in them needs escaping.
        return "{" + ",".join([f'"{k}":{v}' for k, v in places.items()]) + "}"

    def remember(self, session_id: str, places: Mapping[str, Sequence[int]]) -> None:
        """Places a previous process stored, of the session's commands carried on here (all
        of them before any logs output: what is stored is what this writer knows): each
        kept in the session's ``resume`` until its command's output moves it or its end
        drops it."""
        known = self._places.setdefault(session_id, {})
        for execution_id, place in places.items():
            known[execution_id] = _encode(place)

    def _derive(
        self, conn: Connection, events: list[Event], starts: Sequence[ExecutionRecord]
    ) -> None:
        for record in starts:
            self.records.add_execution(record, conn)
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
        resume: str | None,
    ) -> list[Event]:
        db = self._connection()
        stored = [pack(kind, data) for _, kind, data in items]  # before the lock is taken
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            size = sum(len(data) for data, _ in stored)
            if resume is None:
                row = db.execute(_BUMP, (len(items), size, now, session_id)).fetchone()
            else:
                bump = (len(items), size, now, resume, session_id)
                row = db.execute(_BUMP_RESUME, bump).fetchone()
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


_FORMATS = {n: "[" + ",".join(["%d"] * n) + "]" for n in range(1, 9)}


def _encode(place: Sequence[int]) -> str:
    """A place as JSON (a list of integers), faster than json.dumps."""
    return _FORMATS[len(place)] % tuple(place)


def _outcome(event: Event) -> dict[str, Any]:
    try:
        value = json.loads(event.data) if event.data else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {"value": value}
