"""Small file helpers of the template store: atomic writes, bounded reads, removing a tree
that may hold read-only folders."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import InvalidArgumentError

MAX_JSON = 4 << 20  # a manifest or name file larger than this is not ours


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_small(path: Path) -> bytes:
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as fh:
        data = fh.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise InvalidArgumentError(f"{path.name} is too large")
    return data


def remove_tree(path: Path) -> None:
    """Remove a folder whose contents may be read-only (a layer copied from a root)."""

    def retry(func: Any, target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            func(target)

    shutil.rmtree(path, onerror=retry)
