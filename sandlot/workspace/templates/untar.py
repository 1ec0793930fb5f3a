"""A tar (a ``tar:`` base, a ``docker export``) unpacked into a layer folder safely: every
member goes through :class:`~.tree.TreeWriter`, which refuses absolute and ``..`` names,
writes through symlinks and hardlinks out of the tree, drops device nodes and clears setuid
bits. The tar is read as a stream, so a pipe or an HTTP body works."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import BinaryIO

from .limits import BaseLimits
from .tree import Refused, TreeWriter, split


def extract(data: BinaryIO, dest: Path, limits: BaseLimits) -> TreeWriter:
    """Unpack the tar ``data`` (any compression tarfile knows) into the empty folder ``dest``;
    the writer returned holds the counts and what was dropped."""
    try:
        archive = tarfile.open(fileobj=data, mode="r|*")  # noqa: SIM115 - closed below
    except tarfile.TarError as exc:
        raise Refused(f"not a tar archive: {exc}") from None
    with archive, TreeWriter(dest, limits) as writer:
        try:
            for member in archive:
                _one(archive, member, writer)
        except tarfile.TarError as exc:
            raise Refused(f"a broken tar archive: {exc}") from None
    return writer


def _one(archive: tarfile.TarFile, member: tarfile.TarInfo, writer: TreeWriter) -> None:
    parts = split(member.name)
    owner = (member.uid, member.gid)
    if member.isdir():
        writer.directory(parts, member.mode, *owner, member.mtime)
    elif member.isreg():
        data = archive.extractfile(member)
        assert data is not None  # a regular member always has a body
        writer.file(parts, data, member.size, member.mode, *owner, member.mtime)
    elif member.issym():
        writer.symlink(parts, member.linkname, *owner)
    elif member.islnk():
        writer.hardlink(parts, member.linkname)
    else:  # character and block devices, fifos: a sandbox has its own /dev
        writer.drop(member.name)
