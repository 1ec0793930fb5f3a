"""The ``ssh`` provider against a real OpenSSH server (``tests/ssh_env.py``), started once per
session in its own network namespace: a separate host as far as the network goes.

Every sandbox these tests create without naming a provider goes over SSH:
``SANDLOT_PROVIDER=ssh`` and ``SANDLOT_PROVIDER_CONFIG`` (the server's address, keys and
known_hosts, and a remote folder under /tmp) are set for each test. The remote side runs on
this machine's file system, as it would with an NFS home; nothing is faked. If sshd cannot
start, the tests fail: they never skip.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from integration.conftest import *  # noqa: F403 (the same fixtures, now over ssh)
from ssh_env import SshServer

import sandlot

PYTHON = "/usr/bin/python3"  # root's login shell puts a pyenv shim first on PATH


@pytest.fixture(scope="session")
def ssh_server() -> Iterator[SshServer]:
    server = SshServer().start()
    try:
        yield server
    finally:
        _kill_ssh_sandboxes()  # while sshd still answers: nothing outlives the session
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def remote_dir() -> Iterator[str]:
    """sandlot's folder on the remote host (short: agent sockets live below it)."""
    path = tempfile.mkdtemp(prefix="slr-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_settings(ssh_server: SshServer, remote_dir: str) -> dict[str, object]:
    """Settings for ``provider="ssh"`` that reach the test server; bwrap is required."""
    return ssh_server.provider_config(python=PYTHON, remote_dir=remote_dir, isolation="bwrap")


@pytest.fixture(scope="package", autouse=True)
def ssh_by_default(ssh_settings: dict[str, object]) -> Iterator[None]:
    """Package-wide, so module-scoped sandboxes (``box`` in the code tests) go over SSH too,
    and the tests after this package, in the same session, get their default back."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SANDLOT_PROVIDER", "ssh")
        patch.setenv("SANDLOT_PROVIDER_CONFIG", json.dumps(ssh_settings))
        yield


def _kill_ssh_sandboxes() -> None:
    for info in sandlot.Sandbox.list():
        if info.provider == "ssh":
            try:
                sandlot.Sandbox.connect(info.id).kill()
            except Exception:
                continue
