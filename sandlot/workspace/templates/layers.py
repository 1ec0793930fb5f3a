"""Layer folders on the host: copying, measuring and hashing them, overlayfs whiteouts, and
the merged view of a stack of layers as one tar stream.

A step layer is an overlayfs upper folder, so it speaks overlayfs: a deleted path is a
*whiteout* (a 0/0 character device, or an empty file carrying an ``overlay.whiteout`` xattr),
and a folder that hides everything below it is *opaque* (``overlay.opaque`` = ``y``), in the
``trusted.`` namespace (overlay mounted by root) or the ``user.`` one (mounted in a user
namespace with ``userxattr``). Nothing here follows a symlink: every walk uses ``lstat``,
every file is opened ``O_NOFOLLOW``, and device nodes, FIFOs and sockets are skipped
(a whiteout is read as a deletion, never copied as a device).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ...errors import SandlotError
from .model import PYTHONS

O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20
MAX_DEPTH = 256
# Set-id bits never land in a layer: a layer is a host folder, and a set-uid file there
# would be one more privileged program on the host (inside, no_new_privs makes them inert).
STRIP_BITS = stat.S_ISUID | stat.S_ISGID
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
WHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
WH_PREFIX = ".wh."  # the OCI/AUFS spelling of a whiteout inside a tar
WH_OPAQUE = ".wh..wh..opq"


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def is_whiteout(path: str, st: os.stat_result) -> bool:
    """An overlayfs deletion marker: a 0/0 char device, or an xattr whiteout."""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return any(_xattr(path, name) is not None for name in WHITEOUT_XATTRS)
    return False


def is_opaque(path: str) -> bool:
    return any(_xattr(path, name) == b"y" for name in OPAQUE_XATTRS)


def mark_opaque(path: str) -> None:
    """Mark a folder opaque for both kinds of overlay mount (trusted needs root: best effort)."""
    done = False
    for name in OPAQUE_XATTRS:
        try:
            os.setxattr(path, name, b"y", follow_symlinks=False)
            done = True
        except OSError:
            pass
    if not done:
        raise OSError(f"cannot mark {path} opaque (no xattr support)")


def make_whiteout(path: str) -> None:
    """An overlayfs whiteout (mknod 0/0: root, or uid 0 in a user namespace)."""
    os.mknod(path, stat.S_IFCHR | 0o000, 0)


@dataclass
class Entry:
    """One entry of a walk: its path relative to the walked root, and its lstat."""

    rel: str
    path: str
    st: os.stat_result


def walk(root: Path) -> Iterator[Entry]:
    """Every entry below ``root`` (folders before their contents, sorted), never following
    a symlink. Raises OSError past MAX_DEPTH."""

    def visit(folder: str, rel: str, depth: int) -> Iterator[Entry]:
        if depth > MAX_DEPTH:
            raise OSError(f"{rel}: deeper than {MAX_DEPTH} folders")
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it)
        for name in names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            child = f"{rel}/{name}" if rel else name
            yield Entry(child, path, st)
            if stat.S_ISDIR(st.st_mode):
                yield from visit(path, child, depth + 1)

    yield from visit(str(root), "", 0)


def measure(root: Path) -> tuple[int, int]:
    """(bytes, entries) of a layer: regular files' sizes and every entry counted."""
    size = files = 0
    for entry in walk(root):
        files += 1
        if stat.S_ISREG(entry.st.st_mode):
            size += entry.st.st_size
    return size, files


def _hash_file(path: str, h: hashlib._Hash) -> None:
    fd = os.open(path, O_FILE)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} changed type while read")
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)


def tree_digest(root: Path) -> str:
    """sha256 of a layer's content: every path, its type, permission bits and content (or
    link target, or whiteout/opaque marks). Owners and times are left out on purpose: an
    imported layer is owned by its importer, and times say nothing about content."""
    h = hashlib.sha256()
    if is_opaque(str(root)):
        h.update(b"O\0\0")
    for entry in walk(root):
        mode = entry.st.st_mode
        h.update(entry.rel.encode("utf-8", "surrogateescape") + b"\0")
        bits = f"{stat.S_IMODE(mode) & ~STRIP_BITS:o}".encode()
        if is_whiteout(entry.path, entry.st):
            h.update(b"W\0")
        elif stat.S_ISDIR(mode):
            h.update(b"D" + bits + (b"O" if is_opaque(entry.path) else b"") + b"\0")
        elif stat.S_ISLNK(mode):
            target = os.readlink(entry.path).encode("utf-8", "surrogateescape")
            h.update(b"L" + target + b"\0")
        elif stat.S_ISREG(mode):
            h.update(b"F" + bits + b"\0")
            _hash_file(entry.path, h)
            h.update(b"\0")
        # devices, FIFOs and sockets are not part of a layer
    return h.hexdigest()


def strip_setid(root: Path) -> None:
    """Clear set-uid/set-gid bits below ``root`` (see STRIP_BITS)."""
    for entry in walk(root):
        mode = entry.st.st_mode
        if (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and mode & STRIP_BITS:
            os.chmod(entry.path, stat.S_IMODE(mode) & ~STRIP_BITS, follow_symlinks=False)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder's files, folders and symlinks (never following one) into ``dst``
    (created); modes kept without set-id bits; devices, FIFOs and sockets skipped."""
    dst.mkdir(mode=0o755, parents=False, exist_ok=True)
    st = os.lstat(src)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{src} is not a folder")
    dirs: list[tuple[str, int]] = [(str(dst), stat.S_IMODE(st.st_mode))]
    for entry in walk(src):
        target = os.path.join(dst, entry.rel)
        mode = entry.st.st_mode
        bits = stat.S_IMODE(mode) & ~STRIP_BITS
        if stat.S_ISDIR(mode):
            os.mkdir(target, 0o700)
            dirs.append((target, bits))
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(entry.path), target)
        elif stat.S_ISREG(mode):
            copy_file(entry.path, target, bits)
    for path, bits in reversed(dirs):  # after their contents: a read-only folder is fillable
        os.chmod(path, bits)


def copy_file(src: str, dst: str, bits: int, max_bytes: int | None = None) -> int:
    """Copy one regular file (``src`` opened O_NOFOLLOW), at most ``max_bytes``; returns
    its size. ``dst`` must not exist."""
    fd = os.open(src, O_FILE)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{src} is not a regular file")
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        total = 0
        try:
            while chunk := os.read(fd, CHUNK):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise OSError(f"{src} is larger than {max_bytes} bytes")
                os.write(out, chunk)
            os.fchmod(out, bits & ~STRIP_BITS)
        finally:
            os.close(out)
        return total
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# the merged view


@dataclass
class _Node:
    rel: str
    path: str
    st: os.stat_result
    below: list[str]  # the same folder in lower layers that show through (dirs only)


def _children(folders: list[str]) -> Iterator[_Node]:
    """The merged children of one folder seen through ``folders`` (topmost first; each
    already cut at the first opaque one)."""
    decided: dict[str, _Node | None] = {}
    for index, folder in enumerate(folders):
        try:
            with os.scandir(folder) as it:
                names = [e.name for e in it]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if name not in decided:
                if is_whiteout(path, st):
                    decided[name] = None
                else:
                    node = _Node(name, path, st, [path])
                    if stat.S_ISDIR(st.st_mode) and not is_opaque(path):
                        node.below = [path, *_lower_dirs(folders[index + 1 :], name)]
                    decided[name] = node
    for name in sorted(decided):
        kept = decided[name]
        if kept is not None:
            yield kept


def _lower_dirs(folders: list[str], name: str) -> list[str]:
    """The folder ``name`` in the layers below, down to a non-folder, whiteout or opaque one."""
    found = []
    for folder in folders:
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISDIR(st.st_mode):
            break  # a file or a whiteout hides whatever is below
        found.append(path)
        if is_opaque(path):
            break
    return found


def merged(lowers: list[Path]) -> Iterator[Entry]:
    """The merged view of layer roots (TOPMOST FIRST), as overlayfs would show it: parents
    before children, sorted; whiteouts applied; devices, FIFOs and sockets left out."""

    def visit(folders: list[str], rel: str, depth: int) -> Iterator[Entry]:
        if depth > MAX_DEPTH:
            raise OSError(f"{rel}: deeper than {MAX_DEPTH} folders")
        for node in _children(folders):
            mode = node.st.st_mode
            child = f"{rel}/{node.rel}" if rel else node.rel
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                continue
            yield Entry(child, node.path, node.st)
            if stat.S_ISDIR(mode):
                yield from visit(node.below, child, depth + 1)

    tops = [str(p) for p in lowers]
    cut = []
    for folder in tops:
        cut.append(folder)
        if is_opaque(folder):
            break
    yield from visit(cut, "", 0)


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode) & ~STRIP_BITS
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def add_entry(tar: tarfile.TarFile, name: str, entry: Entry) -> None:
    """Add one walked entry (folder, file or symlink) to a tar under ``name``; a file is read
    through an O_NOFOLLOW descriptor and checked to be the file that was walked."""
    mode = entry.st.st_mode
    info = _info(name, entry.st)
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(entry.path)
        tar.addfile(info)
    elif stat.S_ISREG(mode):
        fd = os.open(entry.path, O_FILE)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_ino != entry.st.st_ino:
                raise OSError(f"{entry.rel} changed while read")
            info.type = tarfile.REGTYPE
            info.size = st.st_size
            tar.addfile(info, _Exact(fh, st.st_size))


class _Exact:
    """A reader that yields exactly ``size`` bytes (zeros if the file shrank), so a file
    that changes under us cannot desynchronise the tar stream."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n)[:n]
        data += b"\0" * (n - len(data))
        self.left -= n
        return data


def write_merged_tar(lowers: list[Path], fileobj: BinaryIO) -> None:
    """The merged layers (TOPMOST FIRST) as one tar stream (``docker import`` takes it)."""
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in merged(lowers):
            add_entry(tar, entry.rel, entry)


def merged_lookup(lowers: list[Path], rel: str) -> tuple[str, os.stat_result] | None:
    """The host path and lstat of ``rel`` in the merged view (None if absent or deleted),
    each component looked up without following a symlink (a symlinked folder on the way
    reads as absent)."""
    parts = [p for p in rel.split("/") if p]
    folders = [str(p) for p in lowers]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        found: tuple[str, os.stat_result] | None = None
        below: list[str] = []
        for folder in folders:
            path = os.path.join(folder, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if is_whiteout(path, st):
                break
            if found is None:
                found = (path, st)
            if not stat.S_ISDIR(st.st_mode) or not stat.S_ISDIR(found[1].st_mode):
                break
            below.append(path)
            if is_opaque(path):
                break
        if found is None or (not last and not stat.S_ISDIR(found[1].st_mode)):
            return None
        if last:
            return found
        folders = below
    return None


def merged_resolve(lowers: list[Path], rel: str, hops: int = 8) -> os.stat_result | None:
    """lstat of what ``rel`` ends at in the merged view, symlinks followed within the view
    (never on the host), at most ``hops`` of them."""
    current = "/" + rel.lstrip("/")
    for _ in range(hops + 1):
        hit = merged_lookup(lowers, current)
        if hit is None:
            return None
        path, st = hit
        if not stat.S_ISLNK(st.st_mode):
            return st
        target = os.readlink(path)
        base = "/" if target.startswith("/") else os.path.dirname(current)
        current = os.path.normpath(os.path.join(base, target))
    return None


def find_python(lowers: list[Path], host_base: bool) -> str:
    """The agent's interpreter in a merged view (topmost first); on a host base the host's
    own folders are the bottom layer. Raises SandlotError if there is none."""
    views = [*lowers, Path("/")] if host_base else lowers
    for candidate in PYTHONS:
        st = merged_resolve(views, candidate)
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise SandlotError(
        "the template has no python3 (looked for " + ", ".join(PYTHONS) + "): the sandlot "
        "agent needs one; add it in a step (e.g. --apt python3) or use a base that has it"
    )
