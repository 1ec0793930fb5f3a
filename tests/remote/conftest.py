"""Remote mode: the SDK against a real ``sandlot serve`` on loopback, started here.

``SANDLOT_URL`` is set for the whole remote session, so the SDK calls and fixtures shared
with the embedded integration tests (``sb`` and friends) create their sandboxes on the server.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.conftest import *  # noqa: F403 (the same fixtures, now remote)

from .server import ServerProcess


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="slsrv-", dir="/tmp"))
    process = ServerProcess(home).start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def remote_mode(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SANDLOT_URL", server.url)
    monkeypatch.delenv("SANDLOT_API_KEY", raising=False)
    return server.url
