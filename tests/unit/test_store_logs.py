"""The event log's storage on real databases (SQLite in a temporary folder and a throwaway
PostgreSQL cluster): compressed output, retention by age and by tenant size, the ``pruned``
answer in place of what was dropped, the migration of a database the previous schema made,
and SQLite giving freed pages back."""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from sandlot.store import encoding, retention
from sandlot.store.database import (
    Database,
    alembic_config,
    events,
    sessions,
    sqlite_url,
)
from sandlot.store.keys import Keys
from sandlot.store.records import Records
from sandlot.store.retention import Pruned, Retention
from sandlot.transcript.eventlog import Event, EventLog
from sandlot.transcript.logwriter import LogWriter

TEXT = b"".join(
    b"%06d  -rw-r--r-- 1 root root  4096 Dec  6 13:10 file-%d.txt\n" % (i, i) for i in range(20000)
)


def stored(db: Database, session_id: str) -> list[tuple[int, str, int, int]]:
    """(seq, kind, stored length, encoding) of each row of the session's log."""
    query = (
        select(events.c.seq, events.c.kind, events.c.data, events.c.encoding)
        .where(events.c.session_id == session_id)
        .order_by(events.c.seq)
    )
    with db.read() as conn:
        return [(r[0], r[1], len(r[2]), r[3]) for r in conn.execute(query)]


def session_row(db: Database, session_id: str) -> Any:
    with db.read() as conn:
        return conn.execute(select(sessions).where(sessions.c.id == session_id)).one()


def drain(db: Database, older_than: float, cap: int | None) -> list[Pruned]:
    """Every step a maintenance pass would take."""
    steps, retention = [], Retention(db)
    while (step := retention.step(older_than, cap)) is not None:
        steps.append(step)
        assert len(steps) < 1000, "retention made no progress"
    return steps


def pruned(event: Event) -> dict[str, Any]:
    assert event.kind == "pruned"
    value: dict[str, Any] = json.loads(event.data)
    return value


def tick() -> float:
    """A time strictly after every timestamp written so far, and strictly before any later."""
    now = time.time()
    while time.time() <= now:
        time.sleep(0.001)
    return time.time()


# compression


def writers(db: Database) -> dict[str, Callable[[str, list[Any]], list[Event]]]:
    """The two ways the server appends: LogWriter (SQLite's raw hot path) and EventLog."""
    log = EventLog(db)
    return {"logwriter": LogWriter(db, log, Records(db)).append, "eventlog": log.append}


@pytest.mark.parametrize("writer", ["logwriter", "eventlog"])
def test_big_output_is_stored_compressed_and_read_back_plain(
    db: Database, session: str, writer: str
) -> None:
    noise = os.urandom(256 * 1024)
    note = json.dumps({"event": "note", "pad": "x" * 8000}).encode()
    items = [
        ("x", "stdout", TEXT),  # 1.3 MB of text: compressed
        ("x", "stderr", noise),  # incompressible: as it is
        ("x", "stdout", b"small\n"),  # under the threshold: as it is
        ("x", "stdout", b"a" * (encoding.THRESHOLD - 1)),
        ("x", "stdout", b"a" * encoding.THRESHOLD),  # at the threshold: compressed
        ("x", "note", note),  # not output: as it is
        ("x", "stdout", noise[:8192] + TEXT[:200_000]),  # mixed, sample in the text
    ]
    appended = writers(db)[writer](session, items)
    assert [e.data for e in appended] == [data for _, _, data in items]  # plain sizes
    got = EventLog(db).read(session)
    assert [(e.kind, e.data) for e in got] == [(kind, data) for _, kind, data in items]
    assert all(type(e.data) is bytes for e in got)
    rows = stored(db, session)
    assert [r[3] for r in rows] == [1, 0, 0, 0, 1, 0, 1]
    assert rows[0][2] < len(TEXT) / 3
    assert [r[2] for r in rows[1:4]] == [len(noise), 6, encoding.THRESHOLD - 1]
    # log_bytes counts what is stored
    assert session_row(db, session).log_bytes == sum(r[2] for r in rows)
    assert [e.data for e in EventLog(db).read(session, after=4, execution_id="x")] == [
        items[4][2],
        note,
        items[6][2],
    ]


def test_incompressible_big_chunks_are_judged_by_a_sample() -> None:
    noise = os.urandom(1024 * 1024)
    assert encoding.pack("stdout", noise) == (noise, encoding.RAW)
    packed, how = encoding.pack("stdout", TEXT)
    assert how == encoding.ZLIB and zlib.decompress(packed) == TEXT
    assert encoding.unpack(packed, how) == TEXT
    with pytest.raises(ValueError, match="newer sandlot"):
        encoding.unpack(b"", 7)


# retention by age


def test_age_drops_whole_logs_of_sessions_ended_before_the_cutoff(
    db: Database, tenant: str
) -> None:
    log, records = EventLog(db), Records(db)
    old, active, recent = (records.create_session(tenant).id for _ in range(3))
    for sid in (old, active, recent):
        log.append(sid, [("x", "started", b"{}"), ("x", "stdout", TEXT), ("x", "exit", b"{}")])
    assert records.end_session(old)
    cutoff = tick()
    assert records.end_session(recent)
    steps = drain(db, cutoff, None)
    assert [(s.session_id, s.why, s.through, s.events) for s in steps] == [(old, "retention", 3, 3)]
    [marker] = log.read(old)
    assert (marker.seq, marker.execution_id) == (3, None)
    assert pruned(marker) == {
        "event": "pruned",
        "through": 3,
        "why": "retention",
        "at": marker.created_at,
    }
    assert session_row(db, old).log_bytes == 0
    assert len(log.read(active)) == len(log.read(recent)) == 3
    assert drain(db, cutoff, None) == []
    # numbering never restarts; a late event is read after the marker, and pruned in turn
    assert log.append(old, [(None, "late", b"")])[0].seq == 4
    assert [e.kind for e in log.read(old)] == ["pruned", "late"]
    assert [e.kind for e in log.read(old, after=3)] == ["late"]


# retention by size, per tenant


def fill(log: EventLog, sid: str, n: int, size: int = 100_000) -> None:
    """n incompressible output events of ``size`` bytes: stored bytes are plain bytes."""
    log.append(sid, [("x", "started", b"{}")])
    log.append(sid, [("x", "stdout", os.urandom(size)) for _ in range(n)])


def test_tenant_cap_drops_oldest_ended_sessions_first_never_a_running_one(
    db: Database, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH_ROWS", 1)  # one event per step: the cut is exact
    log, records = EventLog(db), Records(db)
    other = Keys(db).create("other").key.tenant
    first, second, running, last = (records.create_session(tenant).id for _ in range(4))
    theirs = records.create_session(other).id
    for sid, n in ((first, 3), (second, 3), (running, 6), (last, 3), (theirs, 5)):
        fill(log, sid, n)
        if sid != running:
            assert records.end_session(sid)
    ours = sum(session_row(db, s).log_bytes for s in (first, second, running, last))
    assert ours > 1_500_000
    # 500 kB over: all of the oldest (4 events), then the second's first 2 (started + 1)
    cap = ours - 500_000
    steps = drain(db, 0.0, cap)
    assert [(s.session_id, s.through, s.why) for s in steps] == [
        (first, 1, "tenant_log_bytes"),
        (first, 2, "tenant_log_bytes"),
        (first, 3, "tenant_log_bytes"),
        (first, 4, "tenant_log_bytes"),
        (second, 1, "tenant_log_bytes"),
        (second, 2, "tenant_log_bytes"),
        (second, 3, "tenant_log_bytes"),
    ]
    assert sum(session_row(db, s).log_bytes for s in (first, second, running, last)) <= cap
    assert [e.seq for e in log.read(first)] == [4]
    marker, *rest = log.read(second)
    assert pruned(marker)["through"] == 3 and pruned(marker)["why"] == "tenant_log_bytes"
    assert [e.seq for e in rest] == [4]
    assert [e.seq for e in log.read(second, after=3)] == [4]  # after the cut: no marker
    # the running session, the newest ended one and the other tenant (under the cap) stay
    assert [len(log.read(s)) for s in (running, last, theirs)] == [7, 4, 6]
    # a cap of nothing: every ended log of the tenant goes, the running one stays whole
    monkeypatch.setattr(retention, "BATCH_ROWS", 500)
    assert {s.session_id for s in drain(db, 0.0, 0)} == {second, last, theirs}
    assert [e.kind for e in log.read(last)] == ["pruned"]
    assert len(log.read(running)) == 7 and session_row(db, running).pruned_seq == 0


def test_a_step_is_bounded_in_bytes(
    db: Database, session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH_BYTES", 250_000)
    log = EventLog(db)
    fill(log, session, 6)
    Records(db).end_session(session)
    steps = drain(db, 0.0, 0)
    # started (2 bytes) and 100 kB events: a step stops at the event that reaches 250 kB
    assert [(s.through, s.events, s.bytes) for s in steps] == [(4, 4, 300_002), (7, 3, 300_000)]


def test_an_execution_read_answers_for_its_dropped_events(db: Database, session: str) -> None:
    log = EventLog(db)
    log.append(session, [("x1", "started", b"{}"), ("x1", "stdout", b"one"), ("x1", "exit", b"{}")])
    log.append(session, [("x2", "started", b"{}"), ("x2", "stdout", b"two")])
    with db.write() as conn:  # as retention leaves it after a cut inside x2
        conn.execute(events.delete().where(events.c.seq <= 4))
        conn.execute(sessions.update().values(pruned_seq=4, pruned_why="tenant_log_bytes"))
    [marker, two] = log.read(session, execution_id="x2")
    assert (marker.seq, marker.execution_id, pruned(marker)["through"]) == (4, "x2", 4)
    assert two.data == b"two"
    [marker] = log.read(session, execution_id="x1")
    assert (marker.kind, marker.execution_id) == ("pruned", "x1")
    log.append(session, [("x3", "started", b"{}")])
    assert [e.kind for e in log.read(session, execution_id="x3")] == ["started"]  # untouched
    assert [e.seq for e in log.read(session, limit=2)] == [4, 5]  # the marker counts


# migration from the previous schema


def test_migrating_a_database_the_previous_schema_made(url: str) -> None:
    from alembic import command

    db = Database(url)
    try:
        with db.write() as conn:
            command.upgrade(alembic_config(conn), "0003")
        now = time.time()
        with db.write() as conn:  # rows as the previous sandlot wrote them
            conn.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('t-1', 'old', :now)"),
                {"now": now},
            )
            for sid, last in (("ses-kept", 3), ("ses-cut", 5), ("ses-gone", 2), ("ses-new", 0)):
                conn.execute(
                    text(
                        "INSERT INTO sessions (id, tenant_id, metadata, status, last_seq, "
                        "created_at, updated_at) VALUES (:id, 't-1', '{}', 'ended', :last, "
                        ":now, :now)"
                    ),
                    {"id": sid, "last": last, "now": now},
                )
            # ses-cut's first three events were pruned, ses-gone's all
            for sid, seq in (
                ("ses-kept", 1),
                ("ses-kept", 2),
                ("ses-kept", 3),
                ("ses-cut", 4),
                ("ses-cut", 5),
            ):
                conn.execute(
                    text(
                        "INSERT INTO events (session_id, seq, kind, data, created_at) "
                        "VALUES (:id, :seq, 'stdout', :data, :now)"
                    ),
                    {"id": sid, "seq": seq, "data": TEXT[: 1000 * seq], "now": now},
                )
        db.migrate()
        log = EventLog(db)
        assert [e.data for e in log.read("ses-kept")] == [TEXT[:1000], TEXT[:2000], TEXT[:3000]]
        assert [session_row(db, s).log_bytes for s in ("ses-kept", "ses-cut", "ses-gone")] == [
            6000,
            9000,
            0,
        ]
        assert [session_row(db, s).pruned_seq for s in ("ses-kept", "ses-cut", "ses-gone")] == [
            0,
            3,
            2,
        ]
        assert [e.seq for e in log.read("ses-cut")] == [3, 4, 5]
        assert pruned(log.read("ses-gone")[0]) == {
            "event": "pruned",
            "through": 2,
            "why": "retention",
            "at": None,
        }
        assert log.read("ses-new") == []
        # new output is compressed; a downgrade stores every event plainly again
        log.append("ses-new", [("x", "stdout", TEXT)])
        assert stored(db, "ses-new")[0][3] == encoding.ZLIB
        with db.write() as conn:
            command.downgrade(alembic_config(conn), "0003")
            data = conn.exec_driver_sql(
                "SELECT data FROM events WHERE session_id = 'ses-new'"
            ).scalar_one()
        assert bytes(data) == TEXT
    finally:
        db.close()


# SQLite's file


def test_sqlite_gives_pruned_pages_back(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    try:
        db.migrate()
        tenant = Keys(db).create("k").key.tenant
        records, log = Records(db), EventLog(db)
        sid = records.create_session(tenant).id
        fill(log, sid, 100)  # 10 MB
        records.end_session(sid)
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        full = (tmp_path / "server.db").stat().st_size
        assert full > 10_000_000
        drain(db, time.time() + 1, None)
        freed = 0
        while given := db.reclaim(256):
            assert given <= 256
            freed += given
        assert freed > 2000  # pages of 4 KiB
        assert db.reclaim() == 0
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        assert (tmp_path / "server.db").stat().st_size < full - 8_000_000
    finally:
        db.close()
