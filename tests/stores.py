"""Database fixtures for the store's tests, each test run on SQLite and on PostgreSQL.

A plain module, not a conftest, like ``pg.py``: a test file imports the fixtures it uses::

    from stores import db, pg_store, postgres, session, tenant, url  # noqa: F401

(tests/unit/conftest.py does so for the unit tests.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import Postgres, postgres  # noqa: F401  (a fixture)

from sandlot.store.database import Database, metadata, sqlite_url
from sandlot.store.keys import Keys
from sandlot.store.records import Records


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    cluster: Postgres = request.getfixturevalue("postgres")
    return cluster.new_database()


@pytest.fixture(scope="module")
def pg_store(postgres: Postgres) -> str:  # noqa: F811
    """One migrated PostgreSQL database for a test file, emptied before each test."""
    url = postgres.new_database()
    database = Database(url)
    database.migrate()
    database.close()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        database = Database(sqlite_url(tmp_path))
        database.migrate()
    else:
        database = Database(request.getfixturevalue("pg_store"))
        with database.write() as conn:
            names = ", ".join(table.name for table in metadata.sorted_tables)
            conn.exec_driver_sql(f"TRUNCATE {names}")
    yield database
    database.close()


@pytest.fixture
def tenant(db: Database) -> str:
    return Keys(db).create("owner").key.tenant


@pytest.fixture
def session(db: Database, tenant: str) -> str:
    return Records(db).create_session(tenant).id
