"""Attacks through ``workspace_alias``, the workspace's second mount (E2B's /home/user):
a caller who names a system path, or an odd one, for it; a sandbox that tries to move,
replace, unmount or remount it, or to escape the workspace through it; a workspace that
plants symlinks named like the alias's parents before a sandbox mounts it."""

from __future__ import annotations

import os
from typing import Any

import pytest
from attacker import attack, succeeded
from conftest import spec_for

import sandlot
from sandlot.manager.sessions import Sessions

pytestmark = pytest.mark.timeout(120)
HOME = "/home/user"

HOSTILE = [
    "/", "/proc", "/proc/self", "/sys/fs", "/dev/shm", "/etc", "/etc/cron.d", "/usr/bin",
    "/bin/x", "/lib/x", "/lib64/x", "/var/run", "/run/x", "/tmp/x", "/workspace",
    "/workspace/x", "/root/x", "/boot/x", "/.sandlot/x", "/home", "/home/../etc",
    "/home/user/../../etc", "/home/./user", "/home//user", "//home/user", "/home/user/",
    "home/user", "../home/user", "", "/home/user\0/etc", "/home/user\n/etc", "/home/\tx",
    "/home/" + "a" * 10_000, "/home" + "/a" * 50, "/home/user/.", "/home/..", "/home/ä",
    "/home/-rf",
]  # fmt: skip


@pytest.mark.attack("workspace_alias at a system path, relative, unnormalised, NUL, 10,000 chars")
@pytest.mark.parametrize("alias", HOSTILE, ids=[repr(a)[:30] for a in HOSTILE])
def test_hostile_aliases_are_refused(make_sandbox: Any, alias: str) -> None:
    """Every one is refused before a provider sees it: no sandbox, and the message says
    what the rule is (never the 10,000 characters back)."""
    with pytest.raises(sandlot.InvalidArgumentError) as caught:
        make_sandbox(workspace_alias=alias)
    assert "workspace_alias" in str(caught.value)
    assert len(str(caught.value)) < 1000


@pytest.mark.attack("move, replace, unmount or remount the workspace's alias from inside")
def test_the_alias_cannot_be_moved_or_remounted(make_sandbox: Any) -> None:
    """The attacker tries to take the alias's place: unmount it, mount over it (the host's
    root through /proc/1/root), rename or remove it, put a symlink to / in its stead or
    beside it, and write outside the workspace through its parent. Each is refused; the
    same write through the alias lands in /workspace."""
    sb = make_sandbox(workspace_alias=HOME, workdir=HOME)
    r = attack(
        sb,
        """
        def write(path):
            with open(path, "w") as f:
                f.write("x")
            return path
        attempt("umount", lambda: sys_call("umount2", "/home/user", 2))
        attempt("mount over", lambda: sys_call("mount", "/proc/1/root", "/home/user", None,
                                               0x1000, None))
        attempt("remount rw /home", lambda: sys_call("mount", None, "/home", None,
                                                     0x20 | 0x1000, None))
        attempt("rename", lambda: os.rename("/home/user", "/home/moved"))
        attempt("rmdir", lambda: os.rmdir("/home/user"))
        attempt("symlink beside", lambda: os.symlink("/", "/home/evil"))
        attempt("write beside", lambda: write("/home/evil.txt"))
        attempt("write parent of parent", lambda: write("/home/../x"))
        attempt("mkdir beside", lambda: os.mkdir("/home/user2"))
        os.symlink("/", "/home/user/root-link")  # inside the workspace: allowed, harmless
        attempt("write through an in-workspace link", lambda: write("/home/user/root-link/x"))
        attempt("write etc through it", lambda: write("/home/user/root-link/etc/x"))
        control = attempt("control", lambda: write("/home/user/probe"))
        report(seen=open("/workspace/probe").read())
        """,
    )
    assert r["control"] == ["ok", "/home/user/probe"] and r["seen"] == "x"
    worked = {k: v for k, v in succeeded(r).items() if k not in ("control",)}
    assert not worked, f"the alias was moved or escaped: {sorted(worked)}"
    assert not os.path.lexists("/x") and not os.path.lexists("/etc/x")
    # The sandbox still sees its workspace at both paths.
    assert sb.files.read(f"{HOME}/probe") == sb.files.read("/workspace/probe") == "x"


@pytest.mark.attack("the file API: remove the alias, or empty it through its parent")
def test_the_file_api_does_not_remove_the_alias(make_sandbox: Any) -> None:
    sb = make_sandbox(workspace_alias=HOME)
    sb.files.write("/workspace/precious", "kept")
    for path in (HOME, HOME + "/", "/home", "/home/user/.."):
        with pytest.raises(sandlot.SandlotError):
            sb.files.remove(path)
    assert sb.files.read(f"{HOME}/precious") == "kept"


@pytest.fixture
async def sessions(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SANDLOT_REAP_INTERVAL", "3600")
    found = await Sessions.local()
    yield found
    await found.close()


@pytest.mark.attack("symlinks named like the alias's parents planted in a restored workspace")
async def test_planted_symlinks_do_not_redirect_the_mount(
    sessions: Sessions, provider: str, request: pytest.FixtureRequest
) -> None:
    """A first sandbox of a session (no alias) fills its workspace with symlinks named like
    the alias and its parents (home -> /etc, home/user, user -> /root, workspace -> /) and
    a checkpoint keeps them. The next sandbox mounts the alias: its parents are made in the
    sandbox's new root, not in the workspace, so the links are only files of the workspace
    (seen there as links), the alias is the workspace, and the host's /etc and /root are
    neither shown nor written."""
    settings = spec_for(provider, request)
    settings.pop("provider")
    s = await sandlot.AsyncSession.create()
    try:
        async with s.sandbox(provider=provider, **settings) as sb:
            r = await sb.commands.run(
                "cd /workspace && ln -s /etc home && ln -s /root user && ln -s / workspace"
                " && mkdir -p real && ln -s /etc real/user && echo ok"
            )
            assert r.stdout == "ok\n", r.stderr
        async with s.sandbox(provider=provider, workspace_alias=HOME, **settings) as sb:
            r = await sb.commands.run(
                f"stat -c %i /workspace {HOME}; readlink {HOME}/home {HOME}/user; "
                f"echo x > {HOME}/written; ls /home"
            )
            lines = r.stdout.split("\n")
            assert lines[0] == lines[1], r.stdout  # the alias is the workspace itself
            assert lines[2:5] == ["/etc", "/root", "user"], r.stdout
            assert await sb.files.read("/workspace/written") == "x\n"
            etc = await sb.commands.run("ls /etc | head -50")
            assert "written" not in etc.stdout
        assert not os.path.exists("/etc/written") and not os.path.exists("/root/written")
        async with s.sandbox(
            provider=provider, workspace_alias="/data/real/user", **settings
        ) as sb:
            # /workspace/real/user is a link to /etc; /data/real/user is the workspace.
            r = await sb.commands.run("stat -c %i /workspace /data/real/user")
            first, second = r.stdout.split()
            assert first == second
    finally:
        await s.delete()
