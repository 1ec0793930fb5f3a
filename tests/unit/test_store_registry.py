"""The host registry (``state.db``): its numbered migrations, and a state folder of the old
layout (schema 4, secrets in a ``secrets.db`` of their own) opened by this sandlot: the
sandboxes and the secrets are kept, and the secrets still decrypt with the same key.

The old layout is written out here as the old code wrote it (its DDL copied, not imported),
so the test keeps meaning the same when the registry's schema moves on."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from sandlot.secrets.crypto import KEY_ENV, KEY_FILE, Cipher, encode_key
from sandlot.secrets.store import LocalSecrets
from sandlot.store import registry
from sandlot.store.registry import Store

VALUE = "sk-old-layout-5c2e9a71d3"

# The registry as sandlot wrote it at schema 4 (sandlot/store/sqlite.py, MIGRATIONS 1-4).
OLD_STATE = """
CREATE TABLE sandboxes (id TEXT PRIMARY KEY, provider TEXT NOT NULL, state TEXT NOT NULL,
    metadata TEXT NOT NULL, handle TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL, owner_pid INTEGER NOT NULL, owner_started INTEGER);
CREATE TABLE ports (host_port INTEGER PRIMARY KEY, sandbox_id TEXT NOT NULL,
    port INTEGER NOT NULL, UNIQUE (sandbox_id, port));
CREATE TABLE egress (sandbox_id TEXT PRIMARY KEY, settings TEXT NOT NULL);
CREATE TABLE egress_events (id INTEGER PRIMARY KEY AUTOINCREMENT, sandbox_id TEXT NOT NULL,
    created_at REAL NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX egress_events_sandbox ON egress_events (sandbox_id, id);
CREATE TABLE pools (key TEXT PRIMARY KEY, spec TEXT NOT NULL, size INTEGER NOT NULL,
    updated_at REAL NOT NULL);
CREATE TABLE pool_members (sandbox_id TEXT PRIMARY KEY, key TEXT NOT NULL,
    created_at REAL NOT NULL, ready INTEGER NOT NULL);
CREATE INDEX pool_members_key ON pool_members (key, ready, created_at);
PRAGMA user_version=4;
"""

# The embedded secret store as sandlot wrote it (sandlot/secrets/store.py, secrets.db).
OLD_SECRETS = """
CREATE TABLE IF NOT EXISTS secrets ( tenant_id TEXT NOT NULL, name TEXT NOT NULL,
    ciphertext BLOB NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, name))
"""


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def old_folder(home: Path, secrets: dict[str, str], *, at: float = 1_700_000_000.0) -> Cipher:
    """A state folder of the old layout: one sandbox in ``state.db`` (schema 4), ``secrets``
    encrypted in ``secrets.db`` with the key in ``secret.key``."""
    home.mkdir(mode=0o700)
    key = os.urandom(32)
    fd = os.open(home / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (encode_key(key) + "\n").encode())
    os.close(fd)
    (home / "state.db").touch(mode=0o600)
    with sqlite3.connect(home / "state.db") as state:
        state.executescript(OLD_STATE)
        state.execute(
            "INSERT INTO sandboxes VALUES ('sb-old', 'process', 'running', '{\"a\": \"b\"}',"
            " '{}', ?, ?, 1, NULL)",
            (at, at + 3600),
        )
    state.close()
    cipher = Cipher(key)
    old = sqlite3.connect(home / "secrets.db", isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute(OLD_SECRETS)
    for name, value in secrets.items():
        old.execute(
            "INSERT INTO secrets VALUES ('local', ?, ?, ?, ?)",
            (name, cipher.encrypt("local", name, value), at, at),
        )
    old.close()
    os.chmod(home / "secrets.db", 0o600)
    return cipher


def columns(db: Path, table: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
    conn.close()
    return [r[1] for r in rows]


def test_an_old_state_folder_keeps_its_sandboxes_and_secrets(tmp_path: Path) -> None:
    home = tmp_path / "state"
    cipher = old_folder(home, {"API_TOKEN": VALUE, "OTHER": "other-value"})
    with sqlite3.connect(home / "secrets.db") as conn:
        before = dict(conn.execute("SELECT name, ciphertext FROM secrets").fetchall())
    conn.close()

    store = Store(home)
    try:
        assert [info.id for info, _ in store.all()] == ["sb-old"]
        assert store.get("sb-old")[0].metadata == {"a": "b"}  # type: ignore[index]
    finally:
        store.close()
    # Moved: the old file renamed aside, never deleted; the rows in the registry as they were.
    assert not (home / "secrets.db").exists()
    assert (home / "secrets.db.migrated").exists()
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600
    with sqlite3.connect(home / "state.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == registry.SCHEMA_VERSION
        after = dict(conn.execute("SELECT name, ciphertext FROM secrets").fetchall())
    conn.close()
    assert after == before  # the same ciphertexts: the format did not change

    secrets = LocalSecrets(home)
    assert run(secrets.get("API_TOKEN")) == VALUE  # the same key file decrypts them
    assert [i.name for i in run(secrets.list())] == ["API_TOKEN", "OTHER"]
    assert run(secrets.list())[0].created_at.timestamp() == 1_700_000_000.0
    run(secrets.set("NEW", "new-value"))
    with sqlite3.connect(home / "state.db") as conn:
        (blob,) = conn.execute("SELECT ciphertext FROM secrets WHERE name = 'NEW'").fetchone()
    conn.close()
    assert cipher.decrypt("local", "NEW", blob) == "new-value"  # still the key in the file
    assert not (home / "secrets.db").exists()  # nothing writes the old file again


def test_the_secret_store_alone_adopts_the_old_file(tmp_path: Path) -> None:
    """A CLI call (``sandlot secrets ls``) may be the first to open the folder."""
    home = tmp_path / "state"
    old_folder(home, {"API_TOKEN": VALUE})
    assert run(LocalSecrets(home).get("API_TOKEN")) == VALUE
    assert (home / "secrets.db.migrated").exists() and not (home / "secrets.db").exists()
    store = Store(home)
    assert [info.id for info, _ in store.all()] == ["sb-old"]
    store.close()


def test_a_fresh_folder_gets_every_step_in_order(tmp_path: Path) -> None:
    assert sorted(registry.MIGRATIONS) == list(range(1, registry.SCHEMA_VERSION + 1))
    Store(tmp_path).close()
    db = tmp_path / "state.db"
    assert columns(db, "secrets") == ["tenant_id", "name", "ciphertext", "created_at", "updated_at"]
    assert "owner_started" in columns(db, "sandboxes") and columns(db, "pool_members")
    assert not list(tmp_path.glob("secrets.db*"))  # nothing to adopt, nothing made
    # The schema reached from every older version is the one a fresh file gets.
    fresh = _schema(db)
    for version in range(registry.SCHEMA_VERSION):
        path = tmp_path / f"v{version}" / "state.db"
        path.parent.mkdir()
        with sqlite3.connect(path) as conn:
            for step in range(1, version + 1):
                conn.executescript(registry.MIGRATIONS[step])
            conn.execute(f"PRAGMA user_version={version}")
        conn.close()
        Store(path.parent).close()
        assert _schema(path) == fresh, version


def _schema(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        found = [" ".join(r[0].split()) for r in rows]
    conn.close()
    return found


def test_adopting_keeps_the_newer_row_and_never_overwrites_a_backup(tmp_path: Path) -> None:
    """A sandlot from before, still running, may write ``secrets.db`` again after the move:
    the next open adopts it too; the newer of two rows of one name wins."""
    home = tmp_path / "state"
    cipher = old_folder(home, {"KEPT": "registry-value", "REPLACED": "old-value"})
    Store(home).close()
    old = sqlite3.connect(home / "secrets.db", isolation_level=None)
    old.execute(OLD_SECRETS)
    later = time.time() + 10
    for name, value, at in [("KEPT", "stale", 1.0), ("REPLACED", "newer", later)]:
        old.execute(
            "INSERT INTO secrets VALUES ('local', ?, ?, ?, ?)",
            (name, cipher.encrypt("local", name, value), at, at),
        )
    old.close()
    Store(home).close()
    secrets = LocalSecrets(home)
    assert run(secrets.get("KEPT")) == "registry-value"
    assert run(secrets.get("REPLACED")) == "newer"
    assert (home / "secrets.db.migrated").exists() and (home / "secrets.db.migrated.2").exists()


def test_an_unreadable_old_file_is_left_alone_and_the_registry_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "secrets.db").write_bytes(b"not a database, " * 256)
    with caplog.at_level(logging.WARNING, logger="sandlot.store.registry"):
        store = Store(tmp_path)
    store.close()
    assert "could not move the secrets" in caplog.text
    assert (tmp_path / "secrets.db").exists()  # kept for whoever can repair it


def test_a_registry_others_could_read_is_made_private(tmp_path: Path) -> None:
    """Sandlot created ``state.db`` with the umask's mode before it was 0600."""
    (tmp_path / "state.db").touch(mode=0o644)
    os.chmod(tmp_path / "state.db", 0o644)
    Store(tmp_path).close()
    assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600


def test_an_empty_old_file_is_moved_aside(tmp_path: Path) -> None:
    """``secrets.db`` created but never written (its table missing): nothing to copy."""
    (tmp_path / "secrets.db").touch(mode=0o600)
    conn = registry.open_registry(tmp_path)
    conn.close()
    assert not (tmp_path / "secrets.db").exists()
    assert (tmp_path / "secrets.db.migrated").exists()
