"""The host registry, ``<home>/state.db``: what this host's processes share about its
sandboxes, so another process can connect to, list and kill them; and this host's secrets.

Used in both modes: embedded (each process's manager) and by a server (its manager, on the
server's host). It holds, per host: the live sandboxes (their provider handles and owning
process, what a restarted process re-attaches to or reaps), the host ports they expose, their
egress settings and events, the warm pools and their members, and the embedded secret store's
ciphertexts (:class:`sandlot.secrets.store.LocalSecrets`; a server keeps its tenants' secrets
in its database instead). Not to be confused with the ``sandboxes`` table of the server/session
database (:mod:`sandlot.store.database`): which tenant and session own a sandbox, kept after
it ended, for a server and for embedded durable sessions.

Plain :mod:`sqlite3` in WAL mode: readers never block the writer, and each write is one
short transaction. The schema carries a version (``PRAGMA user_version``) and migrates
forward on open through the numbered steps of :data:`MIGRATIONS`, in order, in one
transaction. Opening also adopts a ``secrets.db`` left by a sandlot from before secrets moved
here (:func:`adopt_legacy_secrets`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..models import SandboxInfo

FILE = "state.db"
LEGACY_SECRETS = "secrets.db"  # where embedded secrets were kept before schema 5

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
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
    # Warm pools: the specs to keep started sandboxes of, and those sandboxes. A member whose
    # ``ready`` is 0 is a slot reserved by a process creating it (its sandbox_id a placeholder).
    4: """
    CREATE TABLE pools (
        key TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        size INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE pool_members (
        sandbox_id TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        created_at REAL NOT NULL,
        ready INTEGER NOT NULL
    );
    CREATE INDEX pool_members_key ON pool_members (key, ready, created_at);
    """,
    # Secrets of the embedded store (sandlot.secrets.store.LocalSecrets): ciphertexts only
    # (sandlot.secrets.crypto), by tenant and name; the same table secrets.db had.
    5: """
    CREATE TABLE secrets (
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
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


def connect(home: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to ``<home>/state.db`` (autocommit: transactions are explicit), the file
    created private (0600) when new. :func:`open_registry` also migrates it."""
    path = Path(home) / FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Sandbox metadata and secrets are nobody else's business: the file is 0600 before
        # SQLite opens it (its -wal and -shm files get the same mode). Only if new: closing a
        # descriptor of a database another connection of this process has open would drop
        # the process's (POSIX) locks on it.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    return sqlite3.connect(
        path, timeout=30, check_same_thread=check_same_thread, isolation_level=None
    )


def open_registry(home: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """:func:`connect`, in WAL mode, the schema migrated and a legacy ``secrets.db`` adopted."""
    db = connect(home, check_same_thread=check_same_thread)
    try:
        _keep_private(Path(home) / FILE)
        db.execute("PRAGMA journal_mode=WAL")
        migrate(db)
        adopt_legacy_secrets(db, Path(home))
    except BaseException:
        db.close()
        raise
    return db


def _keep_private(path: Path) -> None:
    """Make the registry's files 0600 if they are ours and others may read them: sandlot
    created ``state.db`` with the umask's mode before it was 0600, and secrets live here now."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            info = file.stat()
            if info.st_mode & 0o077 and info.st_uid == os.geteuid():
                os.chmod(file, 0o600)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def migrate(db: sqlite3.Connection) -> None:
    """Apply the steps of :data:`MIGRATIONS` the file lacks, in order, in one transaction
    (a file from a newer sandlot is left as it is)."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    with _transaction(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]  # another process's, maybe
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version={max(version, SCHEMA_VERSION)}")


def adopt_legacy_secrets(db: sqlite3.Connection, home: Path) -> int:
    """Move the rows of ``<home>/secrets.db`` (the embedded secret store before schema 5)
    into the registry, in one transaction, then rename that file aside to
    ``secrets.db.migrated``. The ciphertexts are copied as they are: the key and the format
    stay. A row the registry holds already is kept unless the file's is newer (a sandlot from
    before may have written it meanwhile), so adopting twice changes nothing. The number of
    rows read; 0 when there is no file. A file that cannot be read is left where it is, with
    a warning: it costs the secrets in it, not the registry."""
    old = home / LEGACY_SECRETS
    if not old.exists():
        return 0
    try:
        with _transaction(db):  # processes take turns: a later one finds no file, or rows
            rows = _legacy_rows(old)
            if rows is None:
                return 0
            db.executemany(
                "INSERT INTO secrets VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, name)"
                " DO UPDATE SET ciphertext = excluded.ciphertext,"
                " updated_at = excluded.updated_at WHERE excluded.updated_at > secrets.updated_at",
                rows,
            )
    except sqlite3.DatabaseError as exc:
        log.warning("could not move the secrets of %s into %s: %s", old, FILE, exc)
        return 0
    _rename_aside(old)  # after the commit: if that failed, the file is still there to adopt
    return len(rows)


def _legacy_rows(old: Path) -> list[tuple[Any, ...]] | None:
    """The rows of a legacy ``secrets.db``; None if it is gone (renamed by another process)."""
    try:
        # mode=rw: never create the file (another process may have just renamed it).
        legacy = sqlite3.connect(f"file:{quote(str(old))}?mode=rw", uri=True, timeout=30)
    except sqlite3.OperationalError:
        return None
    try:
        return legacy.execute(
            "SELECT tenant_id, name, ciphertext, created_at, updated_at FROM secrets"
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return []  # created, never written to
    finally:
        legacy.close()


def _rename_aside(old: Path) -> None:
    """``secrets.db`` (and a WAL left beside it) to ``secrets.db.migrated``, or
    ``.migrated.N`` when an earlier one is there: kept, never overwritten."""
    target = old.with_name(old.name + ".migrated")
    n = 1
    while target.exists():
        n += 1
        target = old.with_name(f"{old.name}.migrated.{n}")
    for suffix in ("-wal", "-shm", ""):  # the database file last: what we look for
        with contextlib.suppress(FileNotFoundError):
            old.with_name(old.name + suffix).rename(target.with_name(target.name + suffix))


class Store:
    """The registry of one state folder, on one connection shared by this process's threads."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / FILE
        self._lock = threading.Lock()
        self._db = open_registry(home, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")

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
                self._db.execute("DELETE FROM pool_members WHERE sandbox_id = ?", (sandbox_id,))
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

    # -- warm pools -------------------------------------------------------------------------

    def set_owner(
        self,
        sandbox_id: str,
        owner_pid: int,
        owner_started: int | None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Hand a sandbox to another process (gc reaps it when that one dies)."""
        with self._lock:
            self._set_owner(sandbox_id, owner_pid, owner_started, metadata, None)

    def _set_owner(
        self,
        sandbox_id: str,
        owner_pid: int,
        owner_started: int | None,
        metadata: dict[str, str] | None,
        expires_at: datetime | None,
    ) -> None:
        sets = ["owner_pid = ?", "owner_started = ?"]
        params: list[Any] = [owner_pid, owner_started]
        if metadata is not None:
            sets.append("metadata = ?")
            params.append(json.dumps(metadata))
        if expires_at is not None:
            sets.append("expires_at = ?")
            params.append(expires_at.timestamp())
        self._db.execute(
            f"UPDATE sandboxes SET {', '.join(sets)} WHERE id = ?", (*params, sandbox_id)
        )

    def set_pool(self, key: str, spec: dict[str, Any], size: int) -> None:
        self._execute(
            "INSERT INTO pools VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE"
            " SET spec = excluded.spec, size = excluded.size, updated_at = excluded.updated_at",
            (key, json.dumps(spec, sort_keys=True), size, time.time()),
        )

    def delete_pool(self, key: str) -> None:
        """Forget a pool (its members stay listed until they are killed)."""
        self._execute("DELETE FROM pools WHERE key = ?", (key,))

    def pools(self) -> list[tuple[str, dict[str, Any], int]]:
        """(key, spec, size) of every pool, oldest first."""
        rows = self._execute("SELECT key, spec, size FROM pools ORDER BY updated_at, key")
        return [(r[0], json.loads(r[1]), int(r[2])) for r in rows]

    def pool_size(self, key: str) -> int | None:
        rows = self._execute("SELECT size FROM pools WHERE key = ?", (key,))
        return int(rows[0][0]) if rows else None

    def pool_members(self, key: str | None = None) -> list[tuple[str, str, float, bool]]:
        """(sandbox_id, key, created_at, ready) of the members of one pool, or of all."""
        sql = "SELECT sandbox_id, key, created_at, ready FROM pool_members"
        rows = self._execute(
            sql + (" WHERE key = ? ORDER BY created_at" if key else " ORDER BY created_at"),
            (key,) if key else (),
        )
        return [(r[0], r[1], float(r[2]), bool(r[3])) for r in rows]

    def reserve_pool_slots(self, key: str, token: str) -> list[str]:
        """Reserve the slots a pool lacks (its size minus its members, ready or being made)
        in one transaction, so processes topping the same pool up never overshoot it; the
        placeholder ids (``pending-TOKEN-N``) to replace with :meth:`fill_pool_slot`."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT size FROM pools WHERE key = ?", (key,)).fetchall()
                size = int(rows[0][0]) if rows else 0
                (count,) = self._db.execute(
                    "SELECT count(*) FROM pool_members WHERE key = ?", (key,)
                ).fetchone()
                now = time.time()
                slots = [f"pending-{token}-{n}" for n in range(max(size - int(count), 0))]
                for slot in slots:
                    self._db.execute(
                        "INSERT INTO pool_members VALUES (?, ?, ?, 0)", (slot, key, now)
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return slots

    def fill_pool_slot(self, slot: str, sandbox_id: str | None) -> bool:
        """Replace a reserved slot by the sandbox made for it (or drop it: None). False if
        the slot is gone (its pool was removed or shrunk meanwhile): the caller kills the
        sandbox."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute(
                    "DELETE FROM pool_members WHERE sandbox_id = ? RETURNING key", (slot,)
                ).fetchall()
                if gone and sandbox_id is not None:
                    self._db.execute(
                        "INSERT INTO pool_members VALUES (?, ?, ?, 1)",
                        (sandbox_id, gone[0][0], time.time()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return bool(gone)

    def remove_pool_member(self, sandbox_id: str) -> bool:
        """Take a member out of its pool (to kill it); False if it was not in one."""
        rows = self._execute(
            "DELETE FROM pool_members WHERE sandbox_id = ? RETURNING key", (sandbox_id,)
        )
        return bool(rows)

    def claim_pool_member(
        self,
        key: str,
        owner_pid: int,
        owner_started: int | None,
        metadata: dict[str, str],
        expires_at: datetime,
    ) -> tuple[SandboxInfo, int | None] | None:
        """Take the oldest ready member of a pool, and hand it to its new owner, in one
        transaction: two processes never take the same member, and a member is never
        without an owner (or its pool) in between. None if the pool has none ready."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "DELETE FROM pool_members WHERE sandbox_id = (SELECT sandbox_id FROM"
                    " pool_members WHERE key = ? AND ready = 1 ORDER BY created_at LIMIT 1)"
                    " RETURNING sandbox_id",
                    (key,),
                ).fetchall()
                found = None
                if rows:
                    sandbox_id = rows[0][0]
                    self._set_owner(sandbox_id, owner_pid, owner_started, metadata, expires_at)
                    record = self._db.execute(_SELECT + " WHERE id = ?", (sandbox_id,))
                    row = record.fetchone()
                    found = _row(row) if row is not None else None
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return found

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
    handle = json.loads(row[4])
    idle = handle.get("idle_timeout")  # kept in the handle: no column, no migration
    info = SandboxInfo(
        id=row[0],
        provider=row[1],
        state=row[2],
        metadata=json.loads(row[3]),
        handle=handle,
        idle_timeout=idle if isinstance(idle, (int, float)) and idle > 0 else None,
        created_at=_ts(row[5]),
        expires_at=_ts(row[6]),
        owner_pid=row[7],
    )
    return info, row[8]
