"""A throwaway PostgreSQL cluster for tests: real PostgreSQL, no fakes.

A plain module, not a conftest: a test file that needs PostgreSQL imports the fixture::

    from pg import Postgres, postgres  # noqa: F401  (a fixture)

    def test_something(postgres: Postgres) -> None:
        url = postgres.new_database()   # a fresh, empty database; an SQLAlchemy URL

``postgres`` is session-scoped: one cluster per test run, started on first use (about 2 s),
listening on a Unix socket in its own temporary folder only (no TCP port), with durability
turned off for speed (fsync, synchronous_commit, full_page_writes), stopped and deleted at
the end. It needs the server binaries (Debian: ``apt-get install -y postgresql``, done by
scripts/setup.sh); without them the tests fail, never skip. As root the cluster runs as the
``postgres`` user (the server refuses to run as root). ``SANDLOT_PG_BIN`` may name another
folder holding ``initdb`` and ``pg_ctl``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PORT = 5432  # only names the socket file: the folder is private to this cluster


def find_bindir() -> Path | None:
    """The folder of initdb and pg_ctl: $SANDLOT_PG_BIN, the newest Debian install, or PATH."""
    if os.environ.get("SANDLOT_PG_BIN"):
        return Path(os.environ["SANDLOT_PG_BIN"])

    def version(path: str) -> int:
        found = re.search(r"/postgresql/(\d+)/", path)
        return int(found.group(1)) if found else 0

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if debian:
        return Path(debian[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """A running throwaway cluster."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="sl-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.socket_dir.mkdir()
        self.port = PORT
        self.user = "postgres"
        self._names = itertools.count(1)
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                pytest.fail(
                    "no 'postgres' user to run the test cluster as: run scripts/setup.sh "
                    "(apt-get install -y postgresql)",
                    pytrace=False,
                )
            for path in (self.root, self.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._prefix, *argv], cwd=self.root, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{tail}"
            )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(self.port),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def new_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = f"test_{next(self._names)}"
        with psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.user,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bindir = find_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/setup.sh "
            "(it installs the Debian package 'postgresql')",
            pytrace=False,
        )
    cluster = Postgres(bindir)
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(cluster.root, ignore_errors=True)
        raise
    try:
        yield cluster
    finally:
        cluster.stop()
