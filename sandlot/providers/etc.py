"""The sandbox's /etc: a snapshot folder, bound read-only with a single mount.

It holds an allowlist of harmless host entries (dynamic linker cache, alternatives, time zone,
CA certificates, ...) copied as they are (symlinks stay symlinks: they point into /usr, which
the sandbox sees) and synthetic ``passwd``, ``group``, ``hosts`` and ``hostname``: no host
users, no secrets. One bind instead of one per entry saves bwrap ~2 ms per start. The snapshot
is keyed by the entries' lstat, so installing a library or a certificate makes a new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

HOST_ETC = Path("/etc")
RECHECK_SECONDS = 5.0
ALLOWLIST = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "nsswitch.conf",
    "mime.types",
    "ssl/certs",
    "ca-certificates.conf",
    "os-release",
    "matplotlibrc",  # Debian's matplotlib keeps its defaults here
    "fonts",
    "pip.conf",  # a site's package index settings
    "resolv.conf",  # used only with network="full"; without a network it reaches nothing
)


def synthetic(uid: int, gid: int) -> dict[str, str]:
    return {
        "passwd": f"sandbox:x:{uid}:{gid}:sandbox:/workspace:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"sandbox:x:{gid}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost sandlot\n::1 localhost ip6-localhost\n",
        "hostname": "sandlot\n",
    }


def _fingerprint(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in ALLOWLIST:
        try:
            st = (HOST_ETC / name).lstat()
        except OSError:
            digest.update(f"{name}:-".encode())
            continue
        digest.update(f"{name}:{st.st_mode}:{st.st_size}:{st.st_mtime_ns}".encode())
    for name, text in sorted(files.items()):
        digest.update(f"{name}={text}".encode())
    return digest.hexdigest()[:16]


_recent: dict[tuple[Path, int, int], tuple[float, Path]] = {}


def snapshot(home: Path, uid: int, gid: int) -> Path:
    """Return the folder to bind as /etc, building it if the host's entries changed (looked
    at no more than once every few seconds: it is on every sandbox's start-up path)."""
    key = (home, uid, gid)
    now = time.monotonic()
    seen = _recent.get(key)
    if seen is not None and now - seen[0] < RECHECK_SECONDS and seen[1].is_dir():
        return seen[1]
    files = synthetic(uid, gid)
    target = home / "etc" / _fingerprint(files)
    _recent[key] = (now, target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        for name in ALLOWLIST:
            source = HOST_ETC / name
            destination = staging / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                os.symlink(os.readlink(source), destination)
            elif source.is_dir():
                shutil.copytree(source, destination, symlinks=True)
            elif source.is_file():
                shutil.copy2(source, destination)
        for name, text in files.items():
            (staging / name).write_text(text)
        for folder, _, names in os.walk(staging):
            os.chmod(folder, 0o755)
            for name in names:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o644)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # another process may have won the race
            raise
    return target
