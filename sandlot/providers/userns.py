"""A user namespace that maps the sandbox user onto an unprivileged host account.

When sandlot runs as root, bwrap's own ``--unshare-user`` would map the sandbox user onto
root: an escape would land as host root. Instead, root prepares one user namespace per
process in which the sandbox uid/gid are the host's ``nobody``, and every bwrap joins it with
``--userns FD`` (then still unshares its own PID, mount, network, IPC and UTS namespaces).
Switching users at spawn time instead (setpriv, or Popen's ``user=``) costs 2-3 ms per sandbox:
an extra exec, or a fork of this whole process where vfork would do.
"""

from __future__ import annotations

import os
import subprocess
import time

from ..errors import ProviderUnavailableError
from .spawn import HostUser

_namespaces: dict[tuple[int, int, HostUser], int] = {}
READY_TIMEOUT = 5.0


def shared(inner_uid: int, inner_gid: int, host: HostUser) -> int:
    """A descriptor of the namespace (created on first use, kept for the process's life)."""
    key = (inner_uid, inner_gid, host)
    if key not in _namespaces:
        _namespaces[key] = _create(inner_uid, inner_gid, host)
    return _namespaces[key]


def _create(inner_uid: int, inner_gid: int, host: HostUser) -> int:
    # A short-lived holder enters a new user namespace; we write its maps (as root, in the
    # parent namespace), keep a descriptor, and let the holder go: the descriptor alone keeps
    # the namespace alive, and nothing is left running.
    try:
        holder = subprocess.Popen(
            ["unshare", "--user", "--", "sleep", "60"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise ProviderUnavailableError(
            f"cannot prepare the sandbox user namespace: {exc}"
        ) from None
    try:
        own = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + READY_TIMEOUT
        path = f"/proc/{holder.pid}"
        while _namespace_of(path) in (own, None):
            if holder.poll() is not None or time.monotonic() > deadline:
                message = holder.stderr.read().decode(errors="replace") if holder.stderr else ""
                raise ProviderUnavailableError(
                    f"cannot prepare the sandbox user namespace: {message.strip() or 'timeout'}"
                )
            time.sleep(0.0005)
        with open(f"{path}/setgroups", "w") as f:
            f.write("deny")
        with open(f"{path}/uid_map", "w") as f:
            f.write(f"{inner_uid} {host.uid} 1")
        with open(f"{path}/gid_map", "w") as f:
            f.write(f"{inner_gid} {host.gid} 1")
        return os.open(f"{path}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.kill()
        holder.wait()
        if holder.stderr:
            holder.stderr.close()


def _namespace_of(path: str) -> str | None:
    try:
        return os.readlink(f"{path}/ns/user")
    except OSError:
        return None
