"""The template store: layers, manifests, names per owner, build logs and pins, under
``$SANDLOT_HOME/templates/``::

    layers/<id>/root/          one layer's files (a base: a whole root; a step: an overlay upper)
    layers/<id>/layer.json     its LayerInfo
    manifests/<digest>.json    a TemplateManifest (digest: of its canonical JSON)
    names/<owner-dir>/<name>.json   {"digest": ...}: a name of an owner (""= the local user)
    cache/<key>                the layer a build step's cache key made (see build.py)
    logs/<digest>.log          the build log of a manifest
    pins/<sandbox id>          the manifest digest a running sandbox uses
    tmp/                       work folders, on the same file system (renamed into place)

Every file appears atomically (written aside, renamed); a layer folder too. An owner's folder
name is a hash of the owner, so any tenant string is safe as a path. Builds and imports hold
a shared lock (``.lock``) and gc an exclusive one, so gc never removes a layer a build is
about to reference.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ...errors import InvalidArgumentError, SandlotError, TemplateNotFoundError
from . import layers as L
from .fsutil import MAX_JSON as MAX_JSON  # re-exported: the store's helpers live there
from .fsutil import read_small, remove_tree, write_atomic
from .layers import find_python
from .model import (
    DIGEST_PREFIX,
    BaseInfo,
    LayerInfo,
    Step,
    TemplateManifest,
    check_hex64,
    check_name,
    parse_manifest,
    parse_ref,
)

L_HEX = re.compile(r"^[0-9a-f]{64}$")
PIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TMP_GRACE = 6 * 3600.0  # seconds: gc leaves younger work folders alone


@dataclass
class ResolvedTemplate:
    """What a provider needs to start a sandbox from a template."""

    digest: str
    manifest: TemplateManifest
    lowers: list[Path]  # layer root folders, TOPMOST FIRST (overlayfs lowerdir order)
    host_base: bool
    env: dict[str, str]
    workdir: str | None
    python: str

    @property
    def ref(self) -> str:
        return DIGEST_PREFIX + self.digest


@dataclass
class TemplateGcReport:
    removed_manifests: list[str] = field(default_factory=list)
    removed_layers: list[str] = field(default_factory=list)
    freed_bytes: int = 0


def owner_dir(owner: str) -> str:
    """The folder of an owner's names: a hash, so no tenant string can shape a path."""
    return "o-" + hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class TemplateStore:
    """Templates of every owner on this host (see the module's documentation)."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "templates"
        for sub in ("layers", "manifests", "names", "cache", "logs", "pins", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Sandboxes run as an unprivileged user that must reach the layers, not list names.
        with contextlib.suppress(OSError):
            os.chmod(self.root, 0o711)
            os.chmod(self.root / "layers", 0o711)

    # ---------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def _lock(self, kind: int) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, kind)
            except BlockingIOError:
                raise SandlotError(
                    "a template build or import is running: run the template gc after it"
                ) from None
            yield
        finally:
            os.close(fd)

    def using(self) -> contextlib.AbstractContextManager[None]:
        """Held while layers are added and referenced (builds, imports): gc waits for it."""
        return self._lock(fcntl.LOCK_SH)

    # ---------------------------------------------------------------------------- layers

    def layer_dir(self, layer_id: str) -> Path:
        return self.root / "layers" / check_hex64(layer_id, "layer id")

    def has_layer(self, layer_id: str) -> bool:
        return (self.layer_dir(layer_id) / "layer.json").is_file()

    def layer(self, layer_id: str) -> LayerInfo:
        path = self.layer_dir(layer_id) / "layer.json"
        try:
            raw = read_small(path)
        except FileNotFoundError:
            raise TemplateNotFoundError(f"layer {layer_id} is not in the store") from None
        try:
            return LayerInfo.model_validate_json(raw)
        except ValueError as exc:
            raise SandlotError(f"layer {layer_id}: bad layer.json: {exc}") from None

    def tmp_dir(self, prefix: str = "work-") -> Path:
        """A private work folder on the store's file system (so it can be renamed in)."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root / "tmp"))

    def add_layer(
        self, root: Path, layer_id: str, step: Step | None = None, content: str | None = None
    ) -> LayerInfo:
        """Move ``root`` (a folder under :meth:`tmp_dir`) into the store as layer
        ``layer_id``. If that layer exists already (a concurrent build made it), the
        existing one wins and ``root`` is removed."""
        check_hex64(layer_id, "layer id")
        final = self.layer_dir(layer_id)
        if self.has_layer(layer_id):
            remove_tree(root)
            return self.layer(layer_id)
        L.strip_setid(root)
        size, files = L.measure(root)
        content = content or L.tree_digest(root)
        info = LayerInfo(id=layer_id, size=size, files=files, step=step, content=content)
        holder = self.tmp_dir("layer-")
        os.chmod(holder, 0o755)
        os.rename(root, holder / "root")
        write_atomic(holder / "layer.json", info.model_dump_json().encode())
        try:
            os.rename(holder, final)
        except OSError:
            if not self.has_layer(layer_id):
                raise
            remove_tree(holder)  # lost a race to an identical layer
        return info

    def add_base_layer(self, source: Path) -> LayerInfo:
        """Copy a root filesystem folder into the store as a base layer, its id the digest
        of its content. For bases made from a folder, and for tests."""
        with self.using():
            return self._add_base_layer(source)

    def _add_base_layer(self, source: Path) -> LayerInfo:
        work = self.tmp_dir("base-")
        try:
            L.copy_tree(Path(source), work / "root")
            L.strip_setid(work / "root")
            layer_id = L.tree_digest(work / "root")
            return self.add_layer(work / "root", layer_id, content=layer_id)
        finally:
            if work.exists():
                remove_tree(work)

    # ---------------------------------------------------------------------------- build cache

    def cached(self, key: str) -> str | None:
        """The layer a step with this cache key made, if it is still in the store."""
        try:
            layer_id = read_small(self.root / "cache" / check_hex64(key, "cache key")).decode()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        if not L_HEX.match(layer_id) or not self.has_layer(layer_id):
            return None
        return layer_id

    def remember(self, key: str, layer_id: str) -> None:
        """Point a cache key at a layer (a later build of the same step reuses it)."""
        write_atomic(self.root / "cache" / check_hex64(key, "cache key"), layer_id.encode())

    # ---------------------------------------------------------------------------- manifests

    def manifest_path(self, digest: str) -> Path:
        return self.root / "manifests" / f"{check_hex64(digest)}.json"

    def put_manifest(self, manifest: TemplateManifest) -> str:
        """Store a manifest whose layers are all present; returns its digest."""
        for layer_id in manifest.layer_ids:
            if not self.has_layer(layer_id):
                raise TemplateNotFoundError(f"layer {layer_id} is not in the store")
        digest = manifest.digest()
        path = self.manifest_path(digest)
        if not path.exists():
            write_atomic(path, manifest.model_dump_json(indent=1).encode())
        return digest

    def manifest(self, digest: str) -> TemplateManifest:
        """A stored manifest, checked against its digest."""
        try:
            raw = read_small(self.manifest_path(digest))
        except FileNotFoundError:
            raise TemplateNotFoundError(f"no template sha256:{digest}") from None
        manifest = parse_manifest(raw)
        if manifest.digest() != digest:
            raise SandlotError(f"template sha256:{digest}: its manifest does not match its digest")
        return manifest

    def has_manifest(self, digest: str) -> bool:
        return self.manifest_path(digest).is_file()

    def save(self, manifest: TemplateManifest, owner: str = "") -> str:
        """Store a manifest and point its name (``manifest.name``) at it; returns the digest."""
        digest = self.put_manifest(manifest)
        self.put_name(check_name(manifest.name), digest, owner)
        return digest

    def template_from_dir(
        self, name: str, source: Path, owner: str = "", python: str | None = None
    ) -> TemplateManifest:
        """A template of one base layer copied from a root filesystem folder (kind
        ``rootfs``): what tests and the rootfs base start from."""
        with self.using():
            return self._template_from_dir(name, source, owner, python)

    def _template_from_dir(
        self, name: str, source: Path, owner: str, python: str | None
    ) -> TemplateManifest:
        layer = self._add_base_layer(source)
        manifest = TemplateManifest(
            name=check_name(name),
            base=BaseInfo(kind="rootfs", ref=str(source), digest="sha256:" + layer.id),
            layers=[layer],
            size=layer.size,
            python=python or find_python([self.layer_dir(layer.id) / "root"], False),
            sandlot_version=_version(),
        )
        self.save(manifest, owner)
        return manifest

    # ---------------------------------------------------------------------------- names

    def _name_path(self, name: str, owner: str) -> Path:
        return self.root / "names" / owner_dir(owner) / f"{check_name(name)}.json"

    def put_name(self, name: str, digest: str, owner: str = "") -> None:
        if not self.has_manifest(digest):
            raise TemplateNotFoundError(f"no template sha256:{digest}")
        write_atomic(self._name_path(name, owner), json.dumps({"digest": digest}).encode())

    def digest_of(self, name: str, owner: str = "") -> str:
        try:
            raw = read_small(self._name_path(name, owner))
        except FileNotFoundError:
            raise TemplateNotFoundError(f"no template named {name!r}") from None
        try:
            return check_hex64(json.loads(raw)["digest"])
        except (ValueError, KeyError, TypeError):
            raise SandlotError(f"template {name!r}: its name file is damaged") from None

    def get(self, name: str, owner: str = "") -> TemplateManifest:
        manifest = self.manifest(self.digest_of(name, owner))
        return manifest.model_copy(update={"name": name})

    def list(self, owner: str = "") -> builtins.list[TemplateManifest]:
        """This owner's templates, by name."""
        folder = self.root / "names" / owner_dir(owner)
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            name = path.name.removesuffix(".json")
            with contextlib.suppress(TemplateNotFoundError, InvalidArgumentError, SandlotError):
                found.append(self.get(name, owner))
        return found

    def remove(self, name: str, owner: str = "") -> str:
        """Forget a name (its layers stay until gc); returns the digest it named."""
        digest = self.digest_of(name, owner)
        self._name_path(name, owner).unlink()
        return digest

    def _named_digests(self) -> set[str]:
        found = set()
        for path in (self.root / "names").glob("*/*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                found.add(check_hex64(json.loads(read_small(path))["digest"]))
        return found

    # ---------------------------------------------------------------------------- resolve

    def resolve(self, ref: str, owner: str = "") -> ResolvedTemplate:
        """A name of ``owner`` or ``sha256:<digest>`` -> the layers to mount, topmost first."""
        name, digest = parse_ref(ref)
        if name is not None:
            digest = self.digest_of(name, owner)
        assert digest is not None
        manifest = self.manifest(digest)
        lowers = []
        for layer_id in reversed(manifest.layer_ids):
            root = self.layer_dir(layer_id) / "root"
            if not root.is_dir():
                raise TemplateNotFoundError(f"template {ref}: layer {layer_id} is missing")
            lowers.append(root)
        return ResolvedTemplate(
            digest=digest,
            manifest=manifest,
            lowers=lowers,
            host_base=manifest.host_base,
            env=dict(manifest.env),
            workdir=manifest.workdir,
            python=manifest.python,
        )

    # ---------------------------------------------------------------------------- pins, logs

    def _pin_path(self, sandbox_id: str) -> Path:
        if not isinstance(sandbox_id, str) or not PIN_RE.match(sandbox_id):
            raise InvalidArgumentError(f"invalid sandbox id {sandbox_id!r:.80}")
        return self.root / "pins" / sandbox_id

    def pin(self, sandbox_id: str, digest: str) -> None:
        """Record that a running sandbox uses a manifest (gc keeps it and its layers)."""
        write_atomic(self._pin_path(sandbox_id), check_hex64(digest).encode())

    def unpin(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pin_path(sandbox_id).unlink()

    def pins(self) -> dict[str, str]:
        found = {}
        for path in (self.root / "pins").iterdir():
            if path.name.startswith("."):
                continue
            with contextlib.suppress(OSError, InvalidArgumentError, UnicodeDecodeError):
                found[path.name] = check_hex64(read_small(path).decode().strip())
        return found

    def log_path(self, digest: str) -> Path:
        return self.root / "logs" / f"{check_hex64(digest)}.log"

    # ---------------------------------------------------------------------------- export, gc

    def write_rootfs_tar(self, ref: str, fileobj: BinaryIO, owner: str = "") -> ResolvedTemplate:
        """The merged root filesystem of an image-base template as one tar stream (whiteouts
        applied; what ``docker import`` takes). A host-base template has no whole root."""
        resolved = self.resolve(ref, owner)
        if resolved.host_base:
            raise InvalidArgumentError(
                f"template {ref} is built on the host's system: it has no root filesystem of "
                "its own to export as an image"
            )
        L.write_merged_tar(resolved.lowers, fileobj)
        return resolved

    def export(self, name: str, fileobj: BinaryIO, owner: str = "") -> TemplateManifest:
        """Write a template (manifest + its layers) as a tar stream."""
        from .archive import export_template

        manifest = self.get(name, owner)
        export_template(self, manifest, fileobj)
        return manifest

    def import_(
        self, fileobj: BinaryIO, name: str, owner: str = "", *, max_bytes: int | None = None
    ) -> TemplateManifest:
        """Read a tar written by :meth:`export` (untrusted: every member checked) and name
        the template it holds ``name``."""
        from .archive import import_template

        check_name(name)
        with self.using():
            manifest = import_template(self, fileobj, max_bytes=max_bytes)
            manifest = manifest.model_copy(update={"name": name})
            self.save(manifest, owner)
        return manifest

    def gc(self, extra_in_use: set[str] | None = None) -> TemplateGcReport:
        """Remove manifests no name, pin or ``extra_in_use`` holds, then layers no kept
        manifest uses, logs of removed manifests and work folders older than TMP_GRACE.
        ``extra_in_use``: manifest digests (``sha256:`` or bare) or layer ids that must
        stay (pools' specs).
        Refused (SandlotError) while a build or import runs: waiting could block the very
        event loop that build needs."""
        report = TemplateGcReport()
        with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB):
            keep = self._named_digests() | set(self.pins().values())
            keep_layers = set()
            for item in extra_in_use or ():
                bare = item.removeprefix(DIGEST_PREFIX)
                keep.add(bare)
                keep_layers.add(bare)
            for path in (self.root / "manifests").glob("*.json"):
                digest = path.name.removesuffix(".json")
                if digest in keep:
                    try:
                        keep_layers.update(self.manifest(digest).layer_ids)
                    except SandlotError:
                        continue
                else:
                    path.unlink()
                    with contextlib.suppress(FileNotFoundError):
                        self.log_path(digest).unlink()
                    report.removed_manifests.append(digest)
            for folder in (self.root / "layers").iterdir():
                if folder.name in keep_layers:
                    continue
                with contextlib.suppress(SandlotError, InvalidArgumentError):
                    report.freed_bytes += self.layer(folder.name).size
                remove_tree(folder)
                report.removed_layers.append(folder.name)
            for entry in (self.root / "cache").iterdir():  # keys of removed layers
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    if read_small(entry).decode() not in keep_layers:
                        entry.unlink()
            # Work folders of crashed builds; young ones may belong to work outside the lock
            # (a docker import, a base layer being copied).
            stale = time.time() - TMP_GRACE
            for folder in (self.root / "tmp").iterdir():
                if os.lstat(folder).st_mtime > stale:
                    continue
                if folder.is_dir() and not folder.is_symlink():
                    remove_tree(folder)
                else:
                    folder.unlink()
        return report

    def size(self) -> int:
        """Bytes of every layer in the store."""
        total = 0
        for folder in (self.root / "layers").iterdir():
            with contextlib.suppress(SandlotError, InvalidArgumentError):
                total += self.layer(folder.name).size
        return total


def _version() -> str:
    from ... import __version__

    return __version__
