"""Session-wide set-up shared by every test: an isolated sandlot state folder.

``SANDLOT_HOME`` is set here, at import time, before any test module creates a manager, so
the suite never touches the user's real state folder (records, sockets, agent copies). The
path stays short because each sandbox's Unix socket lives below it and socket paths must fit
in 108 bytes. Subprocesses started by tests inherit it through the environment.
"""

from __future__ import annotations

import os
import shutil
import tempfile

HOME = tempfile.mkdtemp(prefix="sl-", dir="/tmp")
os.environ["SANDLOT_HOME"] = HOME

# A loopback registry and images built without Docker, one of each per session wherever used.
pytest_plugins = ["registry"]


def pytest_report_header(config: object) -> str:
    return f"SANDLOT_HOME={HOME}"


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """Kill whatever sandbox a failed test left running, then drop the state folder. Pools
    go first: a pool left behind would refill after the kill, with sandboxes (a day's
    lifetime) whose state folder is about to go."""
    try:
        from sandlot.manager import Manager
        from sandlot.sdk.sync import _portal

        async def drop_pools() -> None:
            pools = Manager.current().pools
            for status in pools.list():
                await pools.remove(status.key)

        _portal.call(drop_pools())
    except Exception:
        pass
    try:
        import sandlot

        for info in sandlot.Sandbox.list():
            try:
                sandlot.Sandbox.connect(info.id).kill()
            except Exception:
                continue
        sandlot.Sandbox.gc()
    except Exception:
        pass
    if not os.environ.get("SANDLOT_TEST_KEEP_HOME"):
        try:  # workspaces gc leaves mounted (a detached sandbox still alive), then the folder
            from pathlib import Path

            from sandlot.providers import quota

            quota.release_under(Path(HOME))
        except Exception:
            pass
        shutil.rmtree(HOME, ignore_errors=True)
