"""Template bases that bring their own root filesystem: ``oci:`` pulled from a real registry
on loopback (Debian's docker-registry, holding images built with umoci) with no Docker
engine, ``tar:`` and ``rootfs:``; and a template built from an ``oci:`` base whose bwrap
sandbox runs on the image's own python3. (``docker:`` is in
tests/docker/test_template_docker.py.)"""

from __future__ import annotations

import asyncio
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
from registry import (
    PYTHON_ENV,
    PYTHON_WORKDIR,
    TINY_ENV,
    TINY_FILES,
    TINY_HARDLINK,
    TINY_SETUID,
    TINY_SYMLINK,
    TINY_WORKDIR,
    Registry,
)

from sandlot.errors import ImageNotFoundError, InvalidArgumentError, NotFoundError
from sandlot.workspace.templates import TemplateStore
from sandlot.workspace.templates.image_bases import ImportedBase, prepare_image_base


def prepare(kind: str, ref: str, store: TemplateStore, **kwargs: object) -> ImportedBase:
    return asyncio.run(prepare_image_base(kind, ref, store, **kwargs))  # type: ignore[arg-type]


def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore(tmp_path / "home")


def layer_root(tmp_path: Path, base: ImportedBase) -> Path:
    return store(tmp_path).layer_dir(base.layer_id) / "root"


def test_oci_base_pulled_from_a_loopback_registry_without_an_engine(
    registry: Registry,
    tiny_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No engine may be involved: point every Docker client at a socket that does not exist.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    events: list[Any] = []
    base = prepare("oci", tiny_image, store(tmp_path), on_event=events.append)

    assert base.digest == registry.manifest_digest("sandlot/tiny", "1")
    assert not base.reused
    root = layer_root(tmp_path, base)
    for rel, text in TINY_FILES.items():
        assert (root / rel).read_text() == text
    suid = (root / TINY_SETUID).stat()
    assert suid.st_mode & (stat.S_ISUID | stat.S_ISGID) == 0
    assert suid.st_mode & 0o111  # still executable
    assert os.readlink(root / TINY_SYMLINK[0]) == TINY_SYMLINK[1]  # kept as written
    first, second = ((root / name).stat() for name in TINY_HARDLINK)
    assert first.st_ino == second.st_ino
    assert {k: base.env[k] for k in TINY_ENV} == TINY_ENV
    assert base.workdir == TINY_WORKDIR
    assert any("pulling" in event.line for event in events)
    assert {event.type for event in events} == {"log"}  # as the build's log events

    again = prepare("oci", tiny_image, store(tmp_path))
    assert again.reused and again.layer_id == base.layer_id
    assert again.env == base.env


def test_oci_base_errors_name_the_reference(
    registry: Registry,
    tmp_path: Path,
) -> None:
    missing = f"{registry.host}/sandlot/absent:1"
    with pytest.raises(ImageNotFoundError, match="sandlot/absent:1"):
        prepare("oci", missing, store(tmp_path))
    with pytest.raises(InvalidArgumentError, match="not an image reference"):
        prepare("oci", "--src-creds=x:y", store(tmp_path))
    with pytest.raises(InvalidArgumentError, match="not an image reference"):
        prepare("oci", "UPPER/Case", store(tmp_path))
    assert list((store(tmp_path).root / "layers").iterdir()) == []  # nothing left


def _tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=tiny\n")
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o6755)
    (root / "usr").mkdir()
    os.symlink("/etc", root / "usr" / "etc-link")


def test_tar_base_unpacks_and_is_reused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    archive = tmp_path / "base.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")
    base = prepare("tar", str(archive), store(tmp_path))
    root = layer_root(tmp_path, base)
    assert (root / "etc" / "os-release").read_text() == "ID=tiny\n"
    assert (root / "bin" / "tool").stat().st_mode & 0o7777 == 0o755
    assert os.readlink(root / "usr" / "etc-link") == "/etc"
    assert base.digest.startswith("sha256:") and base.files == 6
    assert prepare("tar", str(archive), store(tmp_path)).reused


def test_rootfs_base_copies_without_following_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    base = prepare("rootfs", str(src), store(tmp_path))
    root = layer_root(tmp_path, base)
    assert (root / "etc" / "os-release").read_text() == "ID=tiny\n"
    assert (root / "usr" / "etc-link").is_symlink()
    assert (root / "bin" / "tool").stat().st_mode & 0o7777 == 0o755
    # The same tree again is the same base; a changed one is another.
    assert prepare("rootfs", str(src), store(tmp_path)).layer_id == base.layer_id
    (src / "etc" / "os-release").write_text("ID=changed\n")
    assert prepare("rootfs", str(src), store(tmp_path)).layer_id != base.layer_id


def test_host_bases_that_do_not_exist(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such folder"):
        prepare("rootfs", str(tmp_path / "absent"), store(tmp_path))
    with pytest.raises(NotFoundError, match="no such file"):
        prepare("tar", str(tmp_path / "absent.tar"), store(tmp_path))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidArgumentError, match="refused: not a tar"):
        prepare("tar", str(tmp_path / "junk.tar"), store(tmp_path))


def test_prepare_base_dispatches_image_kinds(tmp_path: Path) -> None:
    """The build's entry point (``--from KIND:REF``) reaches these bases."""
    from sandlot.workspace.templates.bases import prepare_base

    src = tmp_path / "src"
    _tree(src)
    events: list[object] = []
    info, layer_id = asyncio.run(prepare_base(f"rootfs:{src}", store(tmp_path), events.append))
    assert info.kind == "rootfs" and info.ref == str(src) and info.digest.startswith("sha256:")
    assert layer_id is not None and store(tmp_path).has_layer(layer_id)
    assert events
    with pytest.raises(InvalidArgumentError, match="names nothing"):
        asyncio.run(prepare_base("tar:", store(tmp_path), events.append))


async def test_build_from_oci_and_run_a_bwrap_sandbox_on_the_images_python(
    python_image: str,
    tmp_path: Path,
) -> None:
    """The issue's ``--from oci:REF`` end to end with no engine anywhere: pulled, unpacked,
    a file step on top, and a sandbox whose whole system is the image's (its python3, its
    Env and WorkingDir; not the host's packages)."""
    from sandlot.manager import Manager
    from sandlot.models import SandboxSpec
    from sandlot.sdk.sandbox import AsyncSandbox
    from sandlot.workspace.templates import parse_step
    from sandlot.workspace.templates.build import build

    assert Path("/usr/bin/apt-get").exists()  # on the host, not in the image
    (tmp_path / "hello.py").write_text("print('hello from the template')\n")
    manager = Manager()
    try:
        manifest = await build(
            manager,
            "oci-python",
            f"oci:{python_image}",
            [parse_step("file", f"{tmp_path / 'hello.py'}:/opt/hello.py")],
        )
        assert manifest.base.kind == "oci" and manifest.base.digest.startswith("sha256:")
        assert manifest.env.items() >= PYTHON_ENV.items()
        assert manifest.workdir == PYTHON_WORKDIR
        spec = SandboxSpec(provider="bwrap", template="oci-python")
        async with await AsyncSandbox._create(spec, None) as sb:
            result = await sb.commands.run(
                "pwd; echo $OCI_VAR; python3 /opt/hello.py; "
                "test -e /usr/bin/apt-get || echo no-host-tools"
            )
    finally:
        await manager.close()
    assert result.stdout == (
        f"{PYTHON_WORKDIR}\nfrom-the-image\nhello from the template\nno-host-tools\n"
    ), result
