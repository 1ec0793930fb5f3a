"""What a workspace store backend (:mod:`.local`, :mod:`.s3`) supplies: a handful of
blocking primitives on blobs and manifests, under the layout below. The base class also
keeps what the algorithms (:mod:`.checkpoint`, :mod:`.restore`) share across calls: the
latest manifest of each session and the blobs in flight (pinned against garbage collection).

Layout, the same in a folder and under an S3 prefix::

    blobs/<hh>/<sha256>                         file contents, stored once by hash
    sessions/<session_id>/<number:012d>.json    one checkpoint (.json.gz when compressed)

Blobs are written first and the manifest last, each atomically (temp + fsync + rename; an S3
PUT), so the highest-numbered manifest is always complete and every blob it names is there.
"""

from __future__ import annotations

import collections
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SandlotError
from .manifest import Manifest, check_session_id

KEEP = 3  # manifests kept per session
MANIFEST_RE = re.compile(r"^(\d{12})\.json(\.gz)?$")


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


class StoreBase(ABC):
    """A backend's primitives, and the state the algorithms keep in the store object."""

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
        latest = self.latest_of(session_id, self.manifest_names(session_id))
        if latest is None:
            return None
        if latest.manifest is None:  # one this process wrote: built from its own entries
            latest.manifest = Manifest.model_validate(latest.raw)
            latest.raw = None
        return latest.manifest

    def latest_of(self, session_id: str, names: dict[int, str]) -> _Latest | None:
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

    def remember(self, session_id: str, number: int, raw: dict, hashes: set[str]) -> None:
        self._cache[session_id] = _Latest(number, hashes, raw=raw)

    def pin(self, digest: str) -> None:
        """Keep ``digest`` from garbage collection while a checkpoint puts it."""
        with self._mutex:
            self._pinned[digest] += 1

    def unpin(self, digests: Iterable[str]) -> None:
        with self._mutex:
            for digest in digests:
                self._pinned[digest] -= 1
                if self._pinned[digest] <= 0:
                    del self._pinned[digest]

    def pinned(self) -> set[str]:
        with self._mutex:
            return set(self._pinned)


def prune_names(names: dict[int, str], keep: int = KEEP) -> list[str]:
    """The manifests to delete once the newest is written: all but the ``keep`` newest."""
    numbers = sorted(names)
    return [names[n] for n in numbers[:-keep]] if len(numbers) > keep else []
