"""/workspace size caps (issue 15, hole 6): real bwrap sandboxes, real loop mounts, as root.

A capped workspace is a sparse ext4 image loop-mounted at the sandbox's folder
(:mod:`sandlot.providers.quota`). These tests write past the cap from inside, check what the
host saw, and check that nothing stays mounted or attached after a kill or after gc of a
crashed creator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import sandlot
from sandlot.providers import quota
from sandlot.providers.bwrap import BwrapProvider

from .helpers import home, sandbox_folder, wait_until

pytestmark = pytest.mark.skipif(
    quota.unavailable_reason() is not None, reason=f"no caps here: {quota.unavailable_reason()}"
)
MiB = 1 << 20


def host_bytes(folder: Path) -> int:
    """Disk the host gave the sandbox's folder: every file's allocated blocks, the image's
    included, not counting what is inside the mounted workspace."""
    device = folder.stat().st_dev
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if (Path(root) / d).stat().st_dev == device]
        for name in files:
            total += (Path(root) / name).lstat().st_blocks * 512
    return total


def bwrap_capabilities() -> list[str]:
    return BwrapProvider(home()).info().capabilities


def leftovers_of(sandbox_id: str) -> list[str]:
    return quota.leftovers(sandbox_folder(sandbox_id))


def test_writing_past_the_cap_fails_inside_and_the_sandbox_stays_usable() -> None:
    with sandlot.Sandbox.create(resources={"disk_mb": 64}) as sb:
        size = sb.commands.run("df -B1M --output=size /workspace | tail -1")
        assert 48 <= int(size.stdout) <= 64, size.stdout

        full = sb.commands.run("dd if=/dev/zero of=/workspace/big bs=1M count=200")
        assert full.exit_code != 0
        assert "No space left on device" in full.stderr
        with pytest.raises(sandlot.NoSpaceError):
            sb.files.write("/workspace/more.bin", b"x" * (8 * MiB))
        assert host_bytes(sandbox_folder(sb.id)) <= 65 * MiB

        # Full is not broken: delete, and the space is there again.
        assert sb.commands.run("rm /workspace/big").exit_code == 0
        sb.files.write("/workspace/after.txt", "still here")
        assert sb.files.read("/workspace/after.txt") == "still here"
        again = sb.commands.run("dd if=/dev/zero of=/workspace/again bs=1M count=32")
        assert again.exit_code == 0, again.stderr


def test_the_default_cap_is_10_gib_and_costs_the_host_nothing_until_written(
    sb: sandlot.Sandbox,
) -> None:
    size = sb.commands.run("df -B1M --output=size /workspace | tail -1")
    assert 9 * 1024 < int(size.stdout) <= quota.DEFAULT_MB, size.stdout
    folder = sandbox_folder(sb.id)
    assert os.path.ismount(folder / "workspace")
    assert (folder / quota.IMAGE).stat().st_size == quota.DEFAULT_MB * MiB
    assert host_bytes(folder) < 4 * MiB  # sparse
    assert "disk-quota" in bwrap_capabilities()


def test_what_is_made_before_the_start_lands_in_the_capped_file_system() -> None:
    with sandlot.Sandbox.create(workdir="/workspace/a/b", resources={"disk_mb": 32}) as sb:
        done = sb.commands.run("stat -c '%d %U' /workspace /workspace/a /workspace/a/b; pwd")
        lines = done.stdout.split()
        devices, owners = set(lines[0:6:2]), set(lines[1:6:2])
        assert len(devices) == 1, done.stdout  # one file system: the capped one
        assert owners == {"sandbox"}, done.stdout  # owned by the sandbox user
        assert lines[-1] == "/workspace/a/b"
        assert sb.commands.run("ls -A /workspace").stdout.split() == ["a"]  # no lost+found


def test_an_explicit_size_the_host_cannot_enforce_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a normal user (no loop mounts). Faked: the suite runs as root, so the host's
    answer is replaced; what follows from it is real."""
    monkeypatch.setattr(quota, "unavailable_reason", lambda: "loop mounts need root")
    with pytest.raises(sandlot.ProviderUnavailableError, match="disk_mb=64 cannot be enforced"):
        sandlot.Sandbox.create(resources={"disk_mb": 64})
    with sandlot.Sandbox.create() as sb:  # the default: uncapped, and the info says so
        assert not os.path.ismount(sandbox_folder(sb.id) / "workspace")
        assert sb.commands.run("touch /workspace/ok").exit_code == 0
    assert "disk-quota" not in bwrap_capabilities()


@pytest.mark.parametrize("disk_mb", [0, 15, (8 << 20) + 1])
def test_sizes_out_of_bounds_are_refused(disk_mb: int) -> None:
    with pytest.raises(sandlot.InvalidArgumentError, match="disk_mb"):
        sandlot.Sandbox.create(resources={"disk_mb": disk_mb})


def test_nothing_stays_mounted_or_attached_after_a_kill() -> None:
    sb = sandlot.Sandbox.create(resources={"disk_mb": 64})
    sb.commands.run("head -c 1M /dev/urandom > /workspace/f")
    assert leftovers_of(sb.id)  # a mount and a loop device (else the check below proves nothing)
    sb.kill()
    assert wait_until(lambda: not leftovers_of(sb.id), 10), leftovers_of(sb.id)
    assert wait_until(lambda: not sandbox_folder(sb.id).exists(), 10)


CRASH_SCRIPT = """
import time, sandlot
sb = sandlot.Sandbox.create(resources={"disk_mb": 48}, metadata={"purpose": "quota-gc"})
sb.commands.run("head -c 4M /dev/urandom > /workspace/left-behind")
print(sb.id, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(90)
def test_gc_after_a_crashed_creator_unmounts_its_workspace_and_drops_its_spares() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    images = home() / quota.SPARES
    mine = f"/{owner.pid}-"  # its spares' images (mounted nowhere: held by descriptors)
    try:
        assert owner.stdout is not None
        sandbox_id = owner.stdout.readline().strip()
        assert sandbox_id.startswith("sb-"), sandbox_id
        # The crash will leave the workspace mounted, and the creator's spares (made in
        # the background: wait for one).
        assert leftovers_of(sandbox_id)
        assert wait_until(lambda: any(mine in x for x in quota.leftovers(images)), 10)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    # The spares' mounts died with their process, and with them their loop devices.
    assert wait_until(lambda: not [x for x in quota.leftovers(images) if mine in x], 10)

    report = sandlot.Sandbox.gc()

    assert sandbox_id in report.removed
    assert leftovers_of(sandbox_id) == []
    assert not sandbox_folder(sandbox_id).exists()
    assert not any(name.startswith(f"{owner.pid}-") for name in os.listdir(images))


async def test_a_capped_workspace_that_cannot_be_saved_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session store is down as a sandbox ends: its files are copied out of the capped
    file system (a mount point cannot be moved), then the folder goes as usual."""
    from sandlot.manager.workspaces import UNSAVED, Workspaces

    folder = tmp_path / "sandboxes" / "sb-unsaved"
    folder.mkdir(parents=True)
    await quota.cap(folder / "workspace", 16, tmp_path)
    (folder / "workspace" / "work.txt").write_text("precious")
    workspaces = Workspaces(tmp_path)

    async def store_down(*args: object) -> None:
        raise OSError("the store is down")

    monkeypatch.setattr(workspaces, "checkpoint", store_down)
    with pytest.raises(OSError, match="down"):
        await workspaces.save_released("sb-unsaved", {"id": "ses-1", "workspace": "x"}, folder)
    (kept,) = (tmp_path / UNSAVED).iterdir()
    assert (kept / "work.txt").read_text() == "precious"
    quota.remove_folder(folder)
    assert not folder.exists() and quota.leftovers(folder) == []


async def test_release_under_unmounts_everything_below_a_folder(tmp_path: Path) -> None:
    """Before a whole state folder is deleted (the test suite's own clean-up does this)."""
    for name in ("a", "b"):
        (tmp_path / "sandboxes" / name).mkdir(parents=True)
        await quota.cap(tmp_path / "sandboxes" / name / "workspace", 16, tmp_path)
    assert len(quota.release_under(tmp_path / "sandboxes")) == 2
    assert wait_until(lambda: quota.leftovers(tmp_path / "sandboxes") == [], 5)


def test_a_provider_that_cannot_cap_refuses_an_explicit_size() -> None:
    """The process provider has no capped /workspace: an explicit disk_mb is refused, never
    silently ignored; unset, it runs uncapped as before."""
    with pytest.raises(sandlot.ProviderUnavailableError, match="disk_mb=64"):
        sandlot.Sandbox.create("process", resources={"disk_mb": 64})
    with sandlot.Sandbox.create("process") as sb:
        assert sb.commands.run("echo ok").stdout == "ok\n"
