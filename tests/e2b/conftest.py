"""The official E2B SDKs (``e2b``, ``e2b-code-interpreter``), unmodified, against a real
``sandlot serve`` on loopback: the environment variables a user sets (docs/e2b.md) point
them at the server, with an API key of a tenant of its own.

``other_key`` is a second tenant's key, for the tenancy attacks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from remote.server import ServerProcess


@pytest.fixture(scope="session")
def e2b_server() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="sle2b-", dir="/tmp"))
    process = ServerProcess(home).start()
    process.api_key = process.keys("create", "--name", "e2b-tests")  # type: ignore[attr-defined]
    process.other_key = process.keys("create", "--name", "other-tenant")  # type: ignore[attr-defined]
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sbx(e2b_server: ServerProcess) -> Iterator[Any]:
    """One E2B sandbox per test module (the SDK is given the server explicitly: the
    function-scoped environment is not set yet at module scope)."""
    from e2b import Sandbox

    key = e2b_server.api_key  # type: ignore[attr-defined]
    sandbox = Sandbox.create(
        timeout=600, api_key=key, api_url=e2b_server.url, sandbox_url=e2b_server.url
    )
    yield sandbox
    sandbox.kill()


@pytest.fixture(autouse=True)
def e2b_env(e2b_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """What a user exports to move E2B code onto sandlot."""
    monkeypatch.setenv("E2B_API_URL", e2b_server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", e2b_server.url)
    monkeypatch.setenv("E2B_API_KEY", e2b_server.api_key)  # type: ignore[attr-defined]
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("SANDLOT_URL", raising=False)
    return e2b_server
