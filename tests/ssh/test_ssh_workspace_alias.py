"""``workspace_alias`` over SSH: the remote bwrap mounts the workspace at it too; the
unisolated mode, which cannot mount, refuses it."""

from __future__ import annotations

import pytest

import sandlot

pytestmark = pytest.mark.timeout(120)


def test_the_remote_sandbox_mounts_the_alias() -> None:
    with sandlot.Sandbox.create(workspace_alias="/home/user", workdir="/home/user/w") as sb:
        assert sb.info.provider == "ssh"
        r = sb.commands.run("pwd && echo hi > f && cat /workspace/w/f && touch /home/x")
        assert r.stdout == "/home/user/w\nhi\n"
        assert "Read-only file system" in r.stderr
        assert sb.files.read("/workspace/w/f") == sb.files.read("/home/user/w/f") == "hi\n"


def test_unisolated_ssh_refuses_an_alias(ssh_settings: dict[str, object]) -> None:
    settings = {**ssh_settings, "isolation": "none"}
    with pytest.raises(sandlot.InvalidArgumentError, match="workspace_alias"):
        sandlot.Sandbox.create(provider="ssh", workspace_alias="/home/user", **settings)
