"""One ``sandlot serve`` with API keys for several tenants, started once per test process
and shared by the tests that need tenants (tests/remote/test_volumes_remote.py and
tests/security/test_volume_attacks.py): a server start costs seconds."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from .server import ServerProcess

TENANTS = ("alice", "bob", "carol")
VOLUME_COUNT = 3  # the per-tenant volume quota it runs with

_started: tuple[ServerProcess, dict[str, str]] | None = None


def make_keys(home: Path, *names: str) -> dict[str, str]:
    """A key (and a tenant) per name in the server's database, made here rather than by
    `sandlot keys create` (a process start each)."""
    from sandlot.store.database import Database, sqlite_url
    from sandlot.store.keys import Keys

    db = Database(sqlite_url(home))
    try:
        db.migrate()
        return {name: Keys(db).create(name).token for name in names}
    finally:
        db.close()


def keyed_server() -> tuple[ServerProcess, dict[str, str]]:
    """The server and each tenant's key (stopped when the test process exits)."""
    global _started
    if _started is None:
        home = Path(tempfile.mkdtemp(prefix="slkeyed-", dir="/tmp"))
        args = ("--kill-on-exit", "--volume-count", str(VOLUME_COUNT))
        process = ServerProcess(home, args=args)
        keys = make_keys(home, *TENANTS)
        process.start()
        atexit.register(_stop, process, home)
        _started = (process, keys)
    return _started


def _stop(process: ServerProcess, home: Path) -> None:
    from sandlot.providers import quota

    process.stop()
    quota.release_under(home)  # volumes left (as root: loop mounts), never deleted through
    shutil.rmtree(home, ignore_errors=True)
