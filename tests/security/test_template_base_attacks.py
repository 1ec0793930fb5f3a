"""Hostile template bases: a tar or an image built to write outside its layer, plant a device
or a setuid binary, or hardlink a host secret into the template. Each is fed to sandlot as a
user would (``tar:FILE``, ``oci:REF`` from a loopback registry, ``rootfs:DIR``) and must be
refused or defused, with nothing written outside the layer and nothing left behind."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from registry import Registry

from sandlot.errors import InvalidArgumentError
from sandlot.workspace.templates import TemplateStore
from sandlot.workspace.templates.image_bases import ImportedBase, prepare_image_base
from sandlot.workspace.templates.limits import BaseLimits

SHADOW = "/etc/shadow"


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def hostile_tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def prepare(
    kind: str, ref: str, store: TemplateStore, limits: BaseLimits | None = None
) -> ImportedBase:
    return asyncio.run(prepare_image_base(kind, ref, store, limits=limits))


def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore(tmp_path / "home")


def layer_root(tmp_path: Path, base: ImportedBase) -> Path:
    return store(tmp_path).layer_dir(base.layer_id) / "root"


def nothing_left(store: TemplateStore) -> None:
    for sub in ("layers", "tmp"):
        assert list((store.root / sub).iterdir()) == []


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host folder next to the layers that no base may write into."""
    folder = tmp_path / "victim"
    folder.mkdir()
    return folder


@pytest.mark.attack("tar base: member climbing out with ../")
def test_dotdot_member(tmp_path: Path, victim: Path) -> None:
    tar = hostile_tar(tmp_path / "a.tar", (member("../../victim/pwned"), b"x"))
    with pytest.raises(InvalidArgumentError, match="climbs out"):
        prepare("tar", str(tar), store(tmp_path))
    assert list(victim.iterdir()) == []
    nothing_left(store(tmp_path))


@pytest.mark.attack("tar base: absolute member path")
def test_absolute_member(tmp_path: Path, victim: Path) -> None:
    tar = hostile_tar(tmp_path / "a.tar", (member(f"{victim}/pwned"), b"x"))
    with pytest.raises(InvalidArgumentError, match="absolute path"):
        prepare("tar", str(tar), store(tmp_path))
    assert list(victim.iterdir()) == []


@pytest.mark.attack("tar base: symlink out of the tree, then a write through it")
def test_symlink_then_write_through(tmp_path: Path, victim: Path) -> None:
    for target in (str(victim), "../../../../../../../../" + str(victim).lstrip("/")):
        tar = hostile_tar(
            tmp_path / "a.tar",
            (member("escape", tarfile.SYMTYPE, linkname=target), b""),
            (member("escape/pwned"), b"owned"),
        )
        with pytest.raises(InvalidArgumentError, match="not a directory"):
            prepare("tar", str(tar), store(tmp_path))
        assert list(victim.iterdir()) == []
        nothing_left(store(tmp_path))


@pytest.mark.attack("tar base: a symlink replacing a directory already written")
def test_symlink_replaces_directory(tmp_path: Path, victim: Path) -> None:
    tar = hostile_tar(
        tmp_path / "a.tar",
        (member("etc", tarfile.DIRTYPE, mode=0o755), b""),
        (member("etc", tarfile.SYMTYPE, linkname=str(victim)), b""),
        (member("etc/pwned"), b"owned"),
    )
    with pytest.raises(InvalidArgumentError, match="replaces a directory"):
        prepare("tar", str(tar), store(tmp_path))
    assert list(victim.iterdir()) == []


@pytest.mark.attack("tar base: hardlink to the host's /etc/shadow")
def test_hardlink_to_host_file(tmp_path: Path) -> None:
    for target in (SHADOW, "../../../../../../.." + SHADOW, SHADOW.lstrip("/")):
        tar = hostile_tar(
            tmp_path / "a.tar", (member("stolen", tarfile.LNKTYPE, linkname=target), b"")
        )
        with pytest.raises(InvalidArgumentError, match=r"hardlink|absolute|climbs out"):
            prepare("tar", str(tar), store(tmp_path))
        nothing_left(store(tmp_path))


@pytest.mark.attack("tar base: hardlink through a symlink pointing out")
def test_hardlink_through_symlink(tmp_path: Path) -> None:
    tar = hostile_tar(
        tmp_path / "a.tar",
        (member("hostetc", tarfile.SYMTYPE, linkname="/etc"), b""),
        (member("stolen", tarfile.LNKTYPE, linkname="hostetc/shadow"), b""),
    )
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        prepare("tar", str(tar), store(tmp_path))
    nothing_left(store(tmp_path))


@pytest.mark.attack("tar base: device nodes, fifo and setuid/setgid binaries planted")
def test_devices_dropped_setuid_cleared(tmp_path: Path) -> None:
    tar = hostile_tar(
        tmp_path / "a.tar",
        (member("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), b""),
        (member("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1), b""),
        (member("fifo", tarfile.FIFOTYPE), b""),
        (member("bin/rootshell", mode=0o6755), b"#!/bin/sh\n"),
        (member("tmp", tarfile.DIRTYPE, mode=0o3777), b""),
    )
    base = prepare("tar", str(tar), store(tmp_path))
    root = layer_root(tmp_path, base)
    assert not (root / "dev" / "sda").exists() and not (root / "dev" / "mem").exists()
    assert not os.path.lexists(root / "fifo")
    assert (root / "bin" / "rootshell").stat().st_mode & 0o7777 == 0o755
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777  # sticky kept, setgid cleared
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            mode = os.lstat(os.path.join(folder, name)).st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)


@pytest.mark.attack("tar base: bigger than the size limit (a decompression bomb)")
def test_size_limit(tmp_path: Path) -> None:
    tar = tmp_path / "bomb.tar.gz"
    with tarfile.open(tar, "w:gz") as out:
        info = member("zeros")
        info.size = 4 << 20
        out.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(InvalidArgumentError, match="larger than"):
        prepare("tar", str(tar), store(tmp_path), BaseLimits(max_bytes=1 << 20))
    nothing_left(store(tmp_path))
    many = hostile_tar(tmp_path / "many.tar", *[(member(f"f{i}"), b"") for i in range(50)])
    with pytest.raises(InvalidArgumentError, match="more than 20 entries"):
        prepare("tar", str(many), store(tmp_path), BaseLimits(max_files=20))


@pytest.mark.attack("rootfs base: symlinks to host folders are copied, never followed")
def test_rootfs_symlinks_not_followed(tmp_path: Path, victim: Path) -> None:
    (victim / "secret").write_text("host secret")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(victim, src / "dir-link")
    os.symlink(victim / "secret", src / "file-link")
    base = prepare("rootfs", str(src), store(tmp_path))
    root = layer_root(tmp_path, base)
    assert os.readlink(root / "dir-link") == str(victim)
    assert os.readlink(root / "file-link") == str(victim / "secret")
    assert base.size == 0  # the secret's bytes were never read into the layer


def push_hostile_image(
    registry: Registry,
    work: Path,
    name: str,
    *members: tuple[tarfile.TarInfo, bytes],
) -> str:
    """An image whose one layer is the hostile tar, verbatim (``umoci raw add-layer``)."""
    work.mkdir()
    layout = work / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:evil"], check=True)
    layer = hostile_tar(work / "layer.tar", *members)
    subprocess.run(
        ["umoci", "raw", "add-layer", "--image", f"{layout}:evil", str(layer)], check=True
    )
    return registry.push_layout(f"oci:{layout}:evil", f"sandlot/{name}:1")


@pytest.mark.attack("oci base: a layer with ../ members, a setuid binary and a device node")
def test_hostile_oci_layer(
    registry: Registry,
    tmp_path: Path,
    victim: Path,
) -> None:
    """umoci unpacks it (resolving paths inside the tree); sandlot checks what it wrote."""
    ref = push_hostile_image(
        registry,
        tmp_path / "image",
        "evil",
        (member("bin/rootshell", mode=0o4755), b"#!/bin/sh\n"),
        (member("../../../../" + str(victim).lstrip("/") + "/pwned"), b"owned"),
        (member("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1), b""),
    )
    base = prepare("oci", ref, store(tmp_path))
    root = layer_root(tmp_path, base)
    assert (root / "bin" / "rootshell").stat().st_mode & 0o7777 == 0o755
    mem = root / "dev" / "mem"
    assert not os.path.lexists(mem) or stat.S_ISREG(os.lstat(mem).st_mode)
    assert list(victim.iterdir()) == []


@pytest.mark.attack("oci base: a layer hardlinking the host's /etc/shadow")
def test_oci_hardlink_to_host_file(
    registry: Registry,
    tmp_path: Path,
) -> None:
    ref = push_hostile_image(
        registry,
        tmp_path / "image",
        "evil-link",
        (member("stolen", tarfile.LNKTYPE, linkname=SHADOW), b""),
    )
    with pytest.raises(InvalidArgumentError, match="refused: umoci cannot unpack"):
        prepare("oci", ref, store(tmp_path))
    nothing_left(store(tmp_path))
    assert os.stat(SHADOW).st_nlink == 1
