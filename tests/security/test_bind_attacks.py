"""Attacks through host binds (``binds=[{"host", "path", "mode"}]``): a sandbox with a
read-write bind of the user's folder tries to leave it (symlinks it plants, hard links,
remounts, writes through /proc), a caller names hostile host or sandbox paths, a symlink is
swapped in between the check and the mount, and a tenant asks a server to bind what its
operator did not allow."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from attacker import attack, succeeded
from remote.server import ServerProcess

import sandlot
from sandlot.models import Bind
from sandlot.providers import binds

pytestmark = pytest.mark.timeout(120)


def _victim() -> Path:
    """The host's side: a user's project, a read-only reference folder beside it, and a
    folder outside both that nothing may reach."""
    root = Path(tempfile.mkdtemp(prefix="slbind-", dir="/tmp"))
    for name in ("proj", "ref", "outside"):
        (root / name).mkdir()
    (root / "ref" / "data.txt").write_text("reference\n")
    (root / "outside" / "secret").write_text("never seen\n")
    return root


@pytest.fixture
def victim() -> Iterator[Path]:
    root = _victim()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def served_victim() -> Iterator[Path]:
    root = _victim()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.attack("escape a rw bind: planted symlinks, hard links, remount, /proc, umount")
def test_a_rw_bind_cannot_be_left(make_sandbox: Any, victim: Path) -> None:
    """Writes through links the sandbox plants in its rw bind follow the sandbox's own view
    (its read-only root), never the host's; the read-only bind cannot be made writable."""
    sb = make_sandbox(
        binds=[
            {"host": str(victim / "proj"), "path": "/project", "mode": "rw"},
            {"host": str(victim / "ref"), "path": "/mnt/ref"},
        ]
    )
    outside = str(victim / "outside")
    r = attack(
        sb,
        f"""
        def write(path):
            with open(path, "w") as f:
                f.write("x")
            return path
        os.symlink("/", "/project/root-link")
        os.symlink({outside!r}, "/project/outside-link")
        os.symlink("/mnt/ref", "/project/ref-link")
        attempt("through a link to /", lambda: write("/project/root-link/etc/planted"))
        attempt("through a link to the host path", lambda: write("/project/outside-link/x"))
        attempt("read the host path", lambda: open("/project/outside-link/secret").read())
        attempt("through a link to the ro bind", lambda: write("/project/ref-link/data.txt"))
        attempt("hard link the ro file", lambda: os.link("/mnt/ref/data.txt", "/project/hl"))
        attempt("dotdot out", lambda: write("/project/../escaped"))
        attempt("remount ro bind rw", lambda: sys_call("mount", None, "/mnt/ref", None,
                                                       0x20 | 0x1000, None))
        attempt("umount the bind", lambda: sys_call("umount2", "/project", 2))
        attempt("mount over the bind", lambda: sys_call("mount", "/proc/1/root", "/project",
                                                        None, 0x1000, None))
        attempt("via /proc/self/root", lambda: write("/proc/self/root/mnt/ref/data.txt"))
        attempt("via /proc/1/root", lambda: write("/proc/1/root/mnt/ref/new"))
        attempt("rename the bind", lambda: os.rename("/project", "/project2"))
        control = attempt("control", lambda: write("/project/probe"))
        report()
        """,
    )
    assert r["control"] == ["ok", "/project/probe"]
    worked = {k: v for k, v in succeeded(r).items() if k != "control"}
    assert not worked, f"the bind was left: {worked}"
    assert (victim / "proj" / "probe").read_text() == "x"
    assert not os.path.lexists("/etc/planted") and not (victim / "outside" / "x").exists()
    assert not (victim / "escaped").exists()
    assert (victim / "ref" / "data.txt").read_text() == "reference\n"
    # What the sandbox planted is in the user's folder (docs/security.md: the user's own
    # tools may follow these links later; the sandbox itself could not).
    assert os.readlink(victim / "proj" / "root-link") == "/"


HOSTILE_PATHS = [
    "/", "/proc", "/proc/1", "/dev", "/sys/fs", "/workspace", "/workspace/x", "/.sandlot",
    "/.sandlot/agent", "/etc", "/usr", "/tmp", "/project/../proc", "project", "//project",
    "/project/", "/project/.", "/p\0roc", "/" + "a" * 5000,
]  # fmt: skip


@pytest.mark.attack("a bind's sandbox path over /proc, /dev, the workspace, the agent, ...")
@pytest.mark.parametrize("provider", ["bwrap"], indirect=True)
def test_hostile_sandbox_paths_are_refused(make_sandbox: Any, victim: Path) -> None:
    for path in HOSTILE_PATHS:
        with pytest.raises(sandlot.InvalidArgumentError) as caught:
            make_sandbox(binds=[{"host": str(victim / "proj"), "path": path}])
        assert len(str(caught.value)) < 1000, path


@pytest.mark.attack("a bind's host path: a symlink to /, '..', relative, a device, missing")
@pytest.mark.parametrize("provider", ["bwrap"], indirect=True)
def test_hostile_host_paths_are_refused(make_sandbox: Any, victim: Path) -> None:
    link = victim / "to-root"
    link.symlink_to("/")
    proj = str(victim / "proj")
    for host in (str(link), "/", f"{proj}/..", f"{proj}/../outside", "proj", "/dev/null",
                 "/dev/zero", f"{proj}/missing", proj + "\0"):  # fmt: skip
        with pytest.raises(sandlot.InvalidArgumentError):
            make_sandbox(binds=[{"host": host, "path": "/project", "mode": "rw"}])


@pytest.mark.attack("swap a symlink into a bind's host path between the check and the mount")
def test_a_symlink_swapped_in_after_the_check_is_not_followed(victim: Path) -> None:
    """The host path is resolved and checked, then a folder on its way becomes a symlink
    (a sandbox with a rw bind of the parent could do this): the mount takes a descriptor
    opened without following symlinks, so the swap is refused, not followed to /etc."""
    (victim / "proj" / "sub" / "inner").mkdir(parents=True)
    resolved = binds.resolve([Bind(host=str(victim / "proj" / "sub" / "inner"), path="/p")])
    (victim / "proj" / "sub").rename(victim / "proj" / "sub-old")
    (victim / "proj" / "sub").symlink_to("/etc")
    (victim / "proj" / "inner").symlink_to("/etc")
    with pytest.raises(sandlot.InvalidArgumentError, match="changed since"):
        binds.open_all(resolved)
    swapped_last = Bind(host=str(victim / "proj" / "inner"), path="/p")
    with pytest.raises(sandlot.InvalidArgumentError, match="changed since"):
        binds.open_all([swapped_last])  # the last component a symlink too


# -- through a server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(served_victim: Path) -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="slbinds-", dir="/tmp"))
    root = str(served_victim / "proj")
    process = ServerProcess(home, args=("--kill-on-exit", "--allow-bind-root", root))
    process.start()
    yield process
    process.stop()
    shutil.rmtree(home, ignore_errors=True)


def _create(server: ServerProcess, binds_: Any) -> httpx.Response:
    body = {"binds": binds_, "provider": "bwrap"}
    return httpx.post(f"{server.url}/v1/sandboxes", json=body, timeout=60)


@pytest.mark.attack("a tenant binds /, /etc, outside the allowed root, via symlinks; probes files")
def test_a_server_binds_only_inside_its_allowed_roots(
    server: ServerProcess, served_victim: Path
) -> None:
    victim = served_victim
    proj = victim / "proj"
    (proj / "etc-link").symlink_to("/etc")
    (proj / "up-link").symlink_to(victim / "outside")
    (proj / "self-link").symlink_to(proj)
    hostile = [
        "/", "/etc", "/root", str(victim), str(victim / "outside"), str(proj / "etc-link"),
        str(proj / "up-link"), f"{proj}/../outside", f"{proj}-sibling", str(victim / "ref"),
    ]  # fmt: skip
    (victim / "proj-sibling").mkdir()  # a prefix of the root's name is not beneath it
    for host in hostile:
        answer = _create(server, [{"host": host, "path": "/project", "mode": "rw"}])
        assert answer.status_code in (400, 422), (host, answer.status_code, answer.text)
        assert "secret" not in answer.text
    # Probing the server's files: a missing path outside, or one behind a link planted in
    # the root, answers exactly as an existing one does.
    (proj / "probe-yes").symlink_to("/etc/passwd")
    (proj / "probe-no").symlink_to("/etc/no-such-file")
    probes = ["/etc/passwd", "/etc/no-such-file", str(proj / "probe-yes"), str(proj / "probe-no")]
    answers = {
        host: _create(server, [{"host": host, "path": "/p"}]).json()["message"].split(" is ")[1]
        for host in probes
    }
    assert len(set(answers.values())) == 1, answers
    for path in ("/proc", "/workspace", "/.sandlot/x"):
        answer = _create(server, [{"host": str(proj), "path": path}])
        assert answer.status_code in (400, 422), (path, answer.text)
    # The root itself, and a link inside it to inside it, are fine.
    for host in (str(proj), str(proj / "self-link")):
        answer = _create(server, [{"host": host, "path": "/project"}])
        assert answer.status_code in (200, 201), answer.text
        httpx.delete(f"{server.url}/v1/sandboxes/{answer.json()['id']}", timeout=30)
