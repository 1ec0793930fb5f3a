"""Bases that bring their own root filesystem: ``oci:REF``, ``docker:REF``, ``rootfs:DIR`` and
``tar:FILE``. Each becomes one base layer, a full root filesystem, whose id derives from the
base's digest: a base imported once is reused by every template built on it.

The digest is the registry's manifest digest (``oci:``), the image id (``docker:``), the
sha256 of the file (``tar:``) or of the tree as copied (``rootfs:``: known only after the
copy, so a rootfs base is always read, and stored once). The tree comes in through
:mod:`.tree`'s checks whatever its kind; a refused or failed import leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ...errors import InvalidArgumentError, NotFoundError
from . import base_docker, base_oci, hostcopy, untar
from .limits import BaseLimits
from .tree import Refused, check_tree

KINDS = ("oci", "docker", "rootfs", "tar")

OnEvent = Callable[[str], None]


class ImportedBase(BaseModel):
    """A base layer ready in the store, and what its image says about running it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    ref: str
    digest: str
    layer_id: str
    size: int
    files: int
    env: dict[str, str] = {}
    workdir: str | None = None
    reused: bool = False


def base_layer_id(kind: str, digest: str, platform: str = "") -> str:
    """The id of the layer a base with this digest becomes."""
    key = "\0".join(("base", kind, digest, platform))
    return hashlib.sha256(key.encode()).hexdigest()


async def prepare_image_base(
    kind: str,
    ref: str,
    layers: Path,
    on_event: OnEvent | None = None,
    limits: BaseLimits | None = None,
) -> ImportedBase:
    """Import the base ``kind:ref`` as ``layers/<id>/root`` unless it is there already.
    Raises a sandlot error naming the base when it cannot be read or is refused."""
    limits = limits or BaseLimits.from_env()
    say = on_event or (lambda _: None)
    spec = f"{kind}:{ref}"
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown base kind {kind!r} (one of host, {', '.join(KINDS)})")
    if not ref:
        raise InvalidArgumentError(f"base {spec!r} names nothing")
    layers.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=layers))
    try:
        return await _import(kind, ref, layers, work, say, limits)
    except Refused as exc:
        raise InvalidArgumentError(f"base {spec!r} refused: {exc}", base=spec) from None
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


async def _import(
    kind: str, ref: str, layers: Path, work: Path, say: OnEvent, limits: BaseLimits
) -> ImportedBase:
    config: dict[str, Any] = {}
    platform = ""
    root = work / "root"
    if kind == "oci":
        parsed = base_oci.OciRef(ref)
        digest = await base_oci.manifest_digest(parsed, limits)
        platform = base_oci.platform()
        found = _existing(layers, kind, ref, digest, platform)
        if found is not None:
            say(f"base {kind}:{ref} ({digest[:19]}) already imported")
            return found
        say(f"pulling {ref} ({digest[:19]})")
        unpacked, config = await base_oci.pull(parsed, digest, work, limits)
        say(f"checking {ref}")
        await asyncio.to_thread(check_tree, unpacked, limits)
        unpacked.rename(root)
    elif kind == "docker":
        image = await base_docker.inspect(ref)
        digest, config = image.id, image.config
        found = _existing(layers, kind, ref, digest, platform)
        if found is not None:
            say(f"base {kind}:{ref} ({digest[:19]}) already imported")
            return found
        say(f"exporting {ref} ({digest[:19]}) from the Docker engine")
        tar = work / "export.tar"
        await base_docker.export(image, tar, limits)
        root.mkdir()
        say(f"unpacking {ref}")
        await asyncio.to_thread(_untar_file, tar, root, limits)
        tar.unlink()
    elif kind == "tar":
        path = _host_path(ref, kind)
        say(f"hashing {path}")
        digest = await asyncio.to_thread(_file_digest, path)
        found = _existing(layers, kind, ref, digest, platform)
        if found is not None:
            return found
        root.mkdir()
        say(f"unpacking {path}")
        await asyncio.to_thread(_untar_file, path, root, limits)
    else:  # rootfs
        path = _host_path(ref, kind)
        root.mkdir()
        say(f"copying {path}")
        writer = await asyncio.to_thread(hostcopy.copy, path, root, limits, True)
        digest = writer.digest()
        found = _existing(layers, kind, ref, digest, platform)
        if found is not None:
            return found
    size, files, _ = await asyncio.to_thread(check_tree, root, limits)
    imported = ImportedBase(
        kind=kind,
        ref=ref,
        digest=digest,
        layer_id=base_layer_id(kind, digest, platform),
        size=size,
        files=files,
        env=base_oci.env_of(config),
        workdir=base_oci.workdir_of(config),
    )
    _commit(work, root, layers, imported)
    return imported


def _existing(layers: Path, kind: str, ref: str, digest: str, platform: str) -> ImportedBase | None:
    layer_id = base_layer_id(kind, digest, platform)
    info = layers / layer_id / "base.json"
    if not info.is_file():
        return None
    stored = ImportedBase.model_validate_json(info.read_text())
    return stored.model_copy(update={"ref": ref, "reused": True})


def _commit(work: Path, root: Path, layers: Path, imported: ImportedBase) -> None:
    """Move the checked tree into place in one rename (a concurrent import of the same base
    may have won: then this copy is dropped with ``work``)."""
    staged = work / uuid.uuid4().hex
    staged.mkdir()
    root.rename(staged / "root")
    (staged / "base.json").write_text(imported.model_dump_json())
    target = layers / imported.layer_id
    try:
        staged.rename(target)
    except OSError:
        if not (target / "base.json").is_file():
            raise


def _host_path(ref: str, kind: str) -> Path:
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    want_dir = kind == "rootfs"
    if not (path.is_dir() if want_dir else path.is_file()):
        what = "folder" if want_dir else "file"
        raise NotFoundError(f"base {kind}:{ref}: no such {what} {str(path)!r}", path=str(path))
    return path


def _file_digest(path: Path) -> str:
    with open(path, "rb") as data:
        return "sha256:" + hashlib.file_digest(data, "sha256").hexdigest()


def _untar_file(path: Path, root: Path, limits: BaseLimits) -> None:
    with open(path, "rb") as data:
        untar.extract(data, root, limits)
