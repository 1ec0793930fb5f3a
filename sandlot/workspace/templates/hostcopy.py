"""A host folder (a ``rootfs:`` base) copied into a layer folder without following a symlink
anywhere below it: folders are opened with ``O_NOFOLLOW`` relative to their parent, files
are opened with ``O_NOFOLLOW`` and checked to be regular files after opening, so a tree
changed while it is copied cannot point the copy at anything outside it. Symlinks are copied
as symlinks; device nodes, fifos and sockets are dropped; the rest goes through
:class:`~.tree.TreeWriter`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .limits import BaseLimits
from .tree import Refused, TreeWriter, opened_dir

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def copy(source: Path, dest: Path, limits: BaseLimits) -> TreeWriter:
    """Copy the tree at ``source`` (the folder itself may be reached through a symlink: the
    caller named it) into the empty folder ``dest``."""
    try:
        root_fd = os.open(source, _DIR_FLAGS)
    except OSError as exc:
        raise Refused(f"cannot open the folder {str(source)!r}: {exc.strerror}") from None
    try:
        with TreeWriter(dest, limits) as writer:
            top = os.fstat(root_fd)
            writer.directory((), top.st_mode, top.st_uid, top.st_gid, top.st_mtime)
            pending: list[tuple[str, ...]] = [()]
            while pending:
                parts = pending.pop()
                with opened_dir(root_fd, parts) as folder:
                    pending.extend(_copy_entries(folder, parts, writer))
    finally:
        os.close(root_fd)
    return writer


def _copy_entries(folder: int, parts: tuple[str, ...], writer: TreeWriter) -> list[tuple[str, ...]]:
    """Copy one folder's entries; return its subfolders, to be walked next."""
    subfolders = []
    for name in sorted(os.listdir(folder)):
        here = (*parts, name)
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            writer.directory(here, st.st_mode, st.st_uid, st.st_gid, st.st_mtime)
            subfolders.append(here)
        elif stat.S_ISLNK(st.st_mode):
            writer.symlink(here, os.readlink(name, dir_fd=folder), st.st_uid, st.st_gid)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
            with open(fd, "rb", closefd=True) as data:
                now = os.fstat(fd)
                if not stat.S_ISREG(now.st_mode):
                    raise Refused(f"{'/'.join(here)!r} changed while it was copied")
                writer.file(
                    here, data, now.st_size, now.st_mode, now.st_uid, now.st_gid, now.st_mtime
                )
        else:
            writer.drop("/".join(here))
    return subfolders
