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
import contextlib
import hashlib
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ...errors import InvalidArgumentError, NotFoundError
from . import base_oci, hostcopy, untar
from . import layers as L
from .limits import BaseLimits
from .model import BaseInfo
from .store import TemplateStore, remove_tree, write_atomic
from .tree import Refused, check_tree

KINDS = ("oci", "docker", "rootfs", "tar")

OnEvent = Callable[[Any], Any]  # may return an awaitable
Say = Callable[[str], Awaitable[None]]
BASE_FILE = "base.json"  # beside layer.json: the ImportedBase, for the image's env and workdir


class BaseProgress(BaseModel):
    """A progress line of a base's import, shaped as the build's ``log`` event of step 0."""

    type: Literal["log"] = "log"
    index: int = 0
    line: str


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


def base_config(store: TemplateStore, layer_id: str) -> tuple[dict[str, str], str | None]:
    """The environment and working folder a base layer's image asks for (its ``Env`` and
    ``WorkingDir``; empty for ``rootfs:``/``tar:`` bases and layers imported otherwise)."""
    with contextlib.suppress(OSError, ValueError):
        saved = ImportedBase.model_validate_json(
            (store.layer_dir(layer_id) / BASE_FILE).read_text()
        )
        return dict(saved.env), saved.workdir
    return {}, None


async def prepare_image_base(
    kind: str,
    ref: str,
    store: TemplateStore,
    on_event: OnEvent | None = None,
    limits: BaseLimits | None = None,
) -> ImportedBase:
    """Import the base ``kind:ref`` as a layer of ``store`` unless it is there already.
    Raises a sandlot error naming the base when it cannot be read or is refused."""
    limits = limits or BaseLimits.from_env()

    async def say(line: str) -> None:
        if on_event is not None:
            answer = on_event(BaseProgress(line=line))
            if inspect.isawaitable(answer):
                await answer

    spec = f"{kind}:{ref}"
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown base kind {kind!r} (one of host, {', '.join(KINDS)})")
    if not ref:
        raise InvalidArgumentError(f"base {spec!r} names nothing: {kind}:REF")
    work = store.tmp_dir("import-")
    try:
        with store.using():
            return await _import(kind, ref, store, work, say, limits)
    except Refused as exc:
        raise InvalidArgumentError(f"base {spec!r} refused: {exc}", base=spec) from None
    finally:
        await asyncio.to_thread(remove_tree, work)


class _Fetched:
    """A base's tree in ``work/root``, not yet checked or stored."""

    def __init__(
        self,
        digest: str,
        platform: str = "",
        config: dict[str, Any] | None = None,
        content: str | None = None,
    ) -> None:
        self.digest, self.platform = digest, platform
        self.config = config or {}
        self.content = content  # the tree's digest, when already computed


Fetcher = Callable[
    [str, TemplateStore, Path, Say, BaseLimits], Awaitable["_Fetched | ImportedBase"]
]


async def _import(
    kind: str, ref: str, store: TemplateStore, work: Path, say: Say, limits: BaseLimits
) -> ImportedBase:
    got = await _FETCHERS[kind](ref, store, work, say, limits)
    if isinstance(got, ImportedBase):
        await say(f"base {kind}:{ref} ({got.digest[:19]}) is imported already")
        return got
    root = work / "root"
    await asyncio.to_thread(check_tree, root, limits)
    layer_id = base_layer_id(kind, got.digest, got.platform)
    layer = await asyncio.to_thread(store.add_layer, root, layer_id, None, got.content)
    imported = ImportedBase(
        kind=kind,
        ref=ref,
        digest=got.digest,
        layer_id=layer_id,
        size=layer.size,
        files=layer.files,
        env=base_oci.env_of(got.config),
        workdir=base_oci.workdir_of(got.config),
    )
    write_atomic(store.layer_dir(layer_id) / BASE_FILE, imported.model_dump_json().encode())
    return imported


async def _oci(
    ref: str, store: TemplateStore, work: Path, say: Say, limits: BaseLimits
) -> _Fetched | ImportedBase:
    parsed = base_oci.OciRef(ref)
    digest = await base_oci.manifest_digest(parsed, limits)
    platform = base_oci.platform()
    found = _existing(store, "oci", ref, digest, platform)
    if found is not None:
        return found
    await say(f"pulling {ref} ({digest[:19]})")
    unpacked, config = await base_oci.pull(parsed, digest, work, limits)
    unpacked.rename(work / "root")
    return _Fetched(digest, platform, config)


async def _docker(
    ref: str, store: TemplateStore, work: Path, say: Say, limits: BaseLimits
) -> _Fetched | ImportedBase:
    from . import base_docker  # the engine's client only when asked for

    image = await base_docker.inspect(ref)
    found = _existing(store, "docker", ref, image.id, "")
    if found is not None:
        return found
    await say(f"exporting {ref} ({image.id[:19]}) from the Docker engine")
    tar = work / "export.tar"
    await base_docker.export(image, tar, limits)
    (work / "root").mkdir()
    await say(f"unpacking {ref}")
    await asyncio.to_thread(_untar_file, tar, work / "root", limits)
    tar.unlink()
    return _Fetched(image.id, config=image.config)


async def _tar(
    ref: str, store: TemplateStore, work: Path, say: Say, limits: BaseLimits
) -> _Fetched | ImportedBase:
    path = _host_path(ref, "tar")
    await say(f"hashing {path}")
    digest = await asyncio.to_thread(_file_digest, path)
    found = _existing(store, "tar", ref, digest, "")
    if found is not None:
        return found
    (work / "root").mkdir()
    await say(f"unpacking {path}")
    await asyncio.to_thread(_untar_file, path, work / "root", limits)
    return _Fetched(digest)


async def _rootfs(
    ref: str, store: TemplateStore, work: Path, say: Say, limits: BaseLimits
) -> _Fetched | ImportedBase:
    """Its digest is its content's, known once copied."""
    path = _host_path(ref, "rootfs")
    (work / "root").mkdir()
    await say(f"copying {path}")
    await asyncio.to_thread(hostcopy.copy, path, work / "root", limits)
    content = await asyncio.to_thread(L.tree_digest, work / "root")
    found = _existing(store, "rootfs", ref, "sha256:" + content, "")
    return found or _Fetched("sha256:" + content, content=content)


_FETCHERS: dict[str, Fetcher] = {"oci": _oci, "docker": _docker, "tar": _tar, "rootfs": _rootfs}


def _existing(
    store: TemplateStore, kind: str, ref: str, digest: str, platform: str
) -> ImportedBase | None:
    layer_id = base_layer_id(kind, digest, platform)
    if not store.has_layer(layer_id):
        return None
    info = store.layer(layer_id)
    env, workdir = base_config(store, layer_id)
    return ImportedBase(
        kind=kind,
        ref=ref,
        digest=digest,
        layer_id=layer_id,
        size=info.size,
        files=info.files,
        env=env,
        workdir=workdir,
        reused=True,
    )


async def prepare(
    kind: str, ref: str, store: TemplateStore, on_event: OnEvent
) -> tuple[BaseInfo, str]:
    """The preparer :mod:`.bases` calls for ``kind:ref``."""
    imported = await prepare_image_base(kind, ref, store, on_event)
    info = BaseInfo(kind=kind, ref=ref, digest=imported.digest)
    return info, imported.layer_id


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
