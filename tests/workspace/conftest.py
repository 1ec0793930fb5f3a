"""Fixtures for the workspace store tests: a real SeaweedFS S3 server (``tests/s3.py``),
started once for the whole run on first use, a fresh bucket per test, and a local store in
the test's temporary folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from s3 import SeaweedFS, seaweedfs

from sandlot.workspace import WorkspaceStore, open_store


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedFS]:
    with seaweedfs() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WorkspaceStore]:
    """Each test that takes ``store`` runs against both stores."""
    if request.param == "local":
        url = "local"
    else:
        server: SeaweedFS = request.getfixturevalue("s3_env")
        url = server.new_prefix() + "/some/prefix"
    st = open_store(url, tmp_path / "home")
    try:
        yield st
    finally:
        await st.close()
