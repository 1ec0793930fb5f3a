"""Host binds in docker sandboxes: with binds the container runs as the user who runs
sandlot (unless ``user`` is set), so a read-write bind's new files are that user's on the
host; a read-only bind cannot be written; ``user`` set to another uid refuses a rw bind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dbinds")
    (root / "rw").mkdir()
    (root / "ro").mkdir()
    (root / "ro" / "data").write_text("kept\n")
    return root


@pytest.fixture(scope="module")
def sb(proj: Path) -> Iterator[sandlot.Sandbox]:
    binds = [
        {"host": str(proj / "rw"), "path": "/project", "mode": "rw"},
        {"host": str(proj / "ro"), "path": "/mnt/ro"},
    ]
    with sandlot.Sandbox.create(binds=binds) as box:
        assert box.provider == "docker"
        yield box


def test_rw_bind_writes_are_the_host_users(sb, proj):
    done = sb.commands.run("echo hi > /project/f && mkdir /project/d && id -u")
    assert done.exit_code == 0, done.stderr
    assert done.stdout.strip() == str(os.geteuid())
    for made in (proj / "rw" / "f", proj / "rw" / "d"):
        assert made.stat().st_uid == os.getuid()
    assert (proj / "rw" / "f").read_text() == "hi\n"


def test_ro_bind_cannot_be_written(sb, proj):
    done = sb.commands.run("cat /mnt/ro/data; echo x > /mnt/ro/data; touch /mnt/ro/new")
    assert done.stdout == "kept\n"
    assert done.stderr.count("Read-only file system") == 2, done.stderr
    assert sorted(os.listdir(proj / "ro")) == ["data"]


@pytest.mark.skipif(os.geteuid() == 1000, reason="needs a uid other than 1000")
def test_another_container_user_refuses_a_rw_bind(proj):
    bind = {"host": str(proj / "rw"), "path": "/project", "mode": "rw"}
    with pytest.raises(sandlot.InvalidArgumentError, match="user"):
        sandlot.Sandbox.create(binds=[bind], user="1000:1000")
