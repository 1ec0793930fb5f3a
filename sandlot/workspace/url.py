"""Workspace store URLs: ``local`` or ``s3://bucket[/prefix]``; the check, and the store a
URL names."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InvalidArgumentError
from .store import WorkspaceStore

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
