"""Named volumes in bwrap sandboxes (docs/volumes.md): shared by sandboxes at once, surviving
them, size-capped (as root), refused removal while mounted, read-only mounts, and the
mount records a crashed control plane leaves behind."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import sandlot
from sandlot.errors import (
    InvalidArgumentError,
    ProviderUnavailableError,
    VolumeError,
    VolumeInUseError,
    VolumeNotFoundError,
)
from sandlot.providers import quota

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def shared() -> Iterator[str]:
    """A 32 MiB volume (uncapped where the host cannot cap), removed at the end."""
    name = "shared"
    sandlot.volumes.create(name, size=32 if quota.unavailable_reason() is None else None)
    yield name
    sandlot.volumes.remove(name, force=True)


@pytest.fixture(scope="module")
def pair(shared: str) -> Iterator[tuple[sandlot.Sandbox, sandlot.Sandbox]]:
    """Two sandboxes mounting it at once: one read-write, one read-only."""
    with (
        sandlot.Sandbox.create(volumes={shared: "/data"}) as one,
        sandlot.Sandbox.create(volumes=[{"name": shared, "path": "/mnt/in", "mode": "ro"}]) as two,
    ):
        yield one, two


def test_two_sandboxes_share_a_volume_at_once(pair, shared):
    one, two = pair
    done = one.commands.run("echo hello > /data/note && mkdir -p /data/sub && echo x > /data/sub/f")
    assert done.exit_code == 0, done.stderr
    assert two.commands.run("cat /mnt/in/note /mnt/in/sub/f").stdout == "hello\nx\n"
    info = sandlot.volumes.get(shared)
    assert sorted(info.mounted_by) == sorted([one.id, two.id])
    assert info.used_bytes > 0


def test_a_read_only_mount_refuses_writes(pair):
    _, two = pair
    done = two.commands.run("echo no > /mnt/in/other")
    assert done.exit_code != 0
    assert "Read-only" in done.stderr or "Permission denied" in done.stderr


def test_removal_is_refused_while_mounted(pair, shared):
    with pytest.raises(VolumeInUseError) as caught:
        sandlot.volumes.remove(shared)
    assert caught.value.code == "volume_in_use"
    assert sandlot.volumes.get(shared).name == shared  # nothing was lost


def test_data_survives_the_sandboxes_and_another_writes_it_again():
    sandlot.volumes.create("keep", size=None if quota.unavailable_reason() else 16)
    with sandlot.Sandbox.create(volumes={"keep": "/data"}) as first:
        assert first.commands.run("echo kept > /data/f").exit_code == 0
    # A later sandbox (as root: another user namespace, the same volume uid) changes the
    # first one's file and makes its own.
    with sandlot.Sandbox.create(volumes={"keep": "/srv/keep"}) as second:
        done = second.commands.run("cat /srv/keep/f && echo again >> /srv/keep/f && :")
        assert done.exit_code == 0, done.stderr
        assert done.stdout == "kept\n"
    assert sandlot.volumes.get("keep").mounted_by == []
    sandlot.volumes.remove("keep")  # allowed once nobody mounts it
    with pytest.raises(VolumeNotFoundError):
        sandlot.volumes.get("keep")


@pytest.mark.skipif(not ROOT, reason="the size cap is a loop-mounted image: root only")
def test_the_size_limit_is_enforced():
    sandlot.volumes.create("small", size=16)
    try:
        with sandlot.Sandbox.create(volumes={"small": "/data"}) as sb:
            done = sb.commands.run("head -c 40M /dev/zero > /data/big; echo rc=$?")
            assert "No space left on device" in done.stderr
            assert sandlot.volumes.get("small").used_bytes <= 16 << 20
    finally:
        sandlot.volumes.remove("small", force=True)


def test_bad_names_sizes_and_duplicates_are_refused():
    for bad in ("../x", "A", "", ".hidden", "a/b", "x" * 64):
        with pytest.raises(InvalidArgumentError):
            sandlot.volumes.create(bad)
    with pytest.raises(InvalidArgumentError):
        sandlot.Sandbox.create(volumes={"../x": "/data"})
    with pytest.raises(VolumeNotFoundError):
        sandlot.Sandbox.create(volumes={"nothere": "/data"})
    with pytest.raises(InvalidArgumentError, match="cannot mount volumes"):
        sandlot.Sandbox.create("process", volumes={"nothere": "/data"})
    sandlot.volumes.create("twice", size=None if quota.unavailable_reason() else 16)
    try:
        with pytest.raises(VolumeError):
            sandlot.volumes.create("twice")
    finally:
        sandlot.volumes.remove("twice")
    if not ROOT:
        with pytest.raises(ProviderUnavailableError):
            sandlot.volumes.create("sized", size="1G")


def test_a_crashed_control_plane_leaves_no_volume_in_use(shared):
    """A mount record whose sandbox the registry no longer has (its process died and was
    reaped, or never finished) does not keep the volume in use."""
    from sandlot.store import default_home

    records = default_home() / "volumes" / "local" / shared / "mounts"
    (records / "sb-000000000000").write_text("1")
    assert "sb-000000000000" not in sandlot.volumes.get(shared).mounted_by
    assert not (records / "sb-000000000000").exists()


def test_a_session_mounts_its_volumes_in_every_sandbox(shared):
    sandlot.volumes.create("sesvol", size=None if quota.unavailable_reason() else 16)
    session = sandlot.Session.create(volumes={"sesvol": "/data"})
    try:
        assert [v.name for v in session.info.volumes] == ["sesvol"]
        with session.sandbox() as first:
            assert first.commands.run("echo from-first > /data/f").exit_code == 0
        with session.sandbox(volumes={shared: "/mnt/more"}) as second:  # plus its own
            done = second.commands.run("cat /data/f && test -d /mnt/more")
            assert done.exit_code == 0, done.stderr
            assert done.stdout == "from-first\n"
            with pytest.raises(InvalidArgumentError):  # over the session's own
                session.sandbox(volumes={shared: "/data/in"}).__enter__()
    finally:
        session.delete()
        sandlot.volumes.remove("sesvol", force=True)


def test_forced_removal_leaves_running_sandboxes_their_files():
    from sandlot.store import default_home

    removed = default_home() / "volumes" / ".removed"
    sandlot.volumes.create("forced", size=None if quota.unavailable_reason() else 16)
    before = set(removed.iterdir()) if removed.exists() else set()
    with sandlot.Sandbox.create(volumes={"forced": "/data"}) as sb:
        assert sb.commands.run("echo still > /data/f").exit_code == 0
        sandlot.volumes.remove("forced", force=True)
        with pytest.raises(VolumeNotFoundError):
            sandlot.volumes.get("forced")
        assert sb.commands.run("cat /data/f").stdout == "still\n"
        moved = set(removed.iterdir()) - before
        assert len(moved) == 1  # kept while mounted
    sandlot.Sandbox.gc()
    assert not any(path.exists() for path in moved)


def test_the_cli_creates_lists_mounts_and_removes():
    import json
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sandlot.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    size = [] if quota.unavailable_reason() else ["--size", "16M"]
    assert cli("volume", "create", "clivol", *size).returncode == 0
    try:
        ran = cli("run", "--volume", "clivol:/data", "--", "sh", "-c", "echo cli > /data/f")
        assert ran.returncode == 0, ran.stderr
        ro = cli("run", "-v", "clivol:/srv/v:ro", "--", "sh", "-c", "cat /srv/v/f; touch /srv/v/g")
        assert ro.stdout == "cli\n" and ro.returncode != 0
        listed = {v["name"]: v for v in json.loads(cli("volume", "ls", "--json").stdout)}
        assert listed["clivol"]["mounted_by"] == [] and listed["clivol"]["used_bytes"] > 0
    finally:
        assert cli("volume", "rm", "clivol").returncode == 0
    with pytest.raises(VolumeNotFoundError):
        sandlot.volumes.get("clivol")


def test_a_volume_syncs_to_a_workspace_store_and_seeds_another():
    """The local store here (S3 runs the same code: tests/workspace cover its backend)."""
    size = None if quota.unavailable_reason() else 16
    sandlot.volumes.create("src", size=size)
    sandlot.volumes.create("dst", size=size)
    try:
        with sandlot.Sandbox.create(volumes={"src": "/data"}) as sb:
            made = sb.commands.run("mkdir -p /data/d && echo one > /data/d/f && ln -s d/f /data/l")
            assert made.exit_code == 0, made.stderr
            first = sandlot.volumes.sync("src", "local")
            sb.commands.run("echo two > /data/d/g")
            second = sandlot.volumes.sync("src", "local")
            assert second.number == first.number + 1
        # Seeding a volume copies the other's latest checkpoint under its own key: same name.
        assert sandlot.volumes.seed("dst", "local") is None  # nothing stored for dst yet
        from sandlot.workspace.volumes import store_key

        assert store_key("src") != store_key("dst") != store_key("src", "tenant")
        sandlot.volumes.remove("src")
        sandlot.volumes.create("src", size=size)
        with sandlot.Sandbox.create(volumes={"src": "/data"}) as busy:
            with pytest.raises(VolumeInUseError):
                sandlot.volumes.seed("src", "local")
            busy.kill()
        assert sandlot.volumes.seed("src", "local").number == second.number
        with sandlot.Sandbox.create(volumes={"src": "/data"}) as sb:
            done = sb.commands.run("cat /data/d/f /data/d/g /data/l && echo three > /data/d/f")
            assert done.exit_code == 0, done.stderr  # the restored files are the volume's own
            assert done.stdout == "one\ntwo\none\n"
    finally:
        sandlot.volumes.remove("src", force=True)
        sandlot.volumes.remove("dst", force=True)
