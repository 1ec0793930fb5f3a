"""The agent frameworks' own code, unmodified, over sandlot (sandlot.integrations): their
conformance suites and scripted models against real bwrap sandboxes on this host."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session", autouse=True)
def _bubblewrap_installed() -> None:
    assert shutil.which("bwrap"), "bubblewrap is not installed (run scripts/setup.sh)"
