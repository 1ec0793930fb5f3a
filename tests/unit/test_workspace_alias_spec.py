"""SandboxSpec.workspace_alias: the rule at the boundary, the providers' arguments for it, and
a working folder beneath it made beneath /workspace on the host."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sandlot.models import SandboxSpec, alias_of
from sandlot.providers import bwrap, docker_config, spawn
from sandlot.remote.backend import spec_body


@pytest.mark.parametrize(
    "alias", ["/home/user", "/mnt/data", "/srv/app", "/data/x", "/home/a/b/c/d/e", "/home/u.1_-x"]
)
def test_accepted(alias: str) -> None:
    assert SandboxSpec(workspace_alias=alias).workspace_alias == alias


def test_default_is_none() -> None:
    assert SandboxSpec().workspace_alias is None


@pytest.mark.parametrize(
    "alias",
    [
        "/", "/home", "/mnt", "home/user", "", "/etc/user", "/usr/local", "/proc/self",
        "/tmp/x", "/workspace/x", "/var/lib", "/root/x", "/opt/x", "/homes/x",
        "/home/user/", "//home/user", "/home//user", "/home/./user", "/home/../etc",
        "/home/user/..", "/home/.hidden", "/home/us er", "/home/user\n", "/home/u\0x",
        "/home/a/b/c/d/e/f", "/home/" + "x" * 252, "/home/ü",
    ],
)  # fmt: skip
def test_refused(alias: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SandboxSpec(workspace_alias=alias)
    assert "workspace_alias" in str(caught.value)


def test_alias_of() -> None:
    assert alias_of("/home/user", "/home/user") == "/workspace"
    assert alias_of("/home/user/a/b", "/home/user") == "/workspace/a/b"
    assert alias_of("/home/username", "/home/user") == "/home/username"
    assert alias_of("/home/user/a", None) == "/home/user/a"


def test_bwrap_binds_the_workspace_twice() -> None:
    args = bwrap.mount_args("/host/ws", "/host/agent", 16, "/home/user/x")
    binds = [args[i + 1 : i + 3] for i, a in enumerate(args) if a == "--bind"]
    assert binds == [["/host/ws", "/workspace"], ["/host/ws", "/home/user/x"]]
    dirs = [args[i + 1] for i, a in enumerate(args) if a == "--dir"]
    assert dirs == ["/home", "/home/user"]
    assert bwrap.mount_args("/host/ws", "/host/agent", 16) == bwrap.mount_args(
        "/host/ws", "/host/agent", 16, None
    )
    assert bwrap.writable_args("/home/user")[-2:] == ["--writable", "/home/user"]


def test_bwrap_refuses_an_alias_that_a_read_only_bind_hides() -> None:
    from sandlot.errors import InvalidArgumentError

    for binds in (["/home"], ["/home/user/"], ["/home/user/sub"], ["/"]):
        with pytest.raises(InvalidArgumentError):
            bwrap._check_alias("/home/user", binds)
    bwrap._check_alias("/home/user", ["/home/username", "/opt"])


def test_docker_mounts_the_workspace_at_the_alias(tmp_path: Path) -> None:
    spec = SandboxSpec(workspace_alias="/home/user")
    config = docker_config.DockerConfig(image="img")
    settings = docker_config.container_settings(
        "sb", spec, config, (tmp_path / "ws", tmp_path / "agent", tmp_path / "run"), "h", 0
    )
    host = settings["HostConfig"]
    mounts = {m["Target"]: m for m in host["Mounts"]}
    assert mounts["/home/user"]["Source"] == mounts["/workspace"]["Source"] == str(tmp_path / "ws")
    assert not mounts["/home/user"]["ReadOnly"] and host["ReadonlyRootfs"]
    assert "/home/user" in settings["Cmd"]


def test_workdir_beneath_the_alias_is_made_in_the_workspace(tmp_path: Path) -> None:
    spawn.make_workspace(tmp_path, "/home/user/a/b", alias="/home/user")
    assert (tmp_path / "workspace" / "a" / "b").is_dir()
    assert not (tmp_path / "workspace" / "home").exists()


def test_workdir_through_a_symlink_is_refused(tmp_path: Path) -> None:
    from sandlot.errors import InvalidArgumentError

    (tmp_path / "workspace").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "workspace" / "a").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidArgumentError):
        spawn.make_workspace(tmp_path, "/home/user/a/b", alias="/home/user")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_remote_body_carries_it_only_when_set() -> None:
    assert "workspace_alias" not in spec_body(SandboxSpec())
    body = spec_body(SandboxSpec(workspace_alias="/home/user"))
    assert SandboxSpec.model_validate(body).workspace_alias == "/home/user"
