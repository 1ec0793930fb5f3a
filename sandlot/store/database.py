"""The server/session database: one SQLAlchemy Core schema on SQLite or PostgreSQL.

Used by a server (``sandlot serve``: tenants, API keys, sessions, sandboxes, executions, the
event log, secrets) and by embedded durable sessions (:class:`sandlot.Session`: the same
tables, in ``server.db`` of the state folder, for the local tenant). SQLite (the default, a
file in the state folder) suits one control plane; PostgreSQL lets several share work. It is
imported only when a server starts or a session is first used: ``import sandlot`` must never
pay for SQLAlchemy and Alembic. The host's own registry of live sandboxes is another store,
:mod:`sandlot.store.registry`.

The tables are defined once, here, and the queries use them. The schema is created and
upgraded by Alembic (``sandlot/store/migrations``); each revision spells out its own DDL, so
an old revision keeps creating what it always created when these definitions move on, and a
test checks that the migrated schema matches these definitions. To write the next revision::

    python -c "from alembic import command; from sandlot.store.database import alembic_config;
    command.revision(alembic_config(), 'what changed', rev_id='0002')"

Timestamps are stored as float epoch seconds (portable, sortable, no time-zone games);
the models hand back aware UTC datetimes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import InvalidArgumentError, SandlotError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "sandlot_alembic_version"  # our own name: the database may be shared
# pg_advisory_xact_lock key for migrations: any constant, the same in every process.
MIGRATION_LOCK = 0x5A4D_1075_0001
WAL_LIMIT = 64 * 1024 * 1024  # bytes of SQLite write-ahead log kept after a checkpoint

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

tenants = Table(
    "tenants",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", Double, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("admin", Boolean, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double),
    Column("last_used_at", Double),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("metadata", Text, nullable=False),  # JSON object of strings
    Column("status", Text, nullable=False),  # active | ended
    Column("last_seq", BigInteger, nullable=False, server_default="0"),
    Column("sandbox_id", Text, index=True),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    # Durable sessions (0003): where the workspace is kept, lifetimes, the run lock.
    Column("workspace", Text),  # "local" or "s3://bucket/prefix"; None: not durable
    Column("idle_timeout", Double),  # seconds without activity before its sandbox stops
    Column("checkpoint_every", Double),  # seconds between checkpoints while attached
    Column("delete_after", Double),  # epoch seconds: the session and its data go then
    Column("last_active_at", Double),
    Column("checkpoint", Integer),  # number of the latest checkpoint
    Column("checkpointed_at", Double),
    Column("lock_holder", Text),  # who runs something now (None: free)
    Column("lock_since", Double),
    Column("lock_execution", Text),
    Column("lock_sandbox", Text),
    Column("lock_pid", Integer),  # the run's process in the sandbox: what a takeover stops
    # Log storage (0004): the stored (compressed) bytes of its events, and the cut retention
    # made: every event up to ``pruned_seq`` is gone, for ``pruned_why``.
    Column("log_bytes", BigInteger, nullable=False, server_default="0"),
    Column("pruned_seq", BigInteger, nullable=False, server_default="0"),
    Column("pruned_at", Double),
    Column("pruned_why", Text),  # retention | tenant_log_bytes
    # Where its running commands stand in their agents' output logs: JSON, execution id ->
    # place (transcript.recorder), written with their output by the append that numbers it.
    Column("resume", Text),
    # The named volumes every sandbox attached to it mounts (0006): JSON, a list of
    # {"name", "path", "mode"}; None: none.
    Column("volumes", Text),
)
# Sessions with a log retention may drop (ended, something left); the queries that look for
# them spell the same text, so SQLite and PostgreSQL can use these partial indexes (0004).
DROPPABLE = text("status = 'ended' AND last_seq > pruned_seq")
Index(
    "ix_sessions_droppable_updated_at",
    sessions.c.updated_at,
    sqlite_where=DROPPABLE,
    postgresql_where=DROPPABLE,
)
Index(
    "ix_sessions_droppable_tenant_id_updated_at",
    sessions.c.tenant_id,
    sessions.c.updated_at,
    sqlite_where=DROPPABLE,
    postgresql_where=DROPPABLE,
)

# A caller's hold on a session's sandbox, kept by heartbeats (0003).
leases = Table(
    "leases",
    metadata,
    Column("id", Text, primary_key=True),
    Column("session_id", Text, ForeignKey("sessions.id"), nullable=False, index=True),
    Column("sandbox_id", Text, nullable=False),
    Column("holder", Text, nullable=False),
    Column("spec_key", Text, nullable=False),  # what a reusing request must match exactly
    Column("ttl", Double, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False, index=True),
    Column("released_at", Double),
)

# Who owns a sandbox (tenant, session), while it runs and after it ended: the server's and
# durable sessions' ownership records, shared by every control plane on this database. Not
# the host registry's ``sandboxes`` (sandlot.store.registry: this host's live ones, with the
# handles and owning processes to re-attach to or reap them, deleted when killed).
sandboxes = Table(
    "sandboxes",
    metadata,
    Column("id", Text, primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False),
    Column("session_id", Text, ForeignKey("sessions.id"), nullable=False),
    Column("provider", Text, nullable=False),
    Column("metadata", Text, nullable=False),  # JSON object of strings
    Column("state", Text, nullable=False),  # running | ended
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("ended_at", Double),
    Index("ix_sandboxes_state_tenant_id", "state", "tenant_id"),
)

executions = Table(
    "executions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("session_id", Text, nullable=False),
    Column("sandbox_id", Text, nullable=False),
    Column("kind", Text, nullable=False),  # command | code
    Column("state", Text, nullable=False),  # running | ended
    Column("pid", Integer),
    Column("first_seq", BigInteger),
    Column("last_seq", BigInteger),
    Column("created_at", Double, nullable=False),
    Column("ended_at", Double),
    Column("outcome", Text),  # JSON object
    Index("ix_executions_state_sandbox_id", "state", "sandbox_id"),
)

events = Table(
    "events",
    metadata,
    Column("session_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("execution_id", Text),
    Column("kind", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
    # How ``data`` is stored (0004): sandlot.store.encoding (0 as is, 1 zlib).
    Column("encoding", SmallInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("session_id", "seq"),
    Index("ix_events_session_id_execution_id_seq", "session_id", "execution_id", "seq"),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("body_hash", Text, nullable=False),
    Column("status", Integer),  # NULL while the first attempt is still running
    Column("content_type", Text),
    Column("body", LargeBinary),
    Column("created_at", Double, nullable=False),
    PrimaryKeyConstraint("tenant_id", "key"),
    Index("ix_idempotency_created_at", "created_at"),
)

# Secrets (sandlot.secrets): AES-GCM ciphertexts, bound to their tenant and name; never values.
stored_secrets = Table(
    "secrets",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    PrimaryKeyConstraint("tenant_id", "name"),
)


def sqlite_url(home: Path) -> str:
    """The default store: ``server.db`` in the server's state folder."""
    return f"sqlite:///{Path(home).absolute()}/server.db"


def ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def ts_or_none(value: float | None) -> datetime | None:
    return None if value is None else ts(value)


def epoch(value: datetime) -> float:
    """A datetime as epoch seconds; a naive one is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def insert_new(db: Database, table: Table, row: dict[str, Any]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING <first key column>``: the result has a
    row if and only if the row was new. Of two concurrent inserts of one key exactly one
    wins; on PostgreSQL the second waits for the first to commit."""
    key = next(iter(table.primary_key.columns))
    if db.dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).values(row).on_conflict_do_nothing().returning(key)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table).values(row).on_conflict_do_nothing().returning(key)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code (no alembic.ini)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


class Database:
    """A connection pool to the store. Thread-safe: every call takes its own connection.

    ``url`` is an SQLAlchemy URL: ``sqlite:////abs/path/server.db`` or
    ``postgresql+psycopg://user@host/db`` (``postgresql://`` and ``postgres://`` mean psycopg 3).
    """

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise InvalidArgumentError(f"not a database URL: {url!r}") from None
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
        if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
            self.dialect = "sqlite"
            if (
                not parsed.database
                or parsed.database == ":memory:"
                or parsed.database.startswith("file:")
            ):
                raise InvalidArgumentError(
                    f"the store needs an SQLite file, not {url!r}: sqlite:////abs/path/server.db"
                )
            path = Path(parsed.database)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created 0600 before SQLite opens it; its -wal and -shm files inherit the mode.
            # Only if it is new: closing a descriptor of a database file this process has
            # open elsewhere drops the process's locks on it (POSIX), and with them what
            # keeps two processes' writes apart.
            if not path.exists():
                try:
                    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass  # another process made it first
            self.engine: Engine = create_engine(
                parsed, connect_args={"check_same_thread": False, "timeout": 30}
            )
            _sqlite_transactions(self.engine)
        elif parsed.drivername == "postgresql+psycopg":
            self.dialect = "postgresql"
            self.engine = create_engine(parsed, pool_pre_ping=True)
        else:
            raise InvalidArgumentError(
                f"unsupported database URL {url!r}: use sqlite:////path/server.db "
                "or postgresql://user@host/db"
            )
        self.url = parsed.render_as_string(hide_password=True)
        # On SQLite a write transaction starts with BEGIN IMMEDIATE: it takes the write lock
        # first (waiting up to the busy timeout), so a transaction that reads and then writes
        # can never fail with "database is locked" half-way. PostgreSQL ignores the option.
        self._writer = self.engine.execution_options(sandlot_write=True)

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that writes: committed on exit, rolled back on an exception."""
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading (on SQLite a deferred transaction, so one snapshot);
        whatever it began is rolled back on exit."""
        with self.engine.connect() as conn:
            yield conn

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision. Safe at every start, and when several
        processes start at once: they take turns (PostgreSQL: an advisory lock; SQLite: the
        write lock), and whoever comes second finds nothing left to do."""
        from alembic import command
        from alembic.util import CommandError

        try:
            with self.write() as conn:
                if self.dialect == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
                command.upgrade(alembic_config(conn), "head")
        except CommandError as exc:  # e.g. a schema newer than this sandlot knows
            raise SandlotError(f"cannot migrate the store at {self.url}: {exc}") from None

    def revision(self) -> str | None:
        """The schema revision the database is at (None: never migrated)."""
        from alembic.runtime.migration import MigrationContext

        with self.read() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()

    def reclaim(self, pages: int = 512) -> int:
        """Give up to ``pages`` free pages of an SQLite file back to the file system; how
        many it gave (0: none left, PostgreSQL, or a file made before sandlot set
        ``auto_vacuum``, which reuses its free pages instead of giving them back).
        Bounded, so a caller on the writer thread can interleave it with other writes."""
        if self.dialect != "sqlite":
            return 0
        raw = self.engine.raw_connection()
        try:
            sqlite = raw.driver_connection
            assert sqlite is not None
            if sqlite.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # not INCREMENTAL
                return 0
            before = sqlite.execute("PRAGMA freelist_count").fetchone()[0]
            # executescript steps the pragma to its end (execute frees a single page).
            sqlite.executescript(f"PRAGMA incremental_vacuum({int(pages)})")
            return max(0, int(before - sqlite.execute("PRAGMA freelist_count").fetchone()[0]))
        finally:
            raw.close()

    def close(self) -> None:
        self.engine.dispose()


def _set_wal(cursor: Any) -> None:
    """WAL mode, waiting for another connection that holds the new file's lock: SQLite may
    answer this pragma "database is locked" at once, without its busy handler (seen with two
    processes opening a new database together)."""
    import sqlite3
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, say when transactions begin (the documented
    recipe for Python < 3.12), and set the per-connection pragmas."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from sqlite3
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=30000")
            # Takes effect only on a new, empty file, and only before WAL mode is set: then
            # pages that pruning frees can be given back (Database.reclaim).
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
            _set_wal(cursor)
            # A checkpoint rewinds the WAL but leaves the file as big as a burst made it;
            # this truncates it back (the WAL still grows while a reader holds a snapshot).
            cursor.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("sandlot_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
