"""Host binds (``SandboxSpec.binds``): resolved once, opened without following symlinks.

A bind's host path is resolved (``realpath``) when the sandbox is made, on the machine that
runs it; the resolved path is what a server checks against its allowed roots and what is
mounted. Between the check and the mount a symlink could be swapped in (by a sandbox that
has a read-write bind of a parent folder, say): bwrap is therefore handed a descriptor opened
component by component with ``O_NOFOLLOW``, so what is mounted is what was checked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from ..errors import InvalidArgumentError
from ..models import Bind


def resolve(binds: list[Bind], roots: Iterable[str] | None = None) -> list[Bind]:
    """Each bind with its host path resolved: it must exist and be a folder or a regular
    file, and not be / itself. With ``roots`` (a server's), the resolved path must also be
    one of them or beneath one, checked first: a tenant learns nothing of the paths outside
    (not even whether they exist, through a symlink it planted beneath a root)."""
    allowed = None if roots is None else [os.path.realpath(r) for r in roots]
    resolved = []
    for bind in binds:
        real = os.path.realpath(bind.host)
        if allowed is not None and not any(inside(real, root) for root in allowed):
            where = ", ".join(allowed) if allowed else "none: binds are disabled"
            raise InvalidArgumentError(
                f"bind host {bind.host} is outside the roots this server allows binds from "
                f"({where}; the operator sets them with --allow-bind-root)",
                path=bind.host,
            )
        try:
            real = os.path.realpath(bind.host, strict=True)
            mode = os.stat(real).st_mode
        except OSError as exc:
            raise InvalidArgumentError(
                f"bind host {bind.host}: {exc.strerror or exc}", path=bind.host
            ) from None
        if real == "/":
            raise InvalidArgumentError(f"bind host {bind.host} is the root folder", path=bind.host)
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise InvalidArgumentError(
                f"bind host {bind.host} is neither a folder nor a regular file", path=bind.host
            )
        if allowed is not None and not any(inside(real, root) for root in allowed):
            raise InvalidArgumentError(  # changed between the two resolutions
                f"bind host {bind.host} is outside the roots this server allows binds from",
                path=bind.host,
            )
        resolved.append(bind.model_copy(update={"host": real}))
    return resolved


def inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def open_nofollow(path: str) -> int:
    """An ``O_PATH`` descriptor of ``path`` (absolute, resolved), reached without following
    any symlink: a component that became one since it was resolved fails the open."""
    parts = path.split("/")[1:]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else os.O_DIRECTORY)
            child = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = child
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise InvalidArgumentError(
            f"bind host {path} changed since it was resolved: {exc.strerror or exc}", path=path
        ) from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        os.close(fd)
        raise InvalidArgumentError(f"bind host {path} changed since it was resolved", path=path)
    return fd


def open_all(binds: list[Bind]) -> list[int]:
    """Descriptors of the binds' host paths, in order (none left open if one fails)."""
    fds: list[int] = []
    try:
        for bind in binds:
            fds.append(open_nofollow(bind.host))
    except BaseException:
        close_all(fds)
        raise
    return fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
