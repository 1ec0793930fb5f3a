"""The sandbox registry in SQLite, so another process can connect to, list and kill sandboxes.

Plain :mod:`sqlite3` in WAL mode: readers never block the writer, and each write is one
short transaction. The schema carries a version (``PRAGMA user_version``) and migrates
forward on open.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..models import SandboxInfo

SCHEMA_VERSION = 3
MIGRATIONS = {
    1: """
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        state TEXT NOT NULL,
        metadata TEXT NOT NULL,
        handle TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_started INTEGER
    );
    """,
    # Exposed ports: which host port forwards to which sandbox port (rebuilt after a restart).
    2: """
    CREATE TABLE ports (
        host_port INTEGER PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        port INTEGER NOT NULL,
        UNIQUE (sandbox_id, port)
    );
    """,
    # Egress: a sandbox's network policy, bridge and secret references (never values), read
    # per connection so a change from any process applies at once; and what it reached.
    3: """
    CREATE TABLE egress (
        sandbox_id TEXT PRIMARY KEY,
        settings TEXT NOT NULL
    );
    CREATE TABLE egress_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sandbox_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX egress_events_sandbox ON egress_events (sandbox_id, id);
    """,
}


def default_home() -> Path:
    """``$SANDLOT_HOME``, else ``$XDG_STATE_HOME/sandlot``, else ``~/.local/state/sandlot``;
    for root, ``/var/lib/sandlot``: sandboxes run as an unprivileged user, which cannot reach
    into root's private home folder."""
    if os.environ.get("SANDLOT_HOME"):
        return Path(os.environ["SANDLOT_HOME"]).expanduser().resolve()
    if os.geteuid() == 0 and not os.environ.get("XDG_STATE_HOME"):
        return Path("/var/lib/sandlot")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser().resolve() / "sandlot"


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


class Store:
    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = home / "state.db"
        if not self.path.exists():
            self.path.touch(mode=0o600)  # sandbox metadata is nobody else's business
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=30, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def insert(self, info: SandboxInfo, owner_started: int | None) -> None:
        self._execute(
            "INSERT INTO sandboxes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.id,
                info.provider,
                info.state,
                json.dumps(info.metadata),
                json.dumps(info.handle),
                info.created_at.timestamp(),
                info.expires_at.timestamp(),
                info.owner_pid,
                owner_started,
            ),
        )

    def set_handle(self, sandbox_id: str, handle: dict[str, Any]) -> None:
        self._execute(
            "UPDATE sandboxes SET handle = ? WHERE id = ?", (json.dumps(handle), sandbox_id)
        )

    def set_provider(self, sandbox_id: str, provider: str) -> None:
        self._execute("UPDATE sandboxes SET provider = ? WHERE id = ?", (provider, sandbox_id))

    def set_expiry(self, sandbox_id: str, expires_at: datetime) -> None:
        self._execute(
            "UPDATE sandboxes SET expires_at = ? WHERE id = ?", (expires_at.timestamp(), sandbox_id)
        )

    def delete(self, sandbox_id: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM ports WHERE sandbox_id = ?", (sandbox_id,))
                self._db.execute("DELETE FROM egress WHERE sandbox_id = ?", (sandbox_id,))
                self._db.execute("DELETE FROM egress_events WHERE sandbox_id = ?", (sandbox_id,))
                self._db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- exposed ports ----------------------------------------------------------------------

    def claim_port(self, sandbox_id: str, port: int, host_port: int) -> bool:
        """Record ``host_port`` as forwarding to the sandbox's ``port``; False if another
        sandbox (or process) holds that host port already."""
        try:
            self._execute("INSERT INTO ports VALUES (?, ?, ?)", (host_port, sandbox_id, port))
        except sqlite3.IntegrityError:
            return False
        return True

    def host_port(self, sandbox_id: str, port: int) -> int | None:
        rows = self._execute(
            "SELECT host_port FROM ports WHERE sandbox_id = ? AND port = ?", (sandbox_id, port)
        )
        return int(rows[0][0]) if rows else None

    def ports(self, sandbox_id: str) -> list[tuple[int, int]]:
        """(sandbox port, host port) of every port the sandbox exposes."""
        rows = self._execute(
            "SELECT port, host_port FROM ports WHERE sandbox_id = ? ORDER BY port", (sandbox_id,)
        )
        return [(int(a), int(b)) for a, b in rows]

    def taken_ports(self) -> set[int]:
        return {int(r[0]) for r in self._execute("SELECT host_port FROM ports")}

    def release_port(self, host_port: int) -> None:
        self._execute("DELETE FROM ports WHERE host_port = ?", (host_port,))

    # -- egress -----------------------------------------------------------------------------

    def set_egress(self, sandbox_id: str, settings: dict[str, Any]) -> None:
        self._execute(
            "INSERT INTO egress VALUES (?, ?) ON CONFLICT (sandbox_id) DO UPDATE"
            " SET settings = excluded.settings",
            (sandbox_id, json.dumps(settings)),
        )

    def egress(self, sandbox_id: str) -> dict[str, Any] | None:
        rows = self._execute("SELECT settings FROM egress WHERE sandbox_id = ?", (sandbox_id,))
        return json.loads(rows[0][0]) if rows else None

    def add_egress_event(self, sandbox_id: str, kind: str, data: dict[str, Any]) -> None:
        self._execute(
            "INSERT INTO egress_events (sandbox_id, created_at, kind, data) VALUES (?, ?, ?, ?)",
            (sandbox_id, time.time(), kind, json.dumps(data)),
        )

    def egress_events(self, sandbox_id: str, after: int = 0) -> list[dict[str, Any]]:
        rows = self._execute(
            "SELECT id, created_at, kind, data FROM egress_events"
            " WHERE sandbox_id = ? AND id > ? ORDER BY id",
            (sandbox_id, after),
        )
        return [{"id": r[0], "created_at": r[1], "kind": r[2], **json.loads(r[3])} for r in rows]

    def get(self, sandbox_id: str) -> tuple[SandboxInfo, int | None] | None:
        rows = self._execute(_SELECT + " WHERE id = ?", (sandbox_id,))
        return _row(rows[0]) if rows else None

    def all(self) -> list[tuple[SandboxInfo, int | None]]:
        return [_row(r) for r in self._execute(_SELECT + " ORDER BY created_at")]

    def close(self) -> None:
        with self._lock:
            self._db.close()


_SELECT = (
    "SELECT id, provider, state, metadata, handle, created_at, expires_at, owner_pid,"
    " owner_started FROM sandboxes"
)


def _row(row: tuple[Any, ...]) -> tuple[SandboxInfo, int | None]:
    info = SandboxInfo(
        id=row[0],
        provider=row[1],
        state=row[2],
        metadata=json.loads(row[3]),
        handle=json.loads(row[4]),
        created_at=_ts(row[5]),
        expires_at=_ts(row[6]),
        owner_pid=row[7],
    )
    return info, row[8]
