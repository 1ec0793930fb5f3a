"""Fixtures for the integration tests: real bubblewrap sandboxes, no fakes.

The state folder (``SANDLOT_HOME``) is set up in ``tests/conftest.py``. bubblewrap must be
installed (``scripts/setup.sh``); without it these tests fail rather than skip, because a
sandbox layer that silently skips its isolation tests proves nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

import sandlot


@pytest.fixture(scope="session", autouse=True)
def _bubblewrap_installed() -> None:
    assert shutil.which("bwrap"), "bubblewrap is not installed (run scripts/setup.sh)"


@pytest.fixture
def sb() -> Iterator[sandlot.Sandbox]:
    """A fresh bwrap sandbox, killed after the test."""
    with sandlot.Sandbox.create() as box:
        yield box
