"""The server's store on real databases: SQLite in a temporary folder and a throwaway
PostgreSQL cluster (tests/pg.py). Every test that takes ``db`` or ``url`` runs on both."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sandlot.errors import InvalidArgumentError, NotFoundError, SandlotError
from sandlot.store.database import VERSION_TABLE, WAL_LIMIT, Database, metadata, sqlite_url
from sandlot.store.keys import Keys
from sandlot.store.records import ExecutionRecord, Records, SandboxRecord
from sandlot.transcript.eventlog import Event, EventLog

REPO = Path(__file__).resolve().parents[2]


def run_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    """Run target(0..n-1) in n threads started together; re-raise the first failure."""
    barrier = threading.Barrier(n)

    def go(i: int) -> Any:
        barrier.wait()
        return target(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def _head() -> str:
    """The newest revision in the migrations folder: no test names it by literal."""
    from alembic.script import ScriptDirectory

    from sandlot.store.database import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


HEAD = _head()


# the database and its migrations


def test_migrate_twice_is_a_no_op_and_matches_the_tables(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    db = Database(url)
    try:
        assert db.revision() is None
        db.migrate()
        assert db.revision() == HEAD
        EventLog(db)  # nothing to do at construction
        Keys(db).create("k")
        db.migrate()
        assert db.revision() == HEAD
        assert Keys(db).any_active()  # the second run touched no data
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            assert compare_metadata(context, metadata) == []
    finally:
        db.close()


def test_a_schema_newer_than_this_code_is_refused(db: Database) -> None:
    with db.write() as conn:
        conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
    with pytest.raises(SandlotError, match="9999"):
        db.migrate()


def test_migrate_from_two_threads_at_once(url: str) -> None:
    dbs = [Database(url), Database(url)]
    try:
        run_threads(2, lambda i: dbs[i].migrate())
        assert [d.revision() for d in dbs] == [HEAD, HEAD]
    finally:
        for d in dbs:
            d.close()


def test_migrate_from_two_processes_at_once(url: str) -> None:
    script = (
        "import sys\n"
        "from sandlot.store.database import Database\n"
        "db = Database(sys.argv[1]); db.migrate(); print(db.revision())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == HEAD


def test_database_urls(tmp_path: Path) -> None:
    assert sqlite_url(tmp_path) == f"sqlite:///{tmp_path}/server.db"
    assert sqlite_url(tmp_path).startswith("sqlite:////")
    for bad in ("sqlite://", "sqlite:///:memory:", "mysql://u@h/db", "not a url", "sqlite+x:///a"):
        with pytest.raises(InvalidArgumentError):
            Database(bad)
    # postgresql:// means psycopg 3; nothing connects until first use
    for plain in ("postgresql://u:secret@localhost/db", "postgres://u:secret@localhost/db"):
        pg = Database(plain)
        assert pg.dialect == "postgresql"
        assert pg.engine.url.drivername == "postgresql+psycopg"
        assert "secret" not in pg.url and "secret" not in repr(pg)
        pg.close()


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "home"))
    try:
        db.migrate()
        Keys(db).create("k")
        assert db.dialect == "sqlite"
        for name in ("server.db", "server.db-wal", "server.db-shm"):
            path = tmp_path / "home" / name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            # freed pages can be given back; a burst's WAL is truncated after checkpoints
            assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # INCREMENTAL
            assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == WAL_LIMIT
    finally:
        db.close()


def test_importing_sandlot_does_not_import_sqlalchemy() -> None:
    check = "import sys, sandlot; sys.exit('sqlalchemy' in sys.modules or 'alembic' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", check], env=env).returncode == 0


# the event log


def test_append_numbers_events_and_read_filters(db: Database, session: str) -> None:
    log = EventLog(db)
    assert log.last_seq(session) == 0
    assert log.read(session) == []
    first = log.append(session, [("x1", "started", b""), ("x1", "stdout", b"a")])
    assert [(e.seq, e.execution_id, e.kind, e.data) for e in first] == [
        (1, "x1", "started", b""),
        (2, "x1", "stdout", b"a"),
    ]
    log.append(session, [(None, "note", b"n"), ("x2", "stdout", b"b"), ("x1", "exit", b"0")])
    assert log.last_seq(session) == 5
    got = log.read(session)
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    assert got[:2] == first
    assert all(isinstance(e, Event) and e.session_id == session for e in got)
    assert [e.seq for e in log.read(session, after=2)] == [3, 4, 5]
    assert [e.seq for e in log.read(session, after=1, limit=2)] == [2, 3]
    assert log.read(session, after=5) == []
    assert [e.seq for e in log.read(session, execution_id="x1")] == [1, 2, 5]
    assert [e.seq for e in log.read(session, 1, execution_id="x1", limit=1)] == [2]
    with pytest.raises(InvalidArgumentError):
        log.read(session, limit=0)
    # the session's updated_at follows its log
    assert Records(db).get_session(session).updated_at == datetime.fromtimestamp(
        got[-1].created_at, UTC
    )


def test_unknown_session(db: Database) -> None:
    log = EventLog(db)
    with pytest.raises(NotFoundError):
        log.append("ses-nope", [(None, "stdout", b"x")])
    with pytest.raises(NotFoundError):
        log.last_seq("ses-nope")
    assert log.read("ses-nope") == []
    assert log.append("ses-nope", []) == []  # an empty batch never touches the database


def test_binary_data_round_trips_exactly(db: Database, session: str) -> None:
    log = EventLog(db)
    every_byte = bytes(range(256))
    big = os.urandom(256 * 1024)
    log.append(session, [("x", "stdout", every_byte), ("x", "stderr", b""), ("x", "raw", big)])
    got = log.read(session)
    assert [e.data for e in got] == [every_byte, b"", big]
    assert all(type(e.data) is bytes for e in got)


def test_concurrent_appends_are_gapless(db: Database, session: str) -> None:
    log = EventLog(db)

    def appender(worker: int) -> list[int]:
        seqs = []
        for i in range(200):
            batch = [
                (f"w{worker}", "stdout", f"{worker}:{i}:{j}".encode()) for j in range(i % 3 + 1)
            ]
            events = log.append(session, batch)
            numbers = [e.seq for e in events]
            assert numbers == list(
                range(numbers[0], numbers[0] + len(batch))
            )  # a batch is contiguous
            seqs += numbers
        return seqs

    per_worker = run_threads(4, appender)
    total = sum(len(s) for s in per_worker)
    assert sorted(s for seqs in per_worker for s in seqs) == list(range(1, total + 1))
    stored = log.read(session, limit=total + 10)
    assert [e.seq for e in stored] == list(range(1, total + 1))
    assert log.last_seq(session) == total
    # each worker's events are in the order it appended them
    for worker in range(4):
        mine = [e.data.decode() for e in stored if e.execution_id == f"w{worker}"]
        assert mine == [f"{worker}:{i}:{j}" for i in range(200) for j in range(i % 3 + 1)]


def test_concurrent_appends_from_two_database_objects(url: str) -> None:
    """Two pools, as two control planes would have; on SQLite two pools in one process."""
    dbs = [Database(url), Database(url)]
    try:
        dbs[0].migrate()
        tenant = Keys(dbs[0]).create("k").key.tenant
        session = Records(dbs[0]).create_session(tenant).id
        logs = [EventLog(dbs[0]), EventLog(dbs[1])]

        def appender(worker: int) -> None:
            for i in range(200):
                logs[worker % 2].append(session, [(None, "stdout", b"%d" % i)])

        run_threads(4, appender)
        assert [e.seq for e in logs[1].read(session, limit=2000)] == list(range(1, 801))
    finally:
        for d in dbs:
            d.close()


# API keys and tenants


def test_keys_create_and_authenticate(db: Database) -> None:
    keys = Keys(db)
    new = keys.create("ci", admin=True)
    assert new.key.tenant.startswith("t-") and len(new.key.tenant) == 10
    assert len(new.key.id) == 12 and int(new.key.id, 16) >= 0
    assert new.token.startswith(f"sl_{new.key.id}_") and len(new.token) > 50
    assert new.key.admin and new.key.name == "ci" and new.key.revoked_at is None
    assert keys.tenants() == [new.key.tenant]
    got = keys.authenticate(new.token)
    assert got is not None
    assert (got.id, got.tenant, got.admin, got.name) == (new.key.id, new.key.tenant, True, "ci")
    assert got.last_used_at is not None
    # last_used_at is written at most once a minute
    again = keys.authenticate(new.token)
    assert again is not None and again.last_used_at == got.last_used_at
    assert keys.list()[0].last_used_at == got.last_used_at
    with db.write() as conn:  # a minute later
        conn.exec_driver_sql("UPDATE api_keys SET last_used_at = last_used_at - 61")
    later = keys.authenticate(new.token)
    assert later is not None and later.last_used_at is not None
    assert later.last_used_at > got.last_used_at - timedelta(seconds=61)
    assert keys.list()[0].last_used_at == later.last_used_at
    # the secret is not stored
    with db.engine.connect() as conn:
        dump = repr(conn.exec_driver_sql("SELECT * FROM api_keys").all())
    assert new.token.split("_", 2)[2] not in dump


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # wrong secret
        lambda t: t[:-1],
        lambda t: t + "x",
        lambda t: "",
        lambda t: "sl_",
        lambda t: "Bearer " + t,
        lambda t: t.upper(),
        lambda t: t.replace("sl_", "sk_", 1),
        lambda t: "sl_" + "0" * 12 + t[15:],  # an unknown key id with a well-formed secret
        lambda t: t + "\n",
        lambda t: "sl_' OR 1=1 --",
    ],
)
def test_bad_tokens_do_not_authenticate(db: Database, mangle: Callable[[str], str]) -> None:
    keys = Keys(db)
    token = keys.create("k").token
    assert keys.authenticate(mangle(token)) is None
    assert keys.authenticate(token) is not None


def test_revoked_keys(db: Database) -> None:
    keys = Keys(db)
    new = keys.create("k")
    other = keys.create("other", tenant=new.key.tenant)
    assert keys.any_active()
    assert keys.revoke(new.key.id)
    assert not keys.revoke(new.key.id)
    assert not keys.revoke("000000000000")
    assert keys.authenticate(new.token) is None
    assert keys.authenticate(other.token) is not None
    assert [k.id for k in keys.list()] == [other.key.id]
    listed = {k.id: k for k in keys.list(include_revoked=True)}
    assert listed[new.key.id].revoked_at is not None
    assert keys.revoke(other.key.id)
    assert not keys.any_active()


def test_key_tenants(db: Database) -> None:
    keys = Keys(db)
    a1 = keys.create("a1")
    a2 = keys.create("a2", tenant=a1.key.tenant)
    b = keys.create("b")
    assert a2.key.tenant == a1.key.tenant != b.key.tenant
    assert sorted(keys.tenants()) == sorted({a1.key.tenant, b.key.tenant})
    assert [k.id for k in keys.list(a1.key.tenant)] == [a1.key.id, a2.key.id]
    assert [k.id for k in keys.list(b.key.tenant)] == [b.key.id]
    assert keys.list("t-nobody") == []
    with pytest.raises(InvalidArgumentError, match="t-nobody"):
        keys.create("x", tenant="t-nobody")
    keys.ensure_tenant("local")
    keys.ensure_tenant("local")
    assert "local" in keys.tenants()
    assert keys.create("x", tenant="local").key.tenant == "local"
    assert keys.any_active()


@pytest.mark.parametrize("name", ["", " ", "a" * 65, "tab\there", "new\nline", 7])
def test_bad_key_names(db: Database, name: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        Keys(db).create(name)
    assert Keys(db).tenants() == []


# sessions, sandboxes, executions


def _sandbox(tenant: str, session: str, **over: Any) -> SandboxRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": f"sbx-{os.urandom(4).hex()}",
        "tenant": tenant,
        "session_id": session,
        "provider": "bwrap",
        "metadata": {},
        "created_at": now,
        "expires_at": now + timedelta(minutes=5),
    }
    fields.update(over)
    return SandboxRecord(**fields)


def test_sessions(db: Database, tenant: str) -> None:
    records = Records(db)
    other = Keys(db).create("other").key.tenant
    rec = records.create_session(tenant, {"user": "ann"})
    assert rec.id.startswith("ses-") and len(rec.id) == 16
    assert (rec.status, rec.last_seq, rec.sandbox_id, rec.metadata) == (
        "active",
        0,
        None,
        {"user": "ann"},
    )
    assert records.get_session(rec.id) == rec
    assert records.get_session(rec.id, tenant) == rec
    assert records.get_session(rec.id, other) is None
    assert records.get_session("ses-nope") is None
    with pytest.raises(InvalidArgumentError):
        records.create_session("t-nobody")
    with pytest.raises(NotFoundError):
        records.set_session_sandbox("ses-nope", None)


def test_sandbox_records(db: Database, tenant: str, session: str) -> None:
    records = Records(db)
    other = Keys(db).create("other").key.tenant
    other_session = records.create_session(other).id
    a = _sandbox(tenant, session, metadata={"team": "x", "run": "1"})
    b = _sandbox(tenant, session, metadata={"team": "y"})
    c = _sandbox(other, other_session, metadata={"team": "x"})
    for rec in (a, b, c):
        records.add_sandbox(rec)
    with pytest.raises(InvalidArgumentError):
        records.add_sandbox(a)
    with pytest.raises(InvalidArgumentError):
        records.add_sandbox(_sandbox(tenant, "ses-nope"))
    got = records.get_sandbox(a.id)
    assert got is not None and got.model_dump() == {
        **a.model_dump(),
        "created_at": got.created_at,
        "expires_at": got.expires_at,
    }
    assert abs(got.expires_at - a.expires_at) < timedelta(milliseconds=1)
    assert got.expires_at.tzinfo is not None
    assert records.get_sandbox(a.id, other) is None
    assert {r.id for r in records.list_sandboxes()} == {a.id, b.id, c.id}
    assert [r.id for r in records.list_sandboxes(tenant)] == [a.id, b.id]
    assert [r.id for r in records.list_sandboxes(metadata={"team": "x"})] == [a.id, c.id]
    assert [r.id for r in records.list_sandboxes(tenant, {"team": "x", "run": "1"})] == [a.id]
    assert records.list_sandboxes(tenant, {"team": "z"}) == []

    later = datetime.now(UTC) + timedelta(hours=1)
    records.set_sandbox_expiry(a.id, later)
    assert abs(records.get_sandbox(a.id).expires_at - later) < timedelta(milliseconds=1)
    with pytest.raises(NotFoundError):
        records.set_sandbox_expiry("sbx-nope", later)

    records.set_session_sandbox(session, a.id)
    assert records.get_session(session).sandbox_id == a.id
    assert records.end_sandbox(a.id)
    assert records.get_session(session).sandbox_id is None
    assert not records.end_sandbox(a.id)
    assert not records.end_sandbox("sbx-nope")
    ended = records.get_sandbox(a.id)
    assert ended is not None and ended.state == "ended" and ended.ended_at is not None
    assert [r.id for r in records.list_sandboxes(tenant)] == [b.id]
    assert [r.id for r in records.list_sandboxes(tenant, state="ended")] == [a.id]
    assert [r.id for r in records.list_sandboxes(tenant, state=None)] == [a.id, b.id]
    assert records.count_sandboxes_by_state() == {"running": 2, "ended": 1}


def test_executions(db: Database, tenant: str, session: str) -> None:
    records = Records(db)
    sandbox = _sandbox(tenant, session)
    records.add_sandbox(sandbox)
    x = ExecutionRecord(
        id="exe-1", session_id=session, sandbox_id=sandbox.id, kind="command", first_seq=3
    )
    y = ExecutionRecord(id="exe-2", session_id=session, sandbox_id="sbx-other", kind="code")
    records.add_execution(x)
    records.add_execution(y)
    with pytest.raises(InvalidArgumentError):
        records.add_execution(x)
    assert records.get_execution("exe-nope") is None
    records.set_execution_pid("exe-1", 4242)
    got = records.get_execution("exe-1")
    assert got is not None and (got.pid, got.state, got.first_seq, got.outcome) == (
        4242,
        "running",
        3,
        None,
    )
    assert [e.id for e in records.running_executions()] == ["exe-1", "exe-2"]
    assert [e.id for e in records.running_executions(sandbox.id)] == ["exe-1"]
    outcome = {"exit_code": 0, "nested": {"ok": True, "text": "é\u2603"}}
    records.end_execution("exe-1", outcome, 9)
    done = records.get_execution("exe-1")
    assert done is not None
    assert (done.state, done.outcome, done.last_seq) == ("ended", outcome, 9)
    assert done.ended_at is not None and done.ended_at >= done.created_at - timedelta(seconds=1)
    assert [e.id for e in records.running_executions()] == ["exe-2"]
    with pytest.raises(NotFoundError):
        records.set_execution_pid("exe-nope", 1)
    with pytest.raises(NotFoundError):
        records.end_execution("exe-nope", {}, None)


# idempotency


def test_idempotency(db: Database, tenant: str) -> None:
    records = Records(db)
    assert records.reserve_idempotency(tenant, "k1", "POST", "/v1/sandboxes", "h1") is None
    pending = records.reserve_idempotency(tenant, "k1", "POST", "/v1/sandboxes", "h1")
    assert pending is not None and pending.status is None and pending.body is None
    assert (pending.method, pending.path, pending.body_hash) == ("POST", "/v1/sandboxes", "h1")
    # another tenant's key of the same name is its own
    other = Keys(db).create("other").key.tenant
    assert records.reserve_idempotency(other, "k1", "POST", "/v1/x", "h9") is None

    body = bytes(range(256))
    records.complete_idempotency(tenant, "k1", 201, "application/json", body)
    replay = records.reserve_idempotency(tenant, "k1", "POST", "/v1/sandboxes", "h2")
    assert replay is not None
    assert (replay.status, replay.content_type, replay.body, replay.body_hash) == (
        201,
        "application/json",
        body,
        "h1",  # what was stored: the caller compares
    )
    records.release_idempotency(tenant, "k1")  # a completed answer stays
    assert records.reserve_idempotency(tenant, "k1", "POST", "/v1/sandboxes", "h1") is not None

    assert records.reserve_idempotency(tenant, "k2", "DELETE", "/v1/x", "h") is None
    records.release_idempotency(tenant, "k2")
    assert records.reserve_idempotency(tenant, "k2", "DELETE", "/v1/x", "h") is None

    for bad in ("", "x" * 256, "new\nline"):
        with pytest.raises(InvalidArgumentError):
            records.reserve_idempotency(tenant, bad, "POST", "/", "h")

    assert records.prune_idempotency(time.time() - 3600) == 0
    assert records.prune_idempotency(time.time() + 1) == 3
    assert records.reserve_idempotency(tenant, "k1", "POST", "/v1/sandboxes", "h1") is None


def test_idempotency_reservations_race(db: Database, tenant: str) -> None:
    records = Records(db)
    for round_ in range(5):
        answers = run_threads(
            4,
            lambda i, k=f"race-{round_}": records.reserve_idempotency(tenant, k, "POST", "/", "h"),
        )
        assert sum(a is None for a in answers) == 1


def test_a_second_database_object_keeps_this_process_locks(tmp_path: Path) -> None:
    """Opening the store again in a process that has it open (embedded sessions do, once per
    event loop) must not open and close the file itself: POSIX drops every lock the process
    holds on a file when any descriptor of it is closed. Another process closing its last
    connection then believes it is the only one, folds the write-ahead log in and deletes it,
    and this process's next writes go to a log nobody reads (found as "database disk image
    is malformed")."""
    url = sqlite_url(tmp_path)
    first = Database(url)
    first.migrate()
    keys = Keys(first)
    keys.create("before")  # this process now holds the file (a pooled connection)
    other = (
        "import sys\n"
        "from sandlot.store.database import Database\n"
        "from sandlot.store.keys import Keys\n"
        "db = Database(sys.argv[1])\n"
        "if sys.argv[2] == 'write':\n"
        "    Keys(db).create('other')\n"
        "else:\n"
        "    print(sorted(k.name for k in Keys(db).list()))\n"
        "db.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", other, url, mode],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    try:
        Database(url).close()  # a second object on the same file, in this process
        run("write")  # another process opens, writes and closes its last connection
        keys.create("after")  # this process writes again
        assert run("read") == "['after', 'before', 'other']"
    finally:
        first.close()
