"""Reading a workspace folder safely against the sandbox that owns it: fd-relative opening,
the scan of every entry, and the index of file hashes that spares a re-read.

The sandbox may run while we read its folder and may swap any file for a symlink at any
moment, so nothing here resolves a path: every directory is opened relative to its parent's
fd with ``O_DIRECTORY|O_NOFOLLOW``, every file with ``O_NOFOLLOW|O_NONBLOCK`` and checked
with ``fstat`` on the fd actually opened (a regular file, or it is skipped).

The index (a JSON file outside the workspace) caches ``relpath -> (size, mtime_ns, ctime_ns,
ino, mode, hash)``. A file whose stat matches is not read again; ctime and the inode are set
by the kernel, so a sandbox that forges mtimes cannot make a changed file look unchanged.
Timestamps are coarse (a clock tick), so an entry is trusted only if its ctime is older than
the scan that recorded it by a margin (git's "racily clean" rule).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


def _tick_ns() -> int:
    """How coarse a file's ctime can be: the kernel stamps it from its coarse clock (one
    timer tick, 1-10 ms; kernels with fine-grained timestamps are finer still)."""
    try:
        import ctypes

        class _Timespec(ctypes.Structure):
            _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

        res = _Timespec()
        if ctypes.CDLL(None, use_errno=True).clock_getres(6, ctypes.byref(res)) == 0:
            return int(res.sec * 1_000_000_000 + res.nsec)  # 6: CLOCK_MONOTONIC_COARSE
    except (OSError, AttributeError):
        pass
    return 10_000_000


# An index entry is trusted if its ctime is this much older than its scan: one tick of the
# coarse clock, and a millisecond to spare. (File systems with coarser timestamps, such as
# FAT's two seconds, are not suited to a workspace.)
MARGIN_NS = min(_tick_ns(), 20_000_000) + 1_000_000
MAX_DEPTH = 512
INDEX_FORMAT = 1

StatKey = tuple[int, int, int, int, int]  # size, mtime_ns, ctime_ns, ino, mode


def stat_key(st: os.stat_result) -> StatKey:
    """What the index compares: ctime and inode are the kernel's, not the sandbox's."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


# --------------------------------------------------------------------------------------------
# the index


@dataclass
class Index:
    dev: int
    trusted_before_ns: int
    entries: dict[str, tuple[StatKey, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, dev: int) -> Index | None:
        """The index if it is for this filesystem; any problem means no index (a cache)."""
        if path is None:
            return None
        try:
            raw = json.loads(Path(path).read_bytes())
            if raw.get("format") != INDEX_FORMAT or raw.get("dev") != dev:
                return None
            entries = {
                rel: ((v[0], v[1], v[2], v[3], v[4]), v[5]) for rel, v in raw["entries"].items()
            }
            return cls(dev, int(raw["trusted_before_ns"]), entries)
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None

    def hash_of(self, rel: str, st: os.stat_result) -> str | None:
        got = self.entries.get(rel)
        if got is None:
            return None
        key, digest = got
        if key == stat_key(st) and key[2] < self.trusted_before_ns:
            return digest
        return None

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        path = Path(path)
        data = {
            "format": INDEX_FORMAT,
            "dev": self.dev,
            "trusted_before_ns": self.trusted_before_ns,
            "entries": {rel: [*key, digest] for rel, (key, digest) in self.entries.items()},
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache: the next checkpoint reads more, that's all


# --------------------------------------------------------------------------------------------
# walking with directory fds


def open_dir(root_fd: int, rel: str) -> int:
    """A directory below ``root_fd``, each component opened with O_NOFOLLOW."""
    fd = os.dup(root_fd)
    if not rel:
        return fd
    try:
        for part in rel.split("/"):
            sub = os.open(part, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(root_fd: int, rel: str) -> tuple[int, os.stat_result]:
    """A regular file below ``root_fd``, opened without following any symlink; the stat is
    of the fd opened. OSError if it is gone or is no longer a regular file."""
    parent, _, name = rel.rpartition("/")
    dfd = open_dir(root_fd, parent)
    try:
        fd = os.open(name, O_FILE, dir_fd=dfd)
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", rel)
    return fd, st


def open_root(folder: Path) -> int:
    try:
        return os.open(folder, O_DIR)
    except FileNotFoundError:
        raise InvalidArgumentError(f"workspace folder {folder} does not exist") from None
    except OSError as exc:
        raise InvalidArgumentError(f"workspace folder {folder} cannot be opened: {exc}") from None


@dataclass
class Scan:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, os.stat_result] = field(default_factory=dict)  # regular files
    known: dict[str, str] = field(default_factory=dict)  # file -> hash, from the index
    skipped: int = 0


def scan(root_fd: int, index: Index | None) -> Scan:
    """Every entry below ``root_fd`` (not following symlinks); file hashes from the index
    where it can be trusted. Depth-first with one open fd per level."""
    out = Scan()
    stack: list[tuple[int, str, Iterator[str]]] = []
    root = os.dup(root_fd)
    try:
        stack.append((root, "", iter(_list_dir(root, "", index, out))))
        while stack:
            fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            entered = _enter(fd, prefix + name, name, len(stack) > MAX_DEPTH, index, out)
            if entered is not None:
                stack.append(entered)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    # Entries below a dropped directory (none, since it was never listed) and children of a
    # directory that was dropped after listing cannot occur: listing happens once entered.
    return out


def _enter(
    fd: int, rel: str, name: str, too_deep: bool, index: Index | None, out: Scan
) -> tuple[int, str, Iterator[str]] | None:
    """The subdirectory ``name`` of ``fd`` opened and listed, as a stack level; None if it
    could not be entered (too deep, swapped or gone): then it is left out, with its files."""
    if not too_deep:
        try:
            sub = os.open(name, O_DIR, dir_fd=fd)
        except OSError:
            pass
        else:
            try:
                return sub, rel + "/", iter(_list_dir(sub, rel + "/", index, out))
            except OSError:
                os.close(sub)
    out.entries.pop(rel, None)
    out.skipped += 1
    return None


def _list_dir(fd: int, prefix: str, index: Index | None, out: Scan) -> list[str]:
    """Record the entries of the directory ``fd`` in ``out``; returns its subdirectories."""
    subdirs = []
    with os.scandir(fd) as it:
        for e in it:
            name = e.name
            try:
                name.encode("utf-8")
                st = e.stat(follow_symlinks=False)  # OSError: vanished meanwhile
            except (UnicodeEncodeError, OSError):
                out.skipped += 1
                continue
            entry = _describe(fd, prefix + name, name, st, index, out)
            if entry is None:
                out.skipped += 1  # fifo, socket, device, or a symlink we cannot read
                continue
            out.entries[prefix + name] = entry
            if entry["type"] == "dir":
                subdirs.append(name)
    return subdirs


def _describe(
    fd: int, rel: str, name: str, st: os.stat_result, index: Index | None, out: Scan
) -> dict[str, Any] | None:
    """The manifest entry for one directory entry (a regular file's stat and known hash go
    to ``out``); None for what a workspace does not keep."""
    mode = st.st_mode
    entry: dict[str, Any] = {"mode": stat.S_IMODE(mode), "mtime_ns": st.st_mtime_ns}
    if stat.S_ISREG(mode):
        out.stats[rel] = st
        digest = index.hash_of(rel, st) if index is not None else None
        if digest is not None:
            out.known[rel] = digest
        return {"type": "file", **entry, "size": st.st_size}
    if stat.S_ISDIR(mode):
        return {"type": "dir", **entry}
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=fd)
            target.encode("utf-8")
        except (OSError, UnicodeEncodeError):
            return None
        return {"type": "symlink", **entry, "target": target}
    return None
