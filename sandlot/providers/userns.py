"""One user namespace per sandbox, owned by an unprivileged host uid of its own.

When sandlot runs as root, bwrap's own ``--unshare-user`` would map the sandbox user onto
root: an escape would land as host root. Instead root prepares a user namespace for each
sandbox and bwrap joins it with ``--userns FD`` (then still unshares its own PID, mount,
network, IPC and UTS namespaces). Each namespace is *created by* a fresh host uid from
:data:`UID_RANGE`, and the sandbox's uid/gid map onto that uid, so:

- the kernel charges what the sandbox uses per user (inotify instances, keys, pipe buffers,
  namespaces, processes) to that uid, never to host root or to another sandbox;
- keyrings are per namespace and uid: no sandbox reads another's ``@u`` keyring;
- files a sandbox leaves on the host belong to a uid no account and no other sandbox has.

A namespace takes a short-lived holder process (~2 ms of fork and exec), so a background
thread keeps a few spare ones ready and a cold start only takes one. A namespace's
descriptor is all that keeps it alive until bwrap joins it; nothing is left running.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ProviderUnavailableError
from .spawn import HostUser

READY_TIMEOUT = 5.0
# Host uids for sandboxes: far above any account and any /etc/subuid range in common use,
# and below 2**31 (some tools still read uids as signed). 2**24 of them, drawn at random, so
# two processes on one host pick the same uid for two live sandboxes about once in 3,000
# pairs of 100 sandboxes each; sharing a uid would share only those counters.
UID_RANGE = range(2_000_000_000, 2_000_000_000 + (1 << 24))
SPARES = 4
NS_GET_OWNER_UID = 0xB704


@dataclass(frozen=True)
class Namespace:
    """A prepared user namespace: its descriptor (the caller closes it once bwrap has
    joined) and the host account its sandbox user maps onto."""

    fd: int
    user: HostUser


class _Spares:
    """Spare namespaces for one (inner uid, inner gid, fixed host user or None) key."""

    def __init__(self, key: tuple[int, int, HostUser | None]) -> None:
        self.key = key
        self.ready: list[Namespace] = []
        self.lock = threading.Lock()
        self.filling = False


_spares: dict[tuple[int, int, HostUser | None], _Spares] = {}
_spares_lock = threading.Lock()
_in_use: set[int] = set()  # host uids this process handed out and has not released


def take(inner_uid: int, inner_gid: int, fixed: HostUser | None = None) -> Namespace | None:
    """A spare namespace for one sandbox, or None (then :func:`create` makes one, in a
    worker thread). ``fixed``: map onto (and create as) this host account instead of a fresh
    uid (the ``host_user`` setting)."""
    spares = _spares_for((inner_uid, inner_gid, fixed))
    with spares.lock:
        return spares.ready.pop() if spares.ready else None


def replenish(inner_uid: int, inner_gid: int, fixed: HostUser | None = None) -> None:
    """Top the spares up in a background thread. Called once a sandbox has started, so
    that making them does not compete with its start for the CPU."""
    spares = _spares_for((inner_uid, inner_gid, fixed))
    with spares.lock:
        if spares.filling or len(spares.ready) >= SPARES:
            return
        spares.filling = True
    threading.Thread(target=_refill, args=(spares,), daemon=True).start()


def _spares_for(key: tuple[int, int, HostUser | None]) -> _Spares:
    with _spares_lock:
        return _spares.setdefault(key, _Spares(key))


def release(user: HostUser) -> None:
    """The sandbox that used this uid is gone: it may be drawn again."""
    _in_use.discard(user.uid)


def release_handle(handle: dict[str, Any]) -> None:
    """:func:`release` the uid a provider recorded in a sandbox's handle (``host_uid``)."""
    uid = handle.get("host_uid")
    if isinstance(uid, int):
        _in_use.discard(uid)


def _refill(spares: _Spares) -> None:
    try:
        while True:
            with spares.lock:
                if len(spares.ready) >= SPARES:
                    return
            made = create(*spares.key)
            with spares.lock:
                spares.ready.append(made)
    except ProviderUnavailableError:
        return  # the next take() makes one itself and reports why
    finally:
        with spares.lock:
            spares.filling = False


def fresh_user() -> HostUser:
    """A host uid (and gid) from :data:`UID_RANGE` that this process has not handed out."""
    while True:
        uid = UID_RANGE.start + secrets.randbelow(len(UID_RANGE))
        if uid not in _in_use:
            _in_use.add(uid)
            return HostUser(uid, uid)


def create(inner_uid: int, inner_gid: int, fixed: HostUser | None = None) -> Namespace:
    """A new namespace, owned by (and mapping the inner ids onto) a host account."""
    user = fixed or fresh_user()
    # A short-lived holder, running as that account, enters a new user namespace (so the
    # account owns it); we write its maps as root from outside, keep a descriptor, and let
    # the holder go. setpriv switches the account: Popen(user=...) would fork this whole
    # process (no vfork with a uid change), ~3x the CPU.
    argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--"]
    try:
        holder = subprocess.Popen(
            [*argv, "unshare", "--user", "--", "sleep", "60"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        release(user)
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
                release(user)
                raise ProviderUnavailableError(
                    f"cannot prepare the sandbox user namespace: {message.strip() or 'timeout'}"
                )
            time.sleep(0.0005)
        with open(f"{path}/setgroups", "w") as f:
            f.write("deny")
        with open(f"{path}/uid_map", "w") as f:
            f.write(f"{inner_uid} {user.uid} 1")
        with open(f"{path}/gid_map", "w") as f:
            f.write(f"{inner_gid} {user.gid} 1")
        fd = os.open(f"{path}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        if _owner(fd) != user.uid:  # made by anything but the account: never hand it out
            os.close(fd)
            release(user)
            raise ProviderUnavailableError("the sandbox user namespace has the wrong owner")
        return Namespace(fd, user)
    finally:
        holder.kill()
        holder.wait()
        if holder.stderr:
            holder.stderr.close()


def _owner(fd: int) -> int | None:
    """The uid that owns a namespace (``NS_GET_OWNER_UID``)."""
    try:
        raw = fcntl.ioctl(fd, NS_GET_OWNER_UID, b"\0" * 4)
    except OSError:
        return None
    return int.from_bytes(raw, sys.byteorder)


def _namespace_of(path: str) -> str | None:
    try:
        return os.readlink(f"{path}/ns/user")
    except OSError:
        return None
