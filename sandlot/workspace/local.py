"""The local workspace store: a folder on this host (``$SANDLOT_HOME/workspaces`` by default).

Blobs are staged in ``tmp/`` (same filesystem) while they are read from the workspace and
hashed, then renamed into ``blobs/<hh>/<hash>``; before a manifest names them they are made
durable (fsync of each blob and its folder, or one ``syncfs`` when there are many).
Manifests are written to a temp file, fsynced, renamed, and their folder fsynced.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import NoSpaceError, ProtocolError
from .base import MANIFEST_RE, Staged, store_error
from .manifest import HASH_RE, SESSION_RE, check_session_id
from .store import WorkspaceStore

CHUNK = 1 << 20
SYNCFS_OVER = 32  # more new blobs than this: one syncfs instead of an fsync each


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(WorkspaceStore):
    compress = False

    def __init__(self, root: Path, verify: bool = False) -> None:
        """``verify``: hash every blob again as it is restored. Off by default: this folder
        is private to the host (0700) and its blobs were hashed from the copy written into
        it, so a restore checks only sizes and copies in the kernel (copy_file_range)."""
        super().__init__()
        self.root = Path(root)
        self.verify = verify
        self.url = "local"
        self.blobs = self.root / "blobs"
        self.sessions = self.root / "sessions"
        self.tmp = self.root / "tmp"
        try:
            for d in (self.blobs, self.sessions, self.tmp):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise store_error(f"workspace store folder {self.root} cannot be used: {exc}") from exc

    def __repr__(self) -> str:
        return f"<LocalStore {self.root}>"

    def _blob(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    # -- blobs --------------------------------------------------------------------------------

    def staging_dir(self) -> Path:
        return self.tmp

    def has_blob(self, digest: str) -> bool:
        try:
            # Refresh its time: a blob reused now is not garbage for gc's grace period.
            os.utime(self._blob(digest))
            return True
        except FileNotFoundError:
            return False

    def put_blob(self, staged: Staged) -> None:
        path = self._blob(staged.hash)
        try:
            if staged.path is None:
                tmp = self.tmp / f".put-{staged.hash}-{os.getpid()}-{time.monotonic_ns()}"
                with open(tmp, "wb") as f:
                    f.write(staged.data or b"")
                staged.path = tmp
            try:
                os.rename(staged.path, path)
            except FileNotFoundError:
                path.parent.mkdir(exist_ok=True)
                os.rename(staged.path, path)
            staged.path = None
        except OSError as exc:
            staged.discard()
            if exc.errno == errno.ENOSPC:
                raise NoSpaceError(
                    f"no space left for the workspace store at {self.root}"
                ) from None
            raise

    def sync_blobs(self, digests: list[str]) -> None:
        if not digests:
            return
        if len(digests) > SYNCFS_OVER:
            _syncfs(self.blobs)
            return
        for digest in digests:
            _fsync_path(self._blob(digest))
        for folder in {self._blob(d).parent for d in digests}:
            _fsync_path(folder, directory=True)

    def fetch_blob(self, digest: str, size: int, out_fd: int) -> int:
        try:
            src = os.open(self._blob(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProtocolError(f"workspace blob {digest} is missing from the store") from None
        try:
            if self.verify:
                return copy_verified(src, out_fd, digest, size)
            if os.fstat(src).st_size != size:
                raise ProtocolError(f"workspace blob {digest} does not have its recorded size")
            return copy_range(src, out_fd, size)
        finally:
            os.close(src)

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        for sub in os.scandir(self.blobs):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for blob in os.scandir(sub.path):
                if HASH_RE.match(blob.name):
                    try:
                        yield blob.name, blob.stat(follow_symlinks=False).st_mtime
                    except FileNotFoundError:
                        continue

    def delete_blobs(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self._blob(digest).unlink(missing_ok=True)

    def clean_staging(self, grace: float) -> None:
        cutoff = time.time() - grace
        for entry in os.scandir(self.tmp):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue

    # -- manifests ----------------------------------------------------------------------------

    def manifest_names(self, session_id: str) -> dict[int, str]:
        try:
            names = os.listdir(self.sessions / check_session_id(session_id))
        except FileNotFoundError:
            return {}
        found: dict[int, str] = {}
        for name in names:
            m = MANIFEST_RE.match(name)
            if m:
                found[int(m.group(1))] = name
        return found

    def read_manifest(self, session_id: str, name: str) -> bytes:
        return (self.sessions / session_id / name).read_bytes()

    def write_manifest(self, session_id: str, number: int, data: bytes) -> None:
        folder = self.sessions / session_id
        folder.mkdir(exist_ok=True, mode=0o700)
        name = f"{number:012d}.json" + (".gz" if data[:2] == b"\x1f\x8b" else "")
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, folder / name)
            _fsync_path(folder, directory=True)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise NoSpaceError(
                    f"no space left for the workspace store at {self.root}"
                ) from None
            raise

    def delete_manifests(self, session_id: str, names: list[str]) -> None:
        folder = self.sessions / check_session_id(session_id)
        for name in names:
            (folder / name).unlink(missing_ok=True)
        if not self.manifest_names(session_id):
            try:
                for leftover in folder.iterdir():  # temp files of a crashed write
                    leftover.unlink(missing_ok=True)
                folder.rmdir()
            except OSError:
                pass

    def session_ids(self) -> list[str]:
        return [
            e.name
            for e in os.scandir(self.sessions)
            if e.is_dir(follow_symlinks=False) and SESSION_RE.match(e.name)
        ]


def copy_verified(src: int, dst: int, digest: str, size: int) -> int:
    """Copy ``src`` to ``dst`` hashing on the way; refuse a size or sha256 mismatch."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = os.readv(src, [buf])
        if not n:
            break
        total += n
        if total > size:
            raise ProtocolError(f"workspace blob {digest} is larger than recorded: refused")
        h.update(view[:n])
        done = 0
        while done < n:
            done += os.write(dst, view[done:n])
    if total != size or h.hexdigest() != digest:
        raise ProtocolError(f"workspace blob {digest} does not match its hash: refused")
    return total


def copy_range(src: int, dst: int, size: int) -> int:
    """Copy ``size`` bytes in the kernel (copy_file_range; sendfile where it is refused)."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done)
            if n == 0:
                break
            done += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        while done < size:
            n = os.sendfile(dst, src, done, size - done)
            if n == 0:
                break
            done += n
    if done != size:
        raise ProtocolError(f"workspace blob is shorter than recorded ({done} of {size} bytes)")
    return done
