"""Template archives written by an attacker: each one is refused with a clear error, writes
nothing outside the store's work folder, and leaves no name, layer or work folder behind.

The archives start from a real export and are edited the way an attacker would: extra
members, rewritten headers, raw tar bytes where tarfile would not write them.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sandlot.errors import InvalidArgumentError, TemplateNotFoundError
from sandlot.workspace.templates import TemplateStore


@pytest.fixture
def victim(tmp_path: Path) -> tuple[TemplateStore, bytes, str]:
    """A store, a genuine export of a one-layer template, and that layer's id."""
    source = TemplateStore(tmp_path / "source")
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3").write_text("#!/bin/sh\n")
    (root / "usr/bin/python3").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("hello\n")
    manifest = source.template_from_dir("base", root)
    buf = io.BytesIO()
    source.export("base", buf)
    return TemplateStore(tmp_path / "target"), buf.getvalue(), manifest.layers[0].id


def rewrite(archive: bytes, extra: list[tuple[tarfile.TarInfo, bytes | None]], *, change=None):
    """The archive with ``extra`` members appended (before the end), ``change(member,
    data) -> (member, data)`` applied to each original one."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src.getmembers():
            fh = src.extractfile(member) if member.isreg() else None
            data = fh.read() if fh else None
            if change:
                member, data = change(member, data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
        for member, data in extra:
            if data is not None:
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def refused(store: TemplateStore, archive: bytes, match: str, **kwargs) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        store.import_(io.BytesIO(archive), "stolen", **kwargs)
    with pytest.raises(TemplateNotFoundError):
        store.get("stolen")
    assert list((store.root / "layers").iterdir()) == []
    assert list((store.root / "tmp").iterdir()) == []


def test_the_genuine_archive_imports(victim):
    store, archive, _ = victim
    assert store.import_(io.BytesIO(archive), "fine").python == "/usr/bin/python3"


def test_absolute_member(victim, tmp_path):
    store, archive, _ = victim
    target = tmp_path / "planted"
    refused(store, rewrite(archive, [(member(str(target)), b"x")]), "absolute")
    assert not target.exists()


@pytest.mark.parametrize(
    "name",
    [
        "layers/{id}/root/../../../../planted",
        "layers/{id}/root/etc/./x",
        "layers/{id}/root//x",
        "layers/../planted",
    ],
)
def test_dot_dot_and_odd_parts(victim, tmp_path, name):
    store, archive, layer_id = victim
    refused(store, rewrite(archive, [(member(name.format(id=layer_id)), b"x")]), "part")
    assert not (tmp_path / "planted").exists()
    assert not (store.root / "planted").exists()


def test_write_through_a_symlink_escape(victim, tmp_path):
    store, archive, layer_id = victim
    outside = tmp_path / "outside"
    outside.mkdir()
    link = member(f"layers/{layer_id}/root/escape", tarfile.SYMTYPE, linkname=str(outside))
    through = member(f"layers/{layer_id}/root/escape/pwned")
    refused(store, rewrite(archive, [(link, None), (through, b"owned")]), "below a symlink")
    assert list(outside.iterdir()) == []


def test_hard_link_out_of_the_layer(victim):
    store, archive, layer_id = victim
    for target in ("/etc/passwd", f"layers/{'0' * 64}/root/etc/motd", "../../etc/shadow"):
        hard = member(f"layers/{layer_id}/root/passwd", tarfile.LNKTYPE, linkname=target)
        refused(store, rewrite(archive, [(hard, None)]), "hard link|absolute|part")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_nodes_and_fifos(victim, kind):
    store, archive, layer_id = victim
    node = member(f"layers/{layer_id}/root/dev-mem", kind, devmajor=1, devminor=1)
    refused(store, rewrite(archive, [(node, None)]), "devices")


def test_oversized_archive(victim):
    store, archive, layer_id = victim
    big = member(f"layers/{layer_id}/root/big")
    refused(store, rewrite(archive, [(big, b"\0" * 5000)]), "larger than", max_bytes=4096)


def test_huge_extended_header_is_refused_before_it_is_read(victim):
    store, archive, _ = victim
    # A pax header claiming 1 GiB: tarfile would read it all into memory.
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 1 << 30
    raw = header.tobuf(format=tarfile.USTAR_FORMAT)
    trimmed = archive.rstrip(b"\0")
    trimmed += b"\0" * (-len(trimmed) % 512)
    refused(store, trimmed + raw + b"\0" * 4096, "header")


def test_a_file_that_differs_from_its_digest(victim):
    store, archive, _layer_id = victim

    def tamper(info, data):
        if info.name.endswith("etc/motd"):
            return info, b"evil!\n"  # same size, other content
        return info, data

    refused(store, rewrite(archive, [], change=tamper), "do not match")


def test_a_member_of_a_layer_not_in_the_manifest(victim):
    store, archive, _ = victim
    other = member(f"layers/{'a' * 64}/root/x")
    refused(store, rewrite(archive, [(other, b"x")]), "not in the manifest")


def test_a_forged_manifest(victim):
    store, archive, _ = victim

    def forge(info, data):
        if info.name == "manifest.json":
            doc = json.loads(data)
            doc["python"] = "../../bin/sh"
            data = json.dumps(doc).encode()
            info.size = len(data)
        return info, data

    refused(store, rewrite(archive, [], change=forge), "python")


def test_setuid_bits_are_cleared(victim):
    store, archive, _layer_id = victim

    def setuid(info, data):
        if info.name.endswith("usr/bin/python3"):
            info.mode = 0o4755
        return info, data

    # The content digest ignores set-id bits, so the archive is valid; the bit never lands.
    manifest = store.import_(io.BytesIO(rewrite(archive, [], change=setuid)), "suid")
    path = store.layer_dir(manifest.layers[0].id) / "root/usr/bin/python3"
    assert not os.lstat(path).st_mode & stat.S_ISUID
