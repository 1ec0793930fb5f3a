"""A template as one tar stream (``sandlot template export`` / ``import``), and the checks
that make importing one safe.

Layout, in this order::

    manifest.json                  the TemplateManifest
    layers/<id>/layer.json         each layer's LayerInfo, bottom layer first,
    layers/<id>/root/...           followed by its files

Overlayfs marks travel in the OCI spelling: a whiteout as an empty ``.wh.NAME`` file, an
opaque folder as an empty ``.wh..wh..opq`` in it; import turns them back into overlayfs marks.

An archive is untrusted. Import reads it as a stream into a private work folder and refuses
(before anything is named): a member outside ``layers/<a layer of the manifest>/``, an
absolute, empty-parted, ``.`` or ``..`` path, one below a symlink or file, a path twice, a
device, FIFO, sparse or hard link leaving its layer, long/extended headers over 1 MiB, more
than ``max_bytes`` of files or ``MAX_MEMBERS`` members, and a layer whose content digest,
size or entry count differs from its layer.json. Set-id bits are cleared, owners are the
importer's. Imported step layers get new ids derived from their content (a build cache key
is never taken from an archive, so an archive cannot plant a layer a later build reuses).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ...errors import InvalidArgumentError
from . import layers as L
from .fsutil import MAX_JSON, remove_tree
from .layers import find_python
from .model import MAX_TEXT, LayerInfo, TemplateManifest, parse_manifest

if TYPE_CHECKING:
    from .store import TemplateStore

MANIFEST = "manifest.json"
MAX_MEMBERS = 2_000_000
MAX_HEADER = 1 << 20
MAX_PATH = 4096
DEFAULT_MAX_BYTES = 64 << 30


# --------------------------------------------------------------------------------------------
# export


def export_template(store: TemplateStore, manifest: TemplateManifest, fileobj: BinaryIO) -> None:
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST, manifest.model_dump_json(indent=1).encode())
        for layer in manifest.layers:
            prefix = f"layers/{layer.id}"
            _add_bytes(
                tar, f"{prefix}/layer.json", store.layer(layer.id).model_dump_json().encode()
            )
            root = store.layer_dir(layer.id) / "root"
            _add_folder(tar, f"{prefix}/root", root)
            for entry in L.walk(root):
                name = f"{prefix}/root/{entry.rel}"
                base = os.path.basename(entry.rel)
                if base.startswith(L.WH_PREFIX):
                    raise InvalidArgumentError(
                        f"layer {layer.id[:12]} holds {entry.rel!r}: a name starting with "
                        f"{L.WH_PREFIX!r} cannot be exported (it reads as a deletion)"
                    )
                if L.is_whiteout(entry.path, entry.st):
                    parent = os.path.dirname(name)
                    _add_bytes(tar, f"{parent}/{L.WH_PREFIX}{base}", b"")
                    continue
                if stat.S_ISDIR(entry.st.st_mode):
                    L.add_entry(tar, name, entry)
                    if L.is_opaque(entry.path):
                        _add_bytes(tar, f"{name}/{L.WH_OPAQUE}", b"")
                elif stat.S_ISREG(entry.st.st_mode) or stat.S_ISLNK(entry.st.st_mode):
                    L.add_entry(tar, name, entry)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_folder(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, stat.S_IMODE(os.lstat(path).st_mode)
    tar.addfile(info)


# --------------------------------------------------------------------------------------------
# import


_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedInfo(tarfile.TarInfo):
    """Refuses long-name and extended headers over MAX_HEADER before tarfile reads them
    into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type in _HEADERS and self.size > MAX_HEADER:
            raise InvalidArgumentError(f"template archive: a {self.size}-byte header")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"template archive refused: {message}")


def _split(name: str) -> tuple[str, str, str]:
    """``layers/<id>/<what>[/rel]`` -> (id, what, rel)."""
    if not name or len(name) > MAX_PATH or "\0" in name or name.startswith("/"):
        raise _bad(f"member {name!r:.100}: absolute, empty or too long")
    parts = name.rstrip("/").split("/") if name != "/" else [""]
    for part in parts:
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogateescape")) > 255:
            raise _bad(f"member {name!r:.100}: empty, '.' or '..' part")
    if len(parts) < 3 or parts[0] != "layers" or parts[2] not in ("layer.json", "root"):
        raise _bad(f"member {name!r:.100} is not part of a template")
    if parts[2] == "layer.json" and len(parts) != 3:
        raise _bad(f"member {name!r:.100} is not part of a template")
    return parts[1], parts[2], "/".join(parts[3:])


class _Layer:
    """One layer being extracted: what each path is, so nothing is written through a
    symlink or into a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.kinds: dict[str, str] = {"": "dir"}
        self.modes: dict[str, int] = {}
        self.info: LayerInfo | None = None
        root.mkdir(mode=0o700)

    def parent(self, rel: str) -> str:
        """Make sure the parent folders of ``rel`` exist as folders this import made."""
        parent = os.path.dirname(rel)
        chain = []
        while parent not in self.kinds:
            chain.append(parent)
            parent = os.path.dirname(parent)
        if self.kinds[parent] != "dir":
            raise _bad(f"{rel!r:.100} is below a {self.kinds[parent]}")
        for folder in reversed(chain):
            os.mkdir(self.root / folder, 0o700)
            self.kinds[folder] = "dir"
            self.modes.setdefault(folder, 0o755)
        return os.path.dirname(rel)

    def claim(self, rel: str, kind: str) -> Path:
        if rel in self.kinds:
            if kind == "dir" and self.kinds[rel] == "dir":
                return self.root / rel  # a folder named again (e.g. after its contents)
            raise _bad(f"{rel!r:.100} appears twice")
        self.parent(rel)
        self.kinds[rel] = kind
        return self.root / rel


def import_template(
    store: TemplateStore, fileobj: BinaryIO, *, max_bytes: int | None = None
) -> TemplateManifest:
    """Read an exported template into the store; returns its manifest (new layer ids, no
    name). The caller holds ``store.using()``."""
    budget = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    work = store.tmp_dir("import-")
    try:
        manifest, extracted = _extract(store, fileobj, work, budget)
        return _commit(store, manifest, extracted)
    finally:
        if work.exists():
            remove_tree(work)


def _extract(
    store: TemplateStore, fileobj: BinaryIO, work: Path, budget: int
) -> tuple[TemplateManifest, dict[str, _Layer]]:
    manifest: TemplateManifest | None = None
    extracted: dict[str, _Layer] = {}
    used = members = 0
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_BoundedInfo)  # noqa: SIM115
    except tarfile.TarError as exc:
        raise _bad(f"not a tar stream ({exc})") from None
    with tar:
        try:
            for member in tar:
                members += 1
                if members > MAX_MEMBERS:
                    raise _bad(f"more than {MAX_MEMBERS} members")
                if manifest is None:
                    if member.name != MANIFEST or not member.isreg() or member.size > MAX_JSON:
                        raise _bad(f"the first member must be {MANIFEST}")
                    manifest = parse_manifest(_read(tar, member), "imported template manifest")
                    for listed in manifest.layers:
                        if listed.id in extracted:
                            raise _bad(f"layer {listed.id} listed twice")
                        extracted[listed.id] = _Layer(work / listed.id)
                    continue
                layer_id, what, rel = _split(member.name)
                layer = extracted.get(layer_id)
                if layer is None:
                    raise _bad(f"member {member.name!r:.100}: layer not in the manifest")
                if what == "layer.json":
                    if layer.info is not None or not member.isreg() or member.size > MAX_JSON:
                        raise _bad(f"{member.name!r:.100}: a second or bad layer.json")
                    try:
                        layer.info = LayerInfo.model_validate_json(_read(tar, member))
                    except ValueError:
                        raise _bad(f"{member.name!r:.100}: not a layer description") from None
                    if layer.info.id != layer_id:
                        raise _bad(f"{member.name!r:.100} describes another layer")
                    continue
                used += _member(tar, member, layer, rel, budget - used)
        except tarfile.TarError as exc:
            raise _bad(f"a damaged tar stream ({exc})") from None
    if manifest is None:
        raise _bad(f"no {MANIFEST}")
    return manifest, extracted


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    assert fh is not None
    return fh.read(MAX_JSON + 1)


def _member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, layer: _Layer, rel: str, left: int
) -> int:
    """Extract one member of a layer's root; returns the bytes written."""
    base = os.path.basename(rel)
    bits = member.mode & 0o7777 & ~L.STRIP_BITS
    if rel == "":
        if not member.isdir():
            raise _bad("a layer's root is not a folder")
        layer.modes[""] = bits
        return 0
    if base.startswith(L.WH_PREFIX):
        if not member.isreg() or member.size != 0:
            raise _bad(f"{rel!r:.100}: a whiteout must be an empty file")
        if base == L.WH_OPAQUE:
            folder = layer.parent(rel)
            if layer.kinds.get(folder) != "dir":
                raise _bad(f"{rel!r:.100}: opaque mark outside a folder")
            L.mark_opaque(str(layer.root / folder))
        else:
            target = os.path.join(os.path.dirname(rel), base[len(L.WH_PREFIX) :])
            path = layer.claim(target, "whiteout")
            try:
                L.make_whiteout(str(path))
            except PermissionError:
                raise InvalidArgumentError(
                    "this template deletes files in a step; importing it needs root (overlayfs "
                    "whiteouts are device nodes)"
                ) from None
        return 0
    if member.isdir():
        path = layer.claim(rel, "dir")
        if not path.exists():
            os.mkdir(path, 0o700)
        layer.modes[rel] = bits
        return 0
    if member.issym():
        if not member.linkname or len(member.linkname) > MAX_PATH or "\0" in member.linkname:
            raise _bad(f"{rel!r:.100}: a bad symlink target")
        # Any target is fine inside the sandbox (it resolves against the sandbox's root);
        # the host never follows one (walks use lstat, opens O_NOFOLLOW).
        os.symlink(member.linkname, layer.claim(rel, "symlink"))
        return 0
    if member.islnk():
        try:
            target_id, what, target = _split(member.linkname)
        except InvalidArgumentError:
            raise _bad(f"{rel!r:.100}: a hard link out of its layer") from None
        if layer.root.name != target_id or what != "root" or layer.kinds.get(target) != "file":
            raise _bad(f"{rel!r:.100}: a hard link out of its layer or to a non-file")
        os.link(layer.root / target, layer.claim(rel, "file"), follow_symlinks=False)
        return 0
    if member.isreg() and not member.issparse():
        if member.size > left:
            raise _bad("the template is larger than the import limit")
        path = layer.claim(rel, "file")
        source = tar.extractfile(member)
        assert source is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(L.CHUNK):
                out.write(chunk)
            os.fchmod(out.fileno(), bits)
        return member.size
    raise _bad(f"{rel!r:.100}: devices, FIFOs and sparse files are not allowed")


def _commit(
    store: TemplateStore, manifest: TemplateManifest, extracted: dict[str, _Layer]
) -> TemplateManifest:
    """Check each extracted layer against its description, add it under its new id and
    return the manifest that names the new ids."""
    renamed: list[LayerInfo] = []
    parent = manifest.base.key
    for listed in manifest.layers:
        layer = extracted[listed.id]
        info = layer.info
        if info is None:
            raise _bad(f"layer {listed.id}: no layer.json")
        if info.model_dump(exclude={"content"}) != listed.model_dump(exclude={"content"}):
            raise _bad(f"layer {listed.id}: layer.json and the manifest disagree")
        for rel, bits in sorted(layer.modes.items(), key=lambda kv: -len(kv[0])):
            os.chmod(layer.root / rel, bits, follow_symlinks=False)
        content = L.tree_digest(layer.root)
        size, files = L.measure(layer.root)
        if content != info.content or (size, files) != (info.size, info.files):
            raise _bad(f"layer {listed.id}: its files do not match its digest, size or count")
        # A base layer's id is its content; a step layer gets an id derived from content,
        # never the cache key the archive claims.
        if info.step is None and info.id == content:
            new_id = content
        else:
            new_id = hashlib.sha256(f"import\0{parent}\0{content}".encode()).hexdigest()
        holder = store.tmp_dir("layer-")
        os.rename(layer.root, holder / "root")
        renamed.append(store.add_layer(holder / "root", new_id, info.step, content))
        with contextlib.suppress(OSError):
            holder.rmdir()
        parent = new_id
    lowers = [store.layer_dir(layer.id) / "root" for layer in reversed(renamed)]
    python = find_python(lowers, manifest.host_base)
    if len(python) > MAX_TEXT:
        raise _bad("bad python path")
    return manifest.model_copy(update={"layers": renamed, "python": python})
