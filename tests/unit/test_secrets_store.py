"""The secret stores on real databases: the embedded SQLite file, and the server's table on
SQLite and on a throwaway PostgreSQL cluster (tests/pg.py). Values are encrypted at rest:
the raw bytes of every file (and of PostgreSQL's table) never hold one."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import Postgres, postgres  # noqa: F401  (a fixture)

from sandlot.errors import InvalidArgumentError, SecretError, SecretNotFoundError
from sandlot.secrets.crypto import KEY_ENV, Cipher, encode_key
from sandlot.secrets.store import (
    MAX_VALUE_BYTES,
    DatabaseSecrets,
    LocalSecrets,
    SecretStore,
    secret_store,
)
from sandlot.store.database import Database, sqlite_url

VALUE = "sk-live-7f3a9c1e5b2d4086aa11"  # what must never show in plain text
OTHER = "another-value-0042-zz"


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def pg_url(postgres: Postgres) -> str:  # noqa: F811
    url = postgres.new_database()
    database = Database(url)
    database.migrate()
    database.close()
    return url


@pytest.fixture(params=["local", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecretStore]:
    """Each backend, empty, with its key file in ``tmp_path``."""
    if request.param == "local":
        yield LocalSecrets(tmp_path)
        return
    if request.param == "sqlite":
        db = Database(sqlite_url(tmp_path))
        db.migrate()
    else:
        db = Database(request.getfixturevalue("pg_url"))
    yield DatabaseSecrets(db, "t-one", home=tmp_path)
    db.close()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_set_get_list_delete(store: SecretStore) -> None:
    assert run(store.list()) == []
    run(store.set("B_TOKEN", VALUE))
    run(store.set("a.name-1", "x" * 10))
    assert run(store.get("B_TOKEN")) == VALUE
    first = run(store.list())
    assert [i.name for i in first] == ["B_TOKEN", "a.name-1"]
    assert all(i.created_at == i.updated_at and i.created_at.tzinfo for i in first)
    assert VALUE not in repr(first) and VALUE not in str([i.model_dump() for i in first])

    run(store.set("B_TOKEN", OTHER))  # replaced: created stays, updated moves
    assert run(store.get("B_TOKEN")) == OTHER
    again = {i.name: i for i in run(store.list())}
    assert again["B_TOKEN"].created_at == first[0].created_at
    assert again["B_TOKEN"].updated_at > first[0].updated_at

    assert run(store.delete("B_TOKEN")) is True
    assert run(store.delete("B_TOKEN")) is False
    with pytest.raises(SecretNotFoundError, match="no secret 'B_TOKEN'") as caught:
        run(store.get("B_TOKEN"))
    assert caught.value.details == {"name": "B_TOKEN"}
    assert [i.name for i in run(store.list())] == ["a.name-1"]


def test_values_are_checked_without_being_quoted(store: SecretStore) -> None:
    run(store.set("BIG", "é" * (MAX_VALUE_BYTES // 2)))  # exactly 64 KiB of UTF-8
    assert run(store.get("BIG")) == "é" * (MAX_VALUE_BYTES // 2)
    bad = [
        ("x" * (MAX_VALUE_BYTES + 1), "at most 65536 bytes"),
        ("é" * (MAX_VALUE_BYTES // 2) + "x", "at most 65536 bytes"),
        ("secret\x00part", "NUL"),
        ("half a pair \ud800", "surrogate"),
        (b"bytes-value", "text"),
    ]
    for value, message in bad:
        with pytest.raises(InvalidArgumentError, match=message) as caught:
            run(store.set("NAME", value))  # type: ignore[arg-type]
        assert str(value)[:12] not in str(caught.value)  # never quotes the value
    for name in ["", "1abc", "a b", "a/b", "../x", "x" * 129, "é"]:
        with pytest.raises(InvalidArgumentError, match="invalid secret name"):
            run(store.set(name, VALUE))
        with pytest.raises(InvalidArgumentError, match="invalid secret name"):
            run(store.get(name))
    assert [i.name for i in run(store.list())] == ["BIG"]


def test_a_value_stored_under_another_key_is_a_secret_error(
    store: SecretStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(store.set("TOKEN", VALUE))
    monkeypatch.setenv(KEY_ENV, encode_key(os.urandom(32)))
    fresh = (
        LocalSecrets(tmp_path)
        if isinstance(store, LocalSecrets)
        else DatabaseSecrets(store.db, "t-one", home=tmp_path)  # type: ignore[attr-defined]
    )
    with pytest.raises(SecretError, match="'TOKEN' does not decrypt with this key"):
        run(fresh.get("TOKEN"))
    assert [i.name for i in run(fresh.list())] == ["TOKEN"]  # listing needs no key


def _raw(paths: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in paths if p.exists())


def test_the_local_file_is_private_and_holds_no_value_in_plain_text(tmp_path: Path) -> None:
    store = LocalSecrets(tmp_path)
    run(store.set("WARMUP", OTHER))
    path = tmp_path / "state.db"
    # A reader holds the database open, so the WAL is not checkpointed away: its bytes count.
    reader = sqlite3.connect(path)
    try:
        reader.execute("SELECT count(*) FROM secrets").fetchall()
        run(store.set("TOKEN", VALUE))
        run(store.set("TOKEN2", VALUE * 3))
        wal = tmp_path / "state.db-wal"
        assert wal.exists() and wal.stat().st_size > 0
        raw = _raw([path, wal])
        assert b"TOKEN2" in raw  # the names are there in the clear: the right bytes were read
        for needle in (VALUE, OTHER, VALUE[4:20]):
            assert needle.encode() not in raw
        for file in (path, wal):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
    finally:
        reader.close()
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    assert run(store.get("TOKEN")) == VALUE


def test_a_ciphertext_copied_to_another_name_does_not_decrypt(tmp_path: Path) -> None:
    store = LocalSecrets(tmp_path)
    run(store.set("REAL", VALUE))
    run(store.set("DECOY", "decoy-value"))
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute(
            "UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets WHERE name = 'REAL')"
            " WHERE name = 'DECOY'"
        )
    with pytest.raises(SecretError, match="'DECOY' does not decrypt"):
        run(store.get("DECOY"))
    assert run(store.get("REAL")) == VALUE


def test_tenants_of_one_database_see_only_their_own(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    try:
        alice = DatabaseSecrets(db, "alice", home=tmp_path)
        bob = DatabaseSecrets(db, "bob", home=tmp_path)
        run(alice.set("TOKEN", VALUE))
        assert run(bob.list()) == []
        with pytest.raises(SecretNotFoundError):
            run(bob.get("TOKEN"))
        assert run(bob.delete("TOKEN")) is False
        run(bob.set("TOKEN", OTHER))
        assert (run(alice.get("TOKEN")), run(bob.get("TOKEN"))) == (VALUE, OTHER)
        # Bob's ciphertext moved into Alice's row does not decrypt (bound to its tenant).
        with db.write() as conn:
            conn.exec_driver_sql(
                "UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets "
                "WHERE tenant_id = 'bob') WHERE tenant_id = 'alice'"
            )
        with pytest.raises(SecretError, match="does not decrypt"):
            run(alice.get("TOKEN"))
    finally:
        db.close()


def test_the_server_sqlite_file_holds_no_value_in_plain_text(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    try:
        store = DatabaseSecrets(db, "t", home=tmp_path)
        with db.read() as _conn:  # an open connection keeps the WAL in place
            run(store.set("TOKEN", VALUE))
            files = [tmp_path / "server.db", tmp_path / "server.db-wal"]
            raw = _raw(files)
            assert b"TOKEN" in raw and files[1].exists()
            assert VALUE.encode() not in raw
        assert run(store.get("TOKEN")) == VALUE
    finally:
        db.close()


def test_postgresql_holds_no_value_in_plain_text(pg_url: str, tmp_path: Path) -> None:
    db = Database(pg_url)
    try:
        store = DatabaseSecrets(db, "t-pg", home=tmp_path)
        run(store.set("PG_TOKEN", VALUE))
        with db.write() as conn:
            conn.exec_driver_sql("CHECKPOINT")  # the table's pages on disk
            heap = conn.exec_driver_sql(
                "SELECT pg_read_binary_file(pg_relation_filepath('secrets'))"
            ).scalar_one()
            dump = conn.exec_driver_sql(
                "SELECT string_agg(t::text, '|') FROM secrets t"
            ).scalar_one()
            stored = conn.exec_driver_sql("SELECT ciphertext FROM secrets").scalar_one()
        heap = bytes(heap)
        assert b"PG_TOKEN" in heap  # the right bytes: the row is there
        assert VALUE.encode() not in heap
        assert "PG_TOKEN" in dump and VALUE not in dump
        assert VALUE.encode() not in bytes(stored)
        assert run(store.get("PG_TOKEN")) == VALUE
    finally:
        db.close()


def test_a_given_cipher_and_writer_are_used(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    writes: list[str] = []

    async def writer(fn, *args):  # type: ignore[no-untyped-def]
        writes.append(fn.__name__)
        return await asyncio.to_thread(fn, *args)

    try:
        cipher = Cipher(os.urandom(32))
        store = DatabaseSecrets(db, "t", cipher=cipher, writer=writer)
        run(store.set("A_NAME", VALUE))
        run(store.delete("A_NAME"))
        assert writes == ["_set", "_delete"]
        assert not (tmp_path / "secret.key").exists()  # the cipher given, no key file made
    finally:
        db.close()


def test_the_embedded_store_lives_in_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDLOT_HOME", str(tmp_path / "state"))
    store = secret_store()
    assert isinstance(store, LocalSecrets) and store.path == tmp_path / "state" / "state.db"
    run(store.set("X_1", VALUE))
    assert run(secret_store(tmp_path / "state").get("X_1")) == VALUE
    assert VALUE not in repr(store)
