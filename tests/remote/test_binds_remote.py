"""Host binds through a real ``sandlot serve``: refused unless the operator allowed roots
(``--allow-bind-root``); beneath one, a read-write bind is the server machine's folder and
the sandbox's writes are owned by the user who runs the server; outside, refused (after the
server resolved symlinks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot

from .server import ServerProcess


@pytest.fixture(scope="module")
def folders() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="slbindr-", dir="/tmp"))
    for name in ("allowed/proj", "other"):
        (root / name).mkdir(parents=True)
    (root / "allowed" / "proj" / "README").write_text("on the server\n")
    (root / "allowed" / "out-link").symlink_to(root / "other")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def rooted(folders: Path) -> Iterator[sandlot.Client]:
    home = Path(tempfile.mkdtemp(prefix="slbrs-", dir="/tmp"))
    process = ServerProcess(
        home, args=("--kill-on-exit", "--allow-bind-root", str(folders / "allowed"))
    )
    process.start()
    yield sandlot.Client(url=process.url)
    process.stop()
    shutil.rmtree(home, ignore_errors=True)


def test_a_server_refuses_binds_by_default(folders: Path) -> None:
    bind = {"host": str(folders / "allowed" / "proj"), "path": "/project", "mode": "rw"}
    with pytest.raises(sandlot.InvalidArgumentError, match="--allow-bind-root"):
        sandlot.Sandbox.create(binds=[bind])
    s = sandlot.Session.create()
    with pytest.raises(sandlot.InvalidArgumentError, match="--allow-bind-root"):
        s.sandbox(binds=[bind]).__enter__()


def test_a_bind_beneath_an_allowed_root_works(rooted: sandlot.Client, folders: Path) -> None:
    proj = folders / "allowed" / "proj"
    binds = [
        {"host": str(proj), "path": "/project", "mode": "rw"},
        {"host": str(folders / "allowed"), "path": "/mnt/all"},
    ]
    with sandlot.Sandbox.create(binds=binds, client=rooted) as sb:
        done = sb.commands.run(
            "cat /project/README && echo w > /project/written && touch /mnt/all/x; echo end"
        )
        assert done.stdout == "on the server\nend\n"
        assert "Read-only file system" in done.stderr
    assert (proj / "written").read_text() == "w\n"
    assert (proj / "written").stat().st_uid == os.getuid()  # the server's user
    assert not (folders / "allowed" / "x").exists()


def test_binds_outside_the_roots_are_refused(rooted: sandlot.Client, folders: Path) -> None:
    for host in (
        str(folders / "other"),
        str(folders / "allowed" / "out-link"),
        "/etc",
        str(folders),
    ):
        with pytest.raises(sandlot.InvalidArgumentError, match="outside the roots"):
            sandlot.Sandbox.create(binds=[{"host": host, "path": "/project"}], client=rooted)
    with pytest.raises(sandlot.InvalidArgumentError, match="No such file"):
        missing = str(folders / "allowed" / "missing")
        sandlot.Sandbox.create(binds=[{"host": missing, "path": "/project"}], client=rooted)


def test_a_session_sandbox_takes_binds_each_time(rooted: sandlot.Client, folders: Path) -> None:
    """The session does not keep binds: each sandbox of it names them; the bound folder is
    not part of its checkpoints (only /workspace is)."""
    proj = folders / "allowed" / "proj"
    s = sandlot.Session.create(client=rooted)
    bind = {"host": str(proj), "path": "/project", "mode": "rw"}
    with s.sandbox(binds=[bind]) as sb:
        assert sb.commands.run("echo s1 > /project/from-session").exit_code == 0
    with s.sandbox() as sb:
        assert sb.commands.run("test -e /project").exit_code == 1
    with s.sandbox(binds=[bind]) as sb:
        assert sb.commands.run("cat /project/from-session").stdout == "s1\n"
    assert (proj / "from-session").stat().st_uid == os.getuid()


def test_the_server_refuses_to_allow_the_whole_host(tmp_path: Path) -> None:
    """--allow-bind-root / (also through a link to it, or a folder that does not exist) is
    refused at start, before the port is taken."""
    root = "/"
    env = {**os.environ, "SANDLOT_HOME": str(tmp_path)}
    env.pop("SANDLOT_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "serve", "--port", "0", "--allow-bind-root", root],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "--allow-bind-root" in done.stderr
