"""The manifest of one checkpoint, the checks on anything read back from a store, and the
results the store's methods return.

A manifest is JSON (optionally gzip-compressed): ``relpath -> entry``, where a path is
relative to the workspace folder, ``/``-separated, and never absolute, empty-parted, ``.``,
``..`` or NUL-bearing. A store may have been tampered with (an S3 bucket is shared
infrastructure), so every manifest is validated here before restore trusts a single path.
"""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import InvalidArgumentError, ProtocolError

FORMAT = 1
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_PATH = 4096
MAX_NAME = 255


def check_session_id(session_id: str) -> str:
    """A session id is one path segment in the store's layout: ``ses-`` + 12 hex in practice;
    letters, digits, ``-`` and ``_`` (at most 64, not starting with ``-``/``_``) accepted."""
    if not isinstance(session_id, str) or not SESSION_RE.match(session_id):
        raise InvalidArgumentError(
            f"invalid session id {session_id!r:.80}: letters, digits, '-' and '_' only"
        )
    return session_id


def check_relpath(path: str) -> str:
    """Refuse a manifest path that could step outside the workspace folder."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise ValueError(f"bad path {path!r:.100}")
    if "\x00" in path or path.startswith("/"):
        raise ValueError(f"bad path {path!r:.100}: absolute or NUL")
    for part in path.split("/"):
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise ValueError(f"bad path {path!r:.100}: empty, '.' or '..' part")
    return path


class Entry(BaseModel):
    """One file, directory or symlink of the workspace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["file", "dir", "symlink"]
    mode: int = Field(ge=0, le=0o7777)  # permission bits only (S_IMODE)
    mtime_ns: int
    size: int = Field(default=0, ge=0)
    hash: str | None = None  # sha256 hex, files only
    target: str | None = None  # symlinks only

    @field_validator("hash")
    @classmethod
    def _hash(cls, v: str | None) -> str | None:
        if v is not None and not HASH_RE.match(v):
            raise ValueError("hash must be 64 lowercase hex digits")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        if v is not None and ("\x00" in v or not v or len(v) > MAX_PATH):
            raise ValueError("bad symlink target")
        return v

    @model_validator(mode="after")
    def _complete(self) -> Entry:
        if self.type == "file" and self.hash is None:
            raise ValueError("a file entry needs a hash")
        if self.type == "symlink" and self.target is None:
            raise ValueError("a symlink entry needs a target")
        return self


class Manifest(BaseModel):
    """One checkpoint of a session's workspace."""

    model_config = ConfigDict(extra="ignore")

    format: int = FORMAT
    session_id: str
    number: int = Field(ge=1)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    entries: dict[str, Entry] = Field(default_factory=dict)
    skipped: int = 0  # fifos, sockets, devices, unreadable or non-UTF-8 names

    @field_validator("session_id")
    @classmethod
    def _session(cls, v: str) -> str:
        if not SESSION_RE.match(v):
            raise ValueError("bad session id")
        return v

    @field_validator("entries")
    @classmethod
    def _paths(cls, v: dict[str, Entry]) -> dict[str, Entry]:
        for path, entry in v.items():
            check_relpath(path)
            parent = path.rpartition("/")[0]
            if parent and (parent not in v or v[parent].type != "dir"):
                raise ValueError(f"{path!r:.100}: its parent is not a directory of the manifest")
            if entry.type != "file" and entry.hash is not None:
                raise ValueError(f"{path!r:.100}: only files have a hash")
        return v

    @property
    def file_count(self) -> int:
        return sum(1 for e in self.entries.values() if e.type == "file")

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries.values() if e.type == "file")

    def hashes(self) -> set[str]:
        return {e.hash for e in self.entries.values() if e.hash is not None}

    def encode(self, compress: bool) -> bytes:
        data = self.model_dump_json(exclude_none=True).encode()
        return gzip.compress(data, compresslevel=5, mtime=0) if compress else data

    @classmethod
    def decode(cls, data: bytes, session_id: str, number: int) -> Manifest:
        """Parse and validate a stored manifest; anything wrong is a ProtocolError."""
        try:
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            manifest = cls.model_validate(json.loads(data))
        except (OSError, EOFError, ValueError, ValidationError) as exc:
            raise ProtocolError(
                f"workspace manifest {session_id}/{number} is corrupt or was tampered with: "
                f"{str(exc)[:300]}"
            ) from None
        if manifest.format != FORMAT:
            raise ProtocolError(f"workspace manifest format {manifest.format} is not supported")
        if manifest.session_id != session_id or manifest.number != number:
            raise ProtocolError(
                f"workspace manifest {session_id}/{number} names "
                f"{manifest.session_id}/{manifest.number}: refused"
            )
        return manifest


class CheckpointInfo(BaseModel):
    """What a checkpoint did."""

    session_id: str
    number: int
    files: int
    bytes: int
    changed: int  # files whose content was not in the previous checkpoint
    uploaded_blobs: int
    uploaded_bytes: int
    skipped: int = 0
    seconds: float


class RestoreInfo(BaseModel):
    """What a restore did."""

    session_id: str
    number: int
    files: int
    bytes: int
    fetched_blobs: int
    fetched_bytes: int
    seconds: float
    # The folder must stay unchanged until then (``time.time_ns()``) for the index to hold.
    settled_ns: int = Field(0, exclude=True)
