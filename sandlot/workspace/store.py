"""The workspace store: where checkpoints go. One base class holds the algorithms (in
:mod:`.checkpoint`) and the async surface; a backend (:mod:`.local`, :mod:`.s3`) supplies a
handful of blocking primitives on blobs and manifests.

Layout, the same in a folder and under an S3 prefix::

    blobs/<hh>/<sha256>                         file contents, stored once by hash
    sessions/<session_id>/<number:012d>.json    one checkpoint (.json.gz when compressed)

Blobs are written first and the manifest last, each atomically (temp + fsync + rename; an S3
PUT), so the highest-numbered manifest is always complete and every blob it names is there.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgumentError, SandlotError
from .manifest import CheckpointInfo, Manifest, RestoreInfo, check_session_id

KEEP = 3  # manifests kept per session
MANIFEST_RE = re.compile(r"^(\d{12})\.json(\.gz)?$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PREFIX_PART_RE = re.compile(r"^[A-Za-z0-9._=+@,-]+$")


def check_store_url(url: str) -> str:
    """``"local"`` or ``"s3://bucket[/prefix]"``, normalised (no trailing slash); anything
    else is an InvalidArgumentError saying what is accepted."""
    if not isinstance(url, str):
        raise InvalidArgumentError("workspace store must be a string: 'local' or 's3://...'")
    if url == "local":
        return url
    if not url.startswith("s3://"):
        raise InvalidArgumentError(
            f"workspace store {url!r:.100} is not supported: use 'local' or "
            "'s3://bucket/optional/prefix'"
        )
    bucket, _, prefix = url[5:].partition("/")
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidArgumentError(
            f"workspace store {url!r:.100}: {bucket!r:.70} is not a valid S3 bucket name "
            "(3-63 lowercase letters, digits, '.' and '-')"
        )
    parts = [p for p in prefix.strip("/").split("/")] if prefix.strip("/") else []
    for part in parts:
        if part in (".", "..") or not PREFIX_PART_RE.match(part):
            raise InvalidArgumentError(
                f"workspace store {url!r:.100}: bad prefix part {part!r:.50} (letters, digits "
                "and ._=+@,- only; no empty, '.' or '..' parts)"
            )
    if len(prefix) > 512:
        raise InvalidArgumentError("workspace store prefix is longer than 512 characters")
    return "s3://" + "/".join([bucket, *parts])


def open_store(url: str, home: Path) -> WorkspaceStore:
    """The store for a checked URL: ``local`` is the folder ``home / "workspaces"``."""
    url = check_store_url(url)
    if url == "local":
        from .local import LocalStore

        return LocalStore(Path(home) / "workspaces")
    from .s3 import S3Store

    bucket, _, prefix = url[5:].partition("/")
    return S3Store(bucket, prefix)


def store_error(message: str, **details: object) -> SandlotError:
    """The error for a store that cannot be used (unreachable, refused, misconfigured).

    Prefers ``SessionError`` (added with durable sessions) and falls back to the root class
    while that is not in :mod:`sandlot.errors`; both are SandlotErrors."""
    from .. import errors

    cls: type[SandlotError] = getattr(errors, "SessionError", SandlotError)
    return cls(message, **details)


@dataclass
class _Latest:
    """A session's latest manifest as this process knows it: parsed from the store, or the
    entries it just wrote (validated only if someone asks for the Manifest)."""

    number: int
    hashes: set[str]
    manifest: Manifest | None = None
    raw: dict | None = None


@dataclass
class Staged:
    """A blob's content read privately from the workspace: in memory or in a temp file."""

    hash: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        self.data = None


class WorkspaceStore(ABC):
    """Checkpoints of session workspaces. The async methods run the blocking core in a
    thread; ``*_sync`` twins exist for callers already in one."""

    url: str
    compress: bool = False
    max_inline: int = 0  # stage blobs up to this size in memory (else a temp file)
    workers: int = 8

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._cache: dict[str, _Latest] = {}  # session -> its latest manifest
        self._pinned: collections.Counter[str] = collections.Counter()  # in-flight blobs
        self._mutex = threading.Lock()

    # -- the backend's primitives (blocking) ------------------------------------------------

    @abstractmethod
    def staging_dir(self) -> Path: ...

    @abstractmethod
    def has_blob(self, digest: str) -> bool: ...

    @abstractmethod
    def put_blob(self, staged: Staged) -> None:
        """Store ``staged`` under its hash; consumes its temp file."""

    def sync_blobs(self, digests: list[str]) -> None:
        """Make the blobs just put durable before the manifest that names them is written."""

    @abstractmethod
    def fetch_blob(self, digest: str, size: int, out_fd: int) -> int:
        """Write the blob into ``out_fd``; refuse (ProtocolError) content whose size or sha256
        does not match. Returns the bytes written."""

    @abstractmethod
    def manifest_names(self, session_id: str) -> dict[int, str]: ...

    @abstractmethod
    def read_manifest(self, session_id: str, name: str) -> bytes: ...

    @abstractmethod
    def write_manifest(self, session_id: str, number: int, data: bytes) -> None: ...

    @abstractmethod
    def delete_manifests(self, session_id: str, names: list[str]) -> None: ...

    @abstractmethod
    def session_ids(self) -> list[str]: ...

    @abstractmethod
    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """Every blob as (hash, mtime in epoch seconds)."""

    @abstractmethod
    def delete_blobs(self, digests: Iterable[str]) -> None: ...

    def clean_staging(self, grace: float) -> None:
        """Drop temp files a crashed checkpoint left behind."""

    def close_sync(self) -> None:
        pass

    # -- manifests ----------------------------------------------------------------------------

    def latest_sync(self, session_id: str) -> Manifest | None:
        check_session_id(session_id)
        latest = self._latest(session_id, self.manifest_names(session_id))
        if latest is None:
            return None
        if latest.manifest is None:  # one this process wrote: built from its own entries
            latest.manifest = Manifest.model_validate(latest.raw)
            latest.raw = None
        return latest.manifest

    def _latest(self, session_id: str, names: dict[int, str]) -> _Latest | None:
        """The latest manifest among ``names``, from the cache when it is the one we know."""
        if not names:
            self._cache.pop(session_id, None)
            return None
        number = max(names)
        cached = self._cache.get(session_id)
        if cached is not None and cached.number == number:
            return cached
        manifest = Manifest.decode(
            self.read_manifest(session_id, names[number]), session_id, number
        )
        latest = _Latest(number, manifest.hashes(), manifest=manifest)
        self._cache[session_id] = latest
        return latest

    def _remember(self, session_id: str, number: int, raw: dict, hashes: set[str]) -> None:
        self._cache[session_id] = _Latest(number, hashes, raw=raw)

    def checkpoint_sync(
        self, session_id: str, folder: Path, index: Path | None = None
    ) -> CheckpointInfo:
        from .checkpoint import checkpoint

        check_session_id(session_id)
        with self._locks[session_id]:
            return checkpoint(self, session_id, Path(folder), index)

    def restore_sync(
        self, session_id: str, folder: Path, index: Path | None = None, *, settle: bool = True
    ) -> RestoreInfo | None:
        from .checkpoint import restore

        check_session_id(session_id)
        with self._locks[session_id]:
            return restore(self, session_id, Path(folder), index, settle=settle)

    def delete_sync(self, session_id: str, grace: float = 60.0) -> int:
        check_session_id(session_id)
        with self._locks[session_id]:
            names = self.manifest_names(session_id)
            self.delete_manifests(session_id, list(names.values()))
            self._cache.pop(session_id, None)
        return self.gc_sync(grace)

    def gc_sync(self, grace: float = 60.0) -> int:
        """Delete blobs that no manifest of any session names and that are older than
        ``grace`` seconds (a checkpoint running elsewhere writes its blobs before its
        manifest: grace must outlast the longest checkpoint). Returns how many were deleted."""
        referenced: set[str] = set()
        for session_id in self.session_ids():
            for number, name in self.manifest_names(session_id).items():
                try:
                    data = self.read_manifest(session_id, name)
                except FileNotFoundError:
                    continue  # pruned meanwhile
                referenced |= Manifest.decode(data, session_id, number).hashes()
        cutoff = time.time() - grace
        with self._mutex:
            pinned = set(self._pinned)
        doomed = [
            digest
            for digest, mtime in self.list_blobs()
            if mtime < cutoff and digest not in referenced and digest not in pinned
        ]
        self.delete_blobs(doomed)
        self.clean_staging(grace)
        return len(doomed)

    # -- the async surface --------------------------------------------------------------------

    async def checkpoint(
        self, session_id: str, folder: Path, index: Path | None = None
    ) -> CheckpointInfo:
        """Checkpoint ``folder`` (the sandbox may be running). ``index`` is a cache of file
        hashes outside the folder: only files whose stat changed are read."""
        return await asyncio.to_thread(self.checkpoint_sync, session_id, folder, index)

    async def restore(
        self, session_id: str, folder: Path, index: Path | None = None, *, settle: bool = True
    ) -> RestoreInfo | None:
        """Make ``folder`` hold the session's latest checkpoint (None: it has none).
        ``settle=False``: see :func:`sandlot.workspace.checkpoint.restore`."""
        return await asyncio.to_thread(
            lambda: self.restore_sync(session_id, folder, index, settle=settle)
        )

    async def delete(self, session_id: str, grace: float = 60.0) -> int:
        """Delete the session's manifests, then unreferenced blobs; returns blobs deleted."""
        return await asyncio.to_thread(self.delete_sync, session_id, grace)

    async def gc(self, grace: float = 60.0) -> int:
        return await asyncio.to_thread(self.gc_sync, grace)

    async def latest(self, session_id: str) -> Manifest | None:
        return await asyncio.to_thread(self.latest_sync, session_id)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def prune_names(names: dict[int, str], keep: int = KEEP) -> list[str]:
    """The manifests to delete once the newest is written: all but the ``keep`` newest."""
    numbers = sorted(names)
    return [names[n] for n in numbers[:-keep]] if len(numbers) > keep else []
