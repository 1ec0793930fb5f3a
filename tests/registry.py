"""A real container registry on loopback, and small images built without Docker.

``registry`` starts Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1 with its
storage in a temporary folder, once per test session. ``tiny_image`` builds an OCI image
with umoci (no engine: ``umoci init/new``, files added to the unpacked bundle,
``umoci repack``) and pushes it with skopeo; what it holds is listed in :data:`TINY_FILES`.
``python_image`` is a slim image that can run sandboxes (44 MB: Debian's python3.11, its
libraries, dash and a few tools, cut from the Docker tests' cached debootstrap tree; one
layer added with ``umoci raw add-layer``), also built and pushed without an engine.

Import the fixtures in a test module (``from registry import registry, tiny_image``) or a
conftest. Nothing here talks to anything but loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import docker_env
import pytest

BINARY = "docker-registry"
START_WAIT = 30.0  # seconds: a registry that does not answer by then fails the set-up

# The tiny image's tree: path -> content; plus a setuid file, a hardlink and a symlink.
TINY_FILES = {
    "etc/greeting": "hello from an OCI image\n",
    "opt/app/data.txt": "data\n",
}
TINY_SETUID = "usr/bin/suid-tool"
TINY_HARDLINK = ("opt/app/data.txt", "opt/app/data-link.txt")
TINY_SYMLINK = ("etc/link-to-greeting", "/etc/greeting")
TINY_ENV = {"TINY_VAR": "tiny-value"}
TINY_WORKDIR = "/opt/app"


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path  # its storage

    def manifest_digest(self, repo: str, tag: str) -> str:
        """The digest the registry itself reports for ``repo:tag`` (Docker-Content-Digest)."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repo}/manifests/{tag}",
            method="HEAD",
            headers={
                "Accept": ", ".join(
                    [
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.oci.image.index.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                    ]
                )
            },
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(answer.headers["Docker-Content-Digest"])

    def push_layout(self, layout: str, repo: str) -> str:
        """Copy an image (a skopeo source: ``oci:DIR:TAG``, ``docker-archive:FILE``) here."""
        target = f"{self.host}/{repo}"
        _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", layout, f"docker://{target}"])
        return target


def _run(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's docker-registry on a free loopback port (fails, never skips, if missing:
    scripts/setup.sh installs it)."""
    binary = shutil.which(BINARY) or f"/usr/bin/{BINARY}"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{BINARY} is not installed (apt-get install docker-registry)", pytrace=False)
    root = tmp_path_factory.mktemp("registry")
    host = f"127.0.0.1:{_free_port()}"
    config = root / "config.yml"
    # YAML is a superset of JSON: no YAML writer needed.
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "error"},
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                "http": {"addr": host},
            }
        )
    )
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_WAIT
        while not _answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"{BINARY} did not start: {(root / 'registry.log').read_text()[-2000:]}",
                    pytrace=False,
                )
            time.sleep(0.05)
        yield Registry(host=host, root=root)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def build_tiny_layout(work: Path) -> str:
    """An OCI image made with umoci alone; returns its skopeo source ``oci:DIR:TAG``."""
    layout, bundle = work / "layout", work / "bundle"
    _run(["umoci", "init", "--layout", str(layout)])
    _run(["umoci", "new", "--image", f"{layout}:tiny"])
    _run(["umoci", "unpack", "--rootless", "--image", f"{layout}:tiny", str(bundle)])
    rootfs = bundle / "rootfs"
    for rel, text in TINY_FILES.items():
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_text(text)
    suid = rootfs / TINY_SETUID
    suid.parent.mkdir(parents=True, exist_ok=True)
    suid.write_text("#!/bin/sh\necho setuid\n")
    suid.chmod(0o4755)
    os.link(rootfs / TINY_HARDLINK[0], rootfs / TINY_HARDLINK[1])
    os.symlink(TINY_SYMLINK[1], rootfs / TINY_SYMLINK[0])
    _run(["umoci", "repack", "--image", f"{layout}:tiny", str(bundle)])
    env = [f"--config.env={k}={v}" for k, v in TINY_ENV.items()]
    _run(
        [
            "umoci",
            "config",
            "--image",
            f"{layout}:tiny",
            *env,
            f"--config.workingdir={TINY_WORKDIR}",
        ]
    )
    return f"oci:{layout}:tiny"


@pytest.fixture(scope="session")
def tiny_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``127.0.0.1:PORT/sandlot/tiny:1`` in the loopback registry (built once a session)."""
    source = build_tiny_layout(tmp_path_factory.mktemp("tiny-image"))
    return registry.push_layout(source, "sandlot/tiny:1")


# The slim tree: what python3 and the sandlot agent need, and a few tools for tests.
_LIBS = (
    r"(libc|libm|libz|libexpat|libffi|libbz2|liblzma|libmpdec|libuuid|libcrypto|libssl"
    r"|libsqlite3|libtinfo|libreadline|libncursesw|libselinux|libpcre2-8|ld-linux-x86-64)\.so"
)
_KEEP = re.compile(
    r"^\./(usr/bin/(python3(\.11)?|dash|sh|cat|env|id|ls|sleep|true)$|usr/lib/python3\.11/"
    r"|usr/lib/x86_64-linux-gnu/"
    + _LIBS
    + r"|usr/lib64/|etc/(passwd|group)$|(bin|lib|lib64|sbin)$)"
)
_DROP = re.compile(
    r"^\./usr/lib/python3\.11/(test|idlelib|tkinter|lib2to3|ensurepip|pydoc_data|turtledemo"
    r"|config-3\.11[^/]*)/"
)
PYTHON_ENV = {"OCI_VAR": "from-the-image"}
PYTHON_WORKDIR = "/usr/lib"


def write_slim_tar(out: BinaryIO) -> None:
    """The slim tree as a tar stream (debootstrap builds the source tree once per machine)."""
    with (
        tarfile.open(docker_env._rootfs_tar()) as src,
        tarfile.open(fileobj=out, mode="w|") as dst,
    ):
        for member in src:
            if member.isdir() or (_KEEP.match(member.name) and not _DROP.match(member.name)):
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)


@pytest.fixture(scope="session")
def python_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``127.0.0.1:PORT/sandlot/slim-python:1``: the slim tree as one layer, its config
    naming PYTHON_ENV and PYTHON_WORKDIR (built once a session, with umoci alone)."""
    work = tmp_path_factory.mktemp("slim-oci")
    layer = work / "layer.tar"
    with open(layer, "wb") as out:
        write_slim_tar(out)
    image = f"{work / 'layout'}:slim"
    env = [f"--config.env={k}={v}" for k, v in PYTHON_ENV.items()]
    _run(["umoci", "init", "--layout", str(work / "layout")])
    _run(["umoci", "new", "--image", image])
    _run(["umoci", "raw", "add-layer", "--image", image, str(layer)])
    _run(["umoci", "config", "--image", image, *env, f"--config.workingdir={PYTHON_WORKDIR}"])
    layer.unlink()
    return registry.push_layout(f"oci:{image}", "sandlot/slim-python:1")
