"""One process at a time looks after a state folder's detached sandboxes: a ``sandlot serve``,
or a manager that adopted them. Two would fight over the same agents and the same event log
(a second server's notes in the first one's sessions break its live followers).

The owner holds an advisory lock (``flock``) on ``owner.lock`` in the folder, whose content
names it (pid and address, JSON). A ``flock`` belongs to the open file, so the kernel drops it
the moment its process dies, however it dies: a SIGKILLed server never blocks its successor,
and no stale pid file is ever trusted. Within a process the lock is counted: a server's CLI,
its state and its manager may each take it, and it is let go when the last of them does.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServerRunningError

LOCK_NAME = "owner.lock"
NOTE_BYTES = 4096  # the most of another owner's note read


@dataclass
class _Held:
    fd: int
    count: int
    address: str


_held: dict[str, _Held] = {}
_lock = threading.Lock()


def _key(home: Path) -> str:
    return os.path.realpath(home)


def acquire(home: Path, address: str = "") -> None:
    """Own ``home`` (again, if this process does already); :class:`ServerRunningError`
    naming the owner, at once, if another process does. ``address``: where this process
    serves (kept by the first taker that gives one)."""
    key = _key(home)
    with _lock:
        held = _held.get(key)
        if held is not None:
            held.count += 1
            if address and not held.address:
                _write(held.fd, address)
                held.address = address
            return
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(os.path.join(key, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note = _read(fd)
            os.close(fd)
            raise _running(key, note) from None
        except BaseException:
            os.close(fd)
            raise
        _write(fd, address)
        _held[key] = _Held(fd, 1, address)


def set_address(home: Path, address: str) -> None:
    """Name where this process serves (e.g. once its port is known)."""
    with _lock:
        held = _held.get(_key(home))
        if held is not None:
            _write(held.fd, address)
            held.address = address


def release(home: Path) -> None:
    """One taker lets go; the last one unlocks the folder."""
    with _lock:
        key = _key(home)
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _held[key]
        try:
            os.ftruncate(held.fd, 0)
        finally:
            os.close(held.fd)  # the lock goes with it


def owns(home: Path) -> bool:
    """Whether this process owns ``home``."""
    with _lock:
        return _key(home) in _held


def _write(fd: int, address: str) -> None:
    note = json.dumps({"pid": os.getpid(), "address": address}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, note, 0)


def _read(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, NOTE_BYTES, 0)
        note = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        note = {}
    return note if isinstance(note, dict) else {}


def _running(home: str, note: dict[str, object]) -> ServerRunningError:
    pid = note.get("pid")
    address = note.get("address")
    pid = pid if isinstance(pid, int) else None
    address = address if isinstance(address, str) and address else None
    who = f"pid {pid}" if pid is not None else "another process"
    where = f" at {address}" if address else ""
    return ServerRunningError(
        f"{home} is already served by {who}{where}; stop it first, or give this one its own "
        "state folder (SANDLOT_HOME)",
        pid=pid,
        address=address,
    )
