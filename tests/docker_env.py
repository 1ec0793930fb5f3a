"""A real Docker engine and locally built test images for the tests and benchmarks.

No container registry is reachable here, so the images are built from Debian packages:
``debootstrap --variant=minbase --include=python3,python3-pip,procps bookworm`` imported
with ``docker import`` (a minute or two, once: an image that exists is reused).
``sandlot-test-nopython`` is the same tree without its Python, for the "image without
python3" error.

Run as a script (``python tests/docker_env.py``) to prepare everything ahead of a test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE = "sandlot-test-bookworm:v2"  # v2: with procps and pip
NO_PYTHON_IMAGE = "sandlot-test-nopython:v2"
SOCKET = "/var/run/docker.sock"
DOCKERD_LOG = "/tmp/sandlot-dockerd.log"
ROOTFS_CACHE = Path("/var/cache/sandlot-test/bookworm-v2-rootfs.tar")


def _docker(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        check=check,
        **kwargs,  # type: ignore[call-overload]
    )


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return _docker("info", check=False, timeout=20).returncode == 0


def ensure_engine(wait: float = 60.0) -> None:
    """Start ``dockerd`` unless an engine answers already."""
    if engine_answers():
        return
    if shutil.which("dockerd") is None:
        raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.Popen(
            ["dockerd", "--host", f"unix://{SOCKET}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if engine_answers():
            return
        time.sleep(0.5)
    raise RuntimeError(f"dockerd did not answer within {wait:g} s; see {DOCKERD_LOG}")


def image_exists(name: str) -> bool:
    return _docker("image", "inspect", name, check=False).returncode == 0


def _mirror() -> str:
    for source in [
        *Path("/etc/apt/sources.list.d").glob("*.sources"),
        Path("/etc/apt/sources.list"),
    ]:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1:
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2:
                return words[1] if not words[1].startswith("[") else words[2]
    raise RuntimeError("no Debian mirror found in the apt sources")


def _rootfs_tar() -> Path:
    """A tar of a minimal bookworm with python3, built once and cached on disk."""
    if ROOTFS_CACHE.is_file():
        return ROOTFS_CACHE
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandlot-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-pip,procps",
                "bookworm",
                str(root),
                _mirror(),
            ],
            check=True,
            capture_output=True,
        )
        partial = ROOTFS_CACHE.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(ROOTFS_CACHE)
    return ROOTFS_CACHE


def ensure_images() -> None:
    if image_exists(IMAGE) and image_exists(NO_PYTHON_IMAGE):
        return
    tar = _rootfs_tar()
    if not image_exists(IMAGE):
        with open(tar, "rb") as data:
            subprocess.run(
                ["docker", "import", "-", IMAGE], stdin=data, check=True, capture_output=True
            )
    if not image_exists(NO_PYTHON_IMAGE):
        # The same tree without any python: tar filters it out on the way in.
        filtered = subprocess.Popen(
            ["tar", "--delete", "--wildcards", "./usr/bin/python3*", "-f", "-"],
            stdin=open(tar, "rb"),  # noqa: SIM115 - closed with the process
            stdout=subprocess.PIPE,
        )
        assert filtered.stdout is not None
        subprocess.run(
            ["docker", "import", "-", NO_PYTHON_IMAGE],
            stdin=filtered.stdout,
            check=True,
            capture_output=True,
        )
        filtered.wait()


def prepare() -> str | None:
    """Engine and images ready; None, or why Docker tests cannot run here."""
    if os.geteuid() != 0 and not os.access(SOCKET, os.W_OK):
        return "the Docker engine needs root or the docker group"
    try:
        ensure_engine()
        ensure_images()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        return f"Docker is not usable here: {exc} {detail!s:.500}"
    return None


if __name__ == "__main__":
    reason = prepare()
    if reason is not None:
        sys.exit(reason)
    print(f"docker ready: {IMAGE}, {NO_PYTHON_IMAGE}")
