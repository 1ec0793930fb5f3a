"""The template store on a real file system: names per owner, resolve, the merged view of
layers with overlayfs whiteouts, export/import, gc."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sandlot.errors import InvalidArgumentError, SandlotError, TemplateNotFoundError
from sandlot.workspace.templates import TemplateManifest, TemplateStore, parse_step
from sandlot.workspace.templates.layers import is_opaque, mark_opaque, merged, write_merged_tar
from sandlot.workspace.templates.model import LayerInfo
from sandlot.workspace.templates.store import find_python, owner_dir

ROOT = os.geteuid() == 0


def make_rootfs(folder: Path) -> Path:
    """A tiny root filesystem: a python3 (a symlink to an executable) and a few files."""
    (folder / "usr/bin").mkdir(parents=True)
    real = folder / "usr/bin/python3.11"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    (folder / "usr/bin/python3").symlink_to("python3.11")
    (folder / "etc").mkdir()
    (folder / "etc/hostname").write_text("base\n")
    (folder / "etc/gone").write_text("deleted by a step\n")
    (folder / "opt/keep").mkdir(parents=True)
    (folder / "opt/keep/a").write_text("a")
    (folder / "opt/hide").mkdir()
    (folder / "opt/hide/old").write_text("hidden by an opaque folder")
    return folder


def step_layer(store: TemplateStore, build) -> LayerInfo:
    work = store.tmp_dir()
    root = work / "root"
    root.mkdir()
    build(root)
    layer_id = os.urandom(32).hex()
    info = store.add_layer(root, layer_id, parse_step("run", "test"))
    work.rmdir()
    return info


def overlay_changes(root: Path) -> None:
    """What overlayfs writes for: rm /etc/gone; echo > /etc/hostname; rm -r /opt/hide;
    mkdir /opt/hide; echo > /opt/hide/new."""
    (root / "etc").mkdir()
    os.mknod(root / "etc/gone", stat.S_IFCHR, 0)
    (root / "etc/hostname").write_text("step\n")
    (root / "opt/hide").mkdir(parents=True)
    mark_opaque(str(root / "opt/hide"))
    (root / "opt/hide/new").write_text("new")


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    return TemplateStore(tmp_path / "home")


@pytest.fixture
def base(store: TemplateStore, tmp_path: Path) -> TemplateManifest:
    return store.template_from_dir("base", make_rootfs(tmp_path / "rootfs"))


def test_names_are_checked(store, base):
    for bad in ["", "UPPER", "-x", "a/b", "..", "a" * 64, "x y", "é"]:
        with pytest.raises(InvalidArgumentError):
            store.get(bad)
    with pytest.raises(TemplateNotFoundError):
        store.get("missing")


def test_names_belong_to_their_owner(store, base):
    digest = store.digest_of("base")
    store.put_name("shared", digest, owner="tenant/../a")
    assert [m.name for m in store.list("tenant/../a")] == ["shared"]
    assert [m.name for m in store.list()] == ["base"]
    with pytest.raises(TemplateNotFoundError):
        store.get("shared")
    assert "/" not in owner_dir("../../etc") and owner_dir("a") != owner_dir("b")


def test_resolve_by_name_and_digest(store, base):
    by_name = store.resolve("base")
    by_digest = store.resolve("sha256:" + by_name.digest)
    assert by_name.lowers == by_digest.lowers
    assert by_name.python == "/usr/bin/python3" and not by_name.host_base
    with pytest.raises(InvalidArgumentError):
        store.resolve("sha256:abc")
    with pytest.raises(TemplateNotFoundError):
        store.resolve("sha256:" + "0" * 64)


def test_a_tampered_manifest_is_refused(store, base):
    digest = store.digest_of("base")
    path = store.manifest_path(digest)
    path.write_text(path.read_text().replace("/usr/bin/python3", "/usr/bin/python9"))
    with pytest.raises(SandlotError, match="does not match"):
        store.resolve("base")


@pytest.mark.skipif(not ROOT, reason="whiteouts are 0/0 devices: mknod needs root here")
def test_merged_view_applies_whiteouts_and_opaque_folders(store, base):
    layer = step_layer(store, overlay_changes)
    lowers = [store.layer_dir(layer.id) / "root", *store.resolve("base").lowers]
    view = {e.rel: e for e in merged(lowers)}
    assert "etc/gone" not in view
    assert Path(view["etc/hostname"].path).read_text() == "step\n"
    assert "opt/hide/old" not in view and "opt/hide/new" in view
    assert "opt/keep/a" in view
    assert stat.S_ISLNK(view["usr/bin/python3"].st.st_mode)
    buf = io.BytesIO()
    write_merged_tar(lowers, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = tar.getnames()
        assert "etc/gone" not in names and "opt/hide/new" in names
        assert not any(m.ischr() or m.isblk() for m in tar.getmembers())
        assert tar.extractfile("etc/hostname").read() == b"step\n"


def test_merged_view_never_follows_a_symlinked_folder(store, tmp_path):
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "secret").write_text("host secret")
    rootfs = make_rootfs(tmp_path / "evil")
    (rootfs / "link").symlink_to(secret)
    store.template_from_dir("evil", rootfs)
    view = {e.rel for e in merged(store.resolve("evil").lowers)}
    assert "link" in view and "link/secret" not in view


def test_find_python_refuses_a_root_without_one(store, tmp_path):
    empty = tmp_path / "empty"
    (empty / "usr/bin").mkdir(parents=True)
    (empty / "usr/bin/python3").symlink_to("/nowhere")
    with pytest.raises(SandlotError, match="no python3"):
        store.template_from_dir("nopy", empty)
    assert find_python([], host_base=True) in ("/usr/bin/python3", "/usr/local/bin/python3")


def test_pins_and_extra_in_use_keep_layers_from_gc(store, base, tmp_path):
    def template(name: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_text(name)  # a layer of its own
        store.template_from_dir(name, folder, python="/usr/bin/python3")
        return store.remove(name)

    pinned, pooled = template("pinned"), template("pooled")
    pinned_layers = store.manifest(pinned).layer_ids
    store.pin("sbx-1", pinned)
    report = store.gc({"sha256:" + pooled})
    assert report.removed_manifests == [] and report.removed_layers == []
    store.unpin("sbx-1")
    report = store.gc({pooled})
    assert report.removed_manifests == [pinned]
    assert report.removed_layers == pinned_layers
    assert store.resolve("base").lowers[0].is_dir()
    assert store.resolve("sha256:" + pooled).lowers[0].is_dir()
    assert not store.layer_dir(pinned_layers[0]).exists()


@pytest.mark.skipif(not ROOT, reason="whiteouts are 0/0 devices: mknod needs root here")
def test_export_import_round_trip(store, base, tmp_path):
    layer = step_layer(store, overlay_changes)
    manifest = store.get("base").model_copy(update={"name": "stepped"})
    manifest.layers.append(layer)
    store.save(manifest)
    buf = io.BytesIO()
    store.export("stepped", buf)
    other = TemplateStore(tmp_path / "other-home")
    buf.seek(0)
    imported = other.import_(buf, "copy", owner="tenant-b")
    assert imported.steps == manifest.steps and imported.base == manifest.base
    assert [x.content for x in imported.layers] == [x.content for x in manifest.layers]
    # the base layer keeps its content id; the step layer is renamed (no cache key imported)
    assert imported.layers[0].id == manifest.layers[0].id
    assert imported.layers[1].id != layer.id
    with pytest.raises(TemplateNotFoundError):
        other.get("copy")  # owner "" has no such name
    view = {e.rel: e for e in merged(other.resolve("copy", owner="tenant-b").lowers)}
    original = {e.rel for e in merged(store.resolve("stepped").lowers)}
    assert set(view) == original
    assert Path(view["etc/hostname"].path).read_text() == "step\n"
    assert is_opaque(str(other.layer_dir(imported.layers[1].id) / "root/opt/hide"))


def test_gc_is_refused_while_a_build_holds_the_store(store, base):
    digest = store.remove("base")
    with store.using(), pytest.raises(SandlotError, match="build or import is running"):
        store.gc(set())
    assert store.resolve("sha256:" + digest).lowers[0].is_dir()
    assert store.gc(set()).removed_manifests == [digest]


def test_rootfs_tar_of_an_image_base_and_not_of_the_host(store, base):
    buf = io.BytesIO()
    store.write_rootfs_tar("base", buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        assert tar.getmember("usr/bin/python3").issym()
        assert tar.extractfile("etc/hostname").read() == b"base\n"
    from sandlot.workspace.templates import BaseInfo

    store.save(TemplateManifest(name="onhost", base=BaseInfo(kind="host")))
    with pytest.raises(InvalidArgumentError, match="host's system"):
        store.write_rootfs_tar("onhost", io.BytesIO())
