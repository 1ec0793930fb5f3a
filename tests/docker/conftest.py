"""The docker provider against a real Docker engine: no fakes.

``tests/docker_env.prepare()`` starts ``dockerd`` if none answers and builds the local test
images (no registry is reachable here). If Docker cannot run, these tests fail rather than
skip: a provider whose isolation tests silently skip proves nothing.

For the tests of this package the default provider is docker (``SANDLOT_PROVIDER`` and
``SANDLOT_PROVIDER_CONFIG``), so the embedded SDK tests re-run here unchanged create docker
sandboxes. The state folder (``SANDLOT_HOME``) comes from ``tests/conftest.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import docker_env
import pytest

import sandlot

IMAGE = docker_env.IMAGE
NO_PYTHON_IMAGE = docker_env.NO_PYTHON_IMAGE


@pytest.fixture(scope="package", autouse=True)
def docker_ready() -> Iterator[None]:
    """Engine and images up, and docker the default provider, before any sandbox of this
    package exists (package scope: module-scoped sandboxes of the shared tests are made
    before any function-scoped fixture runs, and the tests after this package, in the same
    session, get their default provider back)."""
    reason = docker_env.prepare()
    if reason is not None:
        pytest.fail(f"Docker tests cannot run: {reason}", pytrace=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SANDLOT_PROVIDER", "docker")
        patch.setenv("SANDLOT_PROVIDER_CONFIG", json.dumps({"image": IMAGE, "pull": "never"}))
        yield


@pytest.fixture
def sb() -> Iterator[sandlot.Sandbox]:
    """A fresh docker sandbox (the default provider here), killed after the test."""
    with sandlot.Sandbox.create() as box:
        assert box.info.provider == "docker"
        yield box
