"""Writing an untrusted file tree (an image's, a tar's, a host folder's) into a fresh layer
folder, and checking one that a tool wrote.

Everything is done through directory file descriptors opened with ``O_NOFOLLOW``, so no
path is ever resolved through a symlink: a symlink is written as it is (its target means
something only inside the sandbox, whose root this tree becomes) and a member that would be
written *through* one is refused. Device nodes, fifos and sockets are dropped (a sandbox gets
its own ``/dev``), setuid and setgid bits are cleared, hardlinks must point to a file already
in the tree, and the total size and entry count are capped. Numeric owners are kept when
sandlot runs as root (an image's files keep their uids); otherwise everything is ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .limits import BaseLimits

CHUNK = 1 << 20
DROPPED_BITS = stat.S_ISUID | stat.S_ISGID
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """The tree is unsafe or too big; the message says which entry and why."""


def split(name: str) -> tuple[str, ...]:
    """A member name as path components inside the tree: relative, no ``..``."""
    if name.startswith("/"):
        raise Refused(f"absolute path {name!r}")
    if "\0" in name:
        raise Refused(f"NUL in path {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Refused(f"path {name!r} climbs out with '..'")
    return parts


@contextlib.contextmanager
def opened_dir(root_fd: int, parts: tuple[str, ...], create: bool = False) -> Iterator[int]:
    """A descriptor of the directory ``parts`` under ``root_fd``, never through a symlink
    (``create``: make missing directories on the way, mode 0755)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise Refused(
                    f"{'/'.join(parts)!r} goes through {part!r}, which is not a directory "
                    "(a symlink or a file)"
                ) from None
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


class TreeWriter:
    """Writes entries into ``dest`` (an empty folder this process made) safely and bounded."""

    def __init__(self, dest: Path, limits: BaseLimits) -> None:
        self.limits = limits
        self.root_fd = os.open(dest, _DIR_FLAGS)
        self.as_root = os.geteuid() == 0
        self.bytes = 0
        self.files = 0
        self.dropped: list[str] = []  # device nodes and the like, not written
        self._dir_modes: list[tuple[tuple[str, ...], int, int, int, float]] = []

    def close(self) -> None:
        """Apply directory modes (last: a read-only directory still gets its contents)."""
        for parts, mode, uid, gid, mtime in sorted(self._dir_modes, key=lambda d: -len(d[0])):
            with opened_dir(self.root_fd, parts) as fd:
                self._own(fd, uid, gid)
                os.chmod(fd, self._mode(mode, directory=True))
                with contextlib.suppress(OSError):
                    os.utime(fd, (mtime, mtime))
        self._dir_modes.clear()
        os.close(self.root_fd)

    def __enter__(self) -> TreeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            os.close(self.root_fd)

    # -- entries ------------------------------------------------------------------------------

    def directory(
        self, parts: tuple[str, ...], mode: int, uid: int, gid: int, mtime: float
    ) -> None:
        self._count(parts, 0)
        if parts:
            with opened_dir(self.root_fd, parts[:-1], create=True) as parent:
                existing = _lstat(parts[-1], parent)
                if existing is not None and not stat.S_ISDIR(existing.st_mode):
                    os.unlink(parts[-1], dir_fd=parent)
                    existing = None
                if existing is None:
                    os.mkdir(parts[-1], 0o700, dir_fd=parent)
        self._dir_modes.append((parts, mode, uid, gid, mtime))

    def file(
        self,
        parts: tuple[str, ...],
        data: IO[bytes],
        size: int,
        mode: int,
        uid: int,
        gid: int,
        mtime: float,
    ) -> None:
        self._need_name(parts)
        self._count(parts, size)
        with opened_dir(self.root_fd, parts[:-1], create=True) as parent:
            self._clear(parts, parent)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, 0o600, dir_fd=parent)
            try:
                left = size
                while left > 0:
                    chunk = data.read(min(CHUNK, left))
                    if not chunk:
                        raise Refused(f"{'/'.join(parts)!r} is shorter than its header says")
                    os.write(fd, chunk)
                    left -= len(chunk)
                if data.read(1):
                    raise Refused(f"{'/'.join(parts)!r} grew while it was copied")
                self._own(fd, uid, gid)
                os.chmod(fd, self._mode(mode))
                with contextlib.suppress(OSError):
                    os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)

    def symlink(self, parts: tuple[str, ...], target: str, uid: int, gid: int) -> None:
        """A symlink as it is: sandlot never follows it (see :func:`opened_dir`)."""
        self._need_name(parts)
        self._count(parts, 0)
        if "\0" in target or len(target) > 4095:
            raise Refused(f"symlink {'/'.join(parts)!r} has a bad target")
        with opened_dir(self.root_fd, parts[:-1], create=True) as parent:
            self._clear(parts, parent)
            os.symlink(target, parts[-1], dir_fd=parent)
            if self.as_root:
                os.chown(parts[-1], uid, gid, dir_fd=parent, follow_symlinks=False)

    def hardlink(self, parts: tuple[str, ...], target: str) -> None:
        """A second name for a file already in the tree (reached without symlinks)."""
        self._need_name(parts)
        self._count(parts, 0)
        target_parts = split(target)
        if not target_parts:
            raise Refused(f"hardlink {'/'.join(parts)!r} to the root")
        try:
            with (
                opened_dir(self.root_fd, target_parts[:-1]) as src,
                opened_dir(self.root_fd, parts[:-1], create=True) as parent,
            ):
                found = _lstat(target_parts[-1], src)
                if found is None or not (
                    stat.S_ISREG(found.st_mode) or stat.S_ISLNK(found.st_mode)
                ):
                    raise Refused(
                        f"hardlink {'/'.join(parts)!r} to {target!r}, which is not a file "
                        "written before it in the tree"
                    )
                self._clear(parts, parent)
                os.link(
                    target_parts[-1],
                    parts[-1],
                    src_dir_fd=src,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
        except FileNotFoundError:
            raise Refused(f"hardlink {'/'.join(parts)!r} to {target!r}, not in the tree") from None

    def drop(self, name: str) -> None:
        self.dropped.append(name)

    # -- helpers ------------------------------------------------------------------------------

    def _mode(self, mode: int, directory: bool = False) -> int:
        mode = stat.S_IMODE(mode) & ~DROPPED_BITS
        if not self.as_root:  # files we cannot read back would break merges and exports
            mode |= 0o700 if directory else 0o600
        return mode

    def _own(self, fd: int, uid: int, gid: int) -> None:
        if self.as_root:
            os.fchown(fd, uid, gid)

    def _count(self, parts: tuple[str, ...], size: int) -> None:
        self.files += 1
        self.bytes += max(size, 0)
        if self.files > self.limits.max_files:
            raise Refused(f"more than {self.limits.max_files} entries")
        if self.bytes > self.limits.max_bytes:
            raise Refused(f"larger than {self.limits.max_bytes} bytes (at {'/'.join(parts)!r})")

    @staticmethod
    def _need_name(parts: tuple[str, ...]) -> None:
        if not parts:
            raise Refused("a non-directory entry for the root itself")

    @staticmethod
    def _clear(parts: tuple[str, ...], parent: int) -> None:
        """A later entry of the same name replaces an earlier one, except a directory."""
        existing = _lstat(parts[-1], parent)
        if existing is None:
            return
        if stat.S_ISDIR(existing.st_mode):
            raise Refused(f"{'/'.join(parts)!r} replaces a directory")
        os.unlink(parts[-1], dir_fd=parent)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def check_tree(root: Path, limits: BaseLimits) -> tuple[int, int, list[str]]:
    """Make a tree another tool wrote (umoci) as safe as :class:`TreeWriter` would have:
    drop device nodes, fifos and sockets, clear setuid/setgid, and refuse a file hardlinked
    to anything outside the tree or a tree over the limits. Returns (bytes, entries, dropped).
    Never follows a symlink."""
    total = files = 0
    dropped: list[str] = []
    links: dict[int, tuple[int, int, str]] = {}  # inode -> (nlink, seen, a name)
    device = os.lstat(root).st_dev
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            files += 1
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                if st.st_mode & DROPPED_BITS:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~DROPPED_BITS)
            elif not stat.S_ISLNK(st.st_mode):
                os.unlink(path)
                dropped.append(rel)
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                if st.st_dev != device:
                    raise Refused(f"{rel!r} is on another filesystem")
                if st.st_nlink > 1:
                    nlink, seen, first = links.get(st.st_ino, (st.st_nlink, 0, rel))
                    links[st.st_ino] = (nlink, seen + 1, first)
            if files > limits.max_files:
                raise Refused(f"more than {limits.max_files} entries")
            if total > limits.max_bytes:
                raise Refused(f"larger than {limits.max_bytes} bytes (at {rel!r})")
    for nlink, seen, name in links.values():
        if seen < nlink:
            raise Refused(f"{name!r} is hardlinked to a file outside the image")
    return total, files, dropped
