"""Disk: fill /workspace past its cap (issue 15, hole 6).

The attacker writes far more than ``disk_mb`` in every way that allocates disk: a stream of
writes (dd and Python), ``fallocate``, data scattered through a huge sparse file, a file
held open after its unlink, and empty files until the inodes run out. Each try must end in
ENOSPC inside; the host is measured from outside: what its disk gave the sandbox's folder
(the workspace's image included, and the image never gives blocks back, so this is the
most it ever held) stays within the cap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import python_in

from sandlot.providers import quota

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(quota.unavailable_reason() is not None, reason="no caps on this host"),
]
QUOTA_MB = 64
MiB = 1 << 20

FILL = r"""
import errno, json, os, subprocess, time
quota = QUOTA_MB << 20
MiB = 1 << 20
out = {}

def attempt(name, fn, path):
    try:
        fn(path)
        out[name] = "no error"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    subprocess.run(["rm", "-rf", path])  # free the space for the next try

def stream(path):
    with open(path, "wb") as f:
        for _ in range(4 * quota // MiB):
            f.write(b"\xff" * MiB)
        f.flush()
        os.fsync(f.fileno())

def allocate(path):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, 16 * quota)
    finally:
        os.close(fd)

def scattered(path):  # a 8 GiB sparse file, 1 MiB of data every 16 MiB: 512 MiB in all
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.ftruncate(fd, 8 << 30)
        for i in range(512):
            os.pwrite(fd, b"\xff" * MiB, i * 16 * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)

def unlinked(path):  # space held by a file nobody can see any more
    fd = os.open(os.path.dirname(path), os.O_TMPFILE | os.O_WRONLY, 0o600)
    try:
        for _ in range(4 * quota // MiB):
            os.write(fd, b"\xff" * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)  # and with it the space

def inodes(path):  # empty files until the inode table is full (or 20 s)
    os.mkdir(path)
    deadline = time.monotonic() + 20
    n = 0
    while time.monotonic() < deadline:
        os.close(os.open(f"{path}/{n}", os.O_CREAT | os.O_WRONLY, 0o600))
        n += 1

df = subprocess.run(["df", "-B1M", "--output=size", "/workspace"], capture_output=True, text=True)
out["size"] = int(df.stdout.split()[-1])
dd = subprocess.run(["dd", "if=/dev/zero", "of=/workspace/dd", "bs=1M", f"count={quota >> 18}"],
                    capture_output=True, text=True)
out["dd"] = dd.stderr.strip().splitlines()[0] if dd.returncode else "no error"
subprocess.run(["rm", "-f", "/workspace/dd"])
attempt("stream", stream, "/workspace/stream")
attempt("fallocate", allocate, "/workspace/fallocate")
attempt("sparse file", scattered, "/workspace/sparse")
attempt("unlinked file", unlinked, "/workspace/tmpfile")
attempt("inodes", inodes, "/workspace/many")
with open("/workspace/after", "w") as f:  # full is not broken
    f.write("ok")
out["after"] = open("/workspace/after").read()
print(json.dumps(out))
"""


def host_bytes(folder: Path) -> int:
    """What the host's disk gave the sandbox's folder (its image included), not counting the
    mounted workspace a second time."""
    device = folder.stat().st_dev
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if (Path(root) / d).stat().st_dev == device]
        for name in files:
            total += (Path(root) / name).lstat().st_blocks * 512
    return total


@pytest.mark.attack("fill /workspace past its quota", hole=6)
def test_fill_the_workspace(make_sandbox: Any) -> None:
    sb = make_sandbox(resources={"disk_mb": QUOTA_MB})
    r = python_in(sb, FILL.replace("QUOTA_MB", str(QUOTA_MB)), timeout=150)
    assert r.exit_code == 0, r.stderr
    found = json.loads(r.stdout.strip().splitlines()[-1])

    assert found["size"] <= QUOTA_MB, found
    assert "No space left on device" in found["dd"], found
    for attack in ("stream", "fallocate", "sparse file", "unlinked file", "inodes"):
        assert found[attack] == "ENOSPC", (attack, found)
    assert found["after"] == "ok"
    folder = Path(os.environ["SANDLOT_HOME"]) / "sandboxes" / sb.id
    assert host_bytes(folder) <= (QUOTA_MB + 1) * MiB, host_bytes(folder)
