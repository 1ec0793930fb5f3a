"""Providers: bwrap is the default and isolates; ``process`` runs only when asked by name."""

from __future__ import annotations

import os

import pytest

import sandlot
from sandlot.providers import provider_class

from .helpers import home, sandbox_folder

pytestmark = pytest.mark.filterwarnings("ignore:the 'process' provider:RuntimeWarning")


def test_default_provider_is_bwrap_and_isolated(sb: sandlot.Sandbox) -> None:
    assert sb.provider == "bwrap"
    assert sb.isolated is True
    assert sb.info.provider == "bwrap"


def test_process_provider_by_name_is_unisolated() -> None:
    with sandlot.Sandbox.create("process") as sb:
        assert sb.provider == "process"
        assert sb.isolated is False
        assert sb.info.provider == "process"
        r = sb.commands.run("echo hi; echo oops >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 3)
        # It really is the host: same user, same PID namespace.
        assert sb.commands.run("id -u").stdout.strip() == str(os.getuid())
        ns = sb.commands.run("readlink /proc/self/ns/pid").stdout.strip()
        assert ns == os.readlink("/proc/self/ns/pid")
        # /workspace in file operations maps onto the sandbox's host folder.
        sb.files.write("/workspace/a.txt", "hello")
        assert sb.files.read("/workspace/a.txt") == "hello"
        assert (sandbox_folder(sb.id) / "workspace" / "a.txt").read_text() == "hello"
        assert [e.name for e in sb.files.list("/workspace")] == ["a.txt"]
        assert sb.commands.run("cat a.txt").stdout == "hello"  # cwd is the workspace
        assert sb.id in {i.id for i in sandlot.Sandbox.list()}
    assert sb.id not in {i.id for i in sandlot.Sandbox.list()}


def test_process_provider_timeout_and_background() -> None:
    with sandlot.Sandbox.create("process") as sb:
        h = sb.commands.run("sleep 600", background=True)
        assert h.kill() is True
        assert h.wait().signal == 9
        try:
            sb.commands.run("echo partial; sleep 30", timeout=0.5)
        except sandlot.CommandTimeoutError as exc:
            assert exc.stdout == "partial\n"
        else:
            raise AssertionError("no CommandTimeoutError")


def test_provider_info_on_this_host() -> None:
    """What ``sandlot providers`` shows: bwrap works here (it is installed and user
    namespaces are on, as every other test proves), and process says it does not isolate."""
    process = provider_class("process")(home()).info()
    assert (process.name, process.available, process.isolated) == ("process", True, False)
    bwrap = provider_class("bwrap")(home()).info()
    assert bwrap.isolated is True
    assert bwrap.available is True, bwrap.reason
    assert bwrap.reason is None
