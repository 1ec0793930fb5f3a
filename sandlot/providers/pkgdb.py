"""The host's package database and configuration, for apt steps on a host-base template.

A build step on a host base sees the host's /usr beneath its layer; for apt and dpkg to
install into it they need what describes that /usr: the dpkg database (/var/lib/dpkg) and
the apt and dpkg configuration. This module copies exactly that into a snapshot folder
(``var/...`` and ``etc/...``) that build mode puts read-only beneath the writable overlay;
dpkg's and apt's changes then land in the step's layer. Never the whole of /var or /etc:
only the allowlisted paths, and of those only what any user may read (no
``auth.conf.d``, no root-only file: credentials stay on the host).

Like the /etc snapshot (:mod:`.etc`) it is keyed by the ``lstat`` of what it copies,
reused while the host's packages stay as they are, and appears atomically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

HOST = Path("/")
# (path beneath /, copied): folders are copied whole (minus what others cannot read).
SOURCES = (
    "var/lib/dpkg",
    "var/lib/apt/extended_states",
    "var/cache/debconf/config.dat",
    "var/cache/debconf/templates.dat",
    "etc/apt",
    "etc/dpkg",
    "etc/debconf.conf",
)
# Never copied, whatever its permissions: apt's credentials.
EXCLUDED = frozenset({"etc/apt/auth.conf", "etc/apt/auth.conf.d"})
# Empty folders apt and dpkg expect to find (and write into: the layer keeps that).
FOLDERS = (
    "var/lib/apt/lists/partial",
    "var/cache/apt/archives/partial",
    "var/log/apt",
    "var/cache/debconf",
    "var/cache/man",  # there, man-db's trigger need not make it (owned by a user it lacks)
)
MAX_FILES = 200_000
STALE_SECONDS = 3600  # an older snapshot than the current one is removed after this
FORMAT = b"pkgdb 2\0"  # changes when what a snapshot holds does
STATUS = "var/lib/dpkg/status"
STATOVERRIDE = "var/lib/dpkg/statoverride"
# The accounts the build sandbox has (its /etc snapshot): root, and names for root's ids.
KNOWN_ACCOUNTS = frozenset({"root", "#0"})


def available() -> bool:
    """Whether the host has a dpkg database at all (apt on a host base needs one)."""
    return (HOST / STATUS).is_file()


def _readable(st: os.stat_result) -> bool:
    """What any user may read (folders: also enter); anything else stays on the host."""
    if stat.S_ISDIR(st.st_mode):
        return st.st_mode & 0o005 == 0o005
    if stat.S_ISREG(st.st_mode):
        return bool(st.st_mode & 0o004)
    return stat.S_ISLNK(st.st_mode)


def _walk(rel: str) -> list[tuple[str, os.stat_result]]:
    """Every entry beneath ``rel`` that would be copied, with its lstat (parents first);
    symlinks are not followed."""
    found: list[tuple[str, os.stat_result]] = []
    pending = [rel]
    while pending:
        path = pending.pop()
        if path in EXCLUDED:
            continue
        try:
            st = os.lstat(HOST / path)
        except OSError:
            continue
        if not _readable(st):
            continue
        found.append((path, st))
        if len(found) > MAX_FILES:
            break
        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(HOST / path), reverse=True)
            except OSError:
                continue
            pending += [f"{path}/{name}" for name in names]
    return found


def _fingerprint(found: list[tuple[str, os.stat_result]]) -> str:
    digest = hashlib.sha256(FORMAT)
    for path, st in found:
        digest.update(f"{path}:{st.st_mode}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def snapshot(home: Path) -> Path:
    """The snapshot folder (``var/``, ``etc/``) of the host's package state now."""
    found = [item for rel in SOURCES for item in _walk(rel)]
    target = home / "pkgdb" / _fingerprint(found)
    if target.is_dir():
        os.utime(target)  # its mtime: when it was last used (see _prune)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        for rel in ("var", "etc", *FOLDERS):
            (staging / rel).mkdir(parents=True, exist_ok=True)
        for rel, st in found:
            _copy(rel, st, staging / rel)
        _filter_overrides(staging / STATOVERRIDE)
        for folder, _, _ in os.walk(staging):
            os.chmod(folder, 0o755)
        staging.chmod(0o755)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # another process may have won the race
            raise
    _prune(target)
    return target


def _prune(current: Path) -> None:
    """Remove the snapshots (and abandoned staging folders) the host's packages have moved
    on from, once unused long enough that no build step can still be running on them."""
    limit = time.time() - STALE_SECONDS
    for other in current.parent.iterdir():
        try:
            if other != current and other.lstat().st_mtime < limit:
                shutil.rmtree(other, ignore_errors=True)
        except OSError:
            continue


def _copy(rel: str, st: os.stat_result, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    source = HOST / rel
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), destination)  # read only inside the sandbox's view
    elif stat.S_ISDIR(st.st_mode):
        destination.mkdir(exist_ok=True)
    else:
        # O_NOFOLLOW: a file swapped for a symlink since the walk is not followed.
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as src, open(destination, "xb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(destination, 0o644 if not st.st_mode & 0o111 else 0o755)
        os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns))


def _filter_overrides(path: Path) -> None:
    """Keep the ``dpkg-statoverride`` entries whose owner and group the build sandbox knows:
    dpkg refuses to run at all if one names an account it cannot find, and the sandbox has
    none of the host's system accounts (those overrides are of files already installed)."""
    try:
        lines = path.read_text().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return
    kept = [line for line in lines if set(line.split()[:2]) <= KNOWN_ACCOUNTS]
    path.write_text("".join(kept))
