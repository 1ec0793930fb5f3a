"""Restore a checkpoint into a workspace folder, safely against the sandbox that owns it.

Entries are created relative to directory fds with ``O_EXCL|O_NOFOLLOW`` (never through a
symlink the sandbox planted), every manifest path was validated when the manifest was
parsed, and every blob is hashed as it is written. Files already right are kept: the index
(see :mod:`.walk`) or a hash of same-sized files says which.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import NoSpaceError, ProtocolError
from .base import StoreBase
from .manifest import Entry, RestoreInfo
from .walk import (
    CHUNK,
    MARGIN_NS,
    O_FILE,
    Index,
    Scan,
    open_dir,
    open_file,
    open_root,
    scan,
    stat_key,
)

O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
INLINE_FILES = 64  # a restore of at most this many files copies them on its own thread
_FINE_CTIME: dict[int, bool] = {}  # by device: whether ctimes are fine-grained


def restore(
    store: StoreBase,
    session_id: str,
    folder: Path,
    index_path: Path | None,
    *,
    settle: bool = True,
) -> RestoreInfo | None:
    """Make ``folder`` hold the checkpoint. ``settle=False``: return without waiting out
    the clock tick of the last write; the caller must then keep the folder unchanged until
    ``settled_ns`` (``time.time_ns()``) of the answer, so no change can share a ctime with
    what the index recorded."""
    t0 = time.perf_counter()
    manifest = store.latest_sync(session_id)
    if manifest is None:
        return None
    root_fd = open_root(folder)
    try:
        job = _Restore(store, root_fd, manifest.entries, index_path)
        job.run()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left to restore the workspace into {folder}") from None
        raise
    finally:
        os.close(root_fd)
    settled = _settle(job.index, index_path, settle)
    job.index.save(index_path)
    return RestoreInfo(
        session_id=session_id,
        number=manifest.number,
        files=manifest.file_count,
        bytes=manifest.total_bytes,
        fetched_blobs=len(job.fetched),
        fetched_bytes=sum(job.fetched),
        seconds=time.perf_counter() - t0,
        settled_ns=settled,
    )


class _Restore:
    """One restore into the open folder ``root_fd``, in the order of :meth:`run`."""

    def __init__(
        self, store: StoreBase, root_fd: int, want: dict[str, Entry], index_path: Path | None
    ) -> None:
        self.store = store
        self.root_fd = root_fd
        self.want = want
        root_st = os.fstat(root_fd)
        self.owner = _owner_for(root_st)
        self.have = scan(root_fd, Index.load(index_path, root_st.st_dev))
        self.index = Index(root_st.st_dev, 0)  # the new index, of what is written or kept
        self.keep: set[str] = set()  # entries already right
        self.lock = threading.Lock()
        self.fetched: list[int] = []  # sizes of the blobs fetched

    def run(self) -> None:
        self.learn_hashes()
        self.remove_stale()
        files = self.make_dirs_and_links()
        self.write_files(files)
        self.finish_dirs()

    def learn_hashes(self) -> None:
        """Hash the files that may already be right: same size, hash not in the index."""
        have, want = self.have, self.want
        unsure = [
            rel
            for rel, e in have.entries.items()
            if e["type"] == "file"
            and rel not in have.known
            and (w := want.get(rel)) is not None
            and w.type == "file"
            and w.size == e["size"]
        ]
        if unsure:
            with ThreadPoolExecutor(self.store.workers, thread_name_prefix="restore") as pool:
                list(pool.map(self.learn, unsure))

    def learn(self, rel: str) -> None:
        try:
            fd, _ = open_file(self.root_fd, rel)
        except OSError:
            return
        try:
            digest = _hash_fd(fd)
        finally:
            os.close(fd)
        with self.lock:
            self.have.known[rel] = digest

    def remove_stale(self) -> None:
        """Remove what the manifest does not have, or has as something else; keep the rest."""
        removed: set[str] = set()
        for rel in sorted(self.have.entries):
            parts = rel.split("/")
            if any("/".join(parts[:i]) in removed for i in range(1, len(parts))):
                continue
            e = self.have.entries[rel]
            if _same(self.have, rel, self.want.get(rel)):
                self.keep.add(rel)
                continue
            _remove(self.root_fd, rel, e["type"] == "dir")
            if e["type"] == "dir":
                removed.add(rel)

    def make_dirs_and_links(self) -> list[tuple[str, list[str]]]:
        """Directories, then symlinks, in path order (parents first); returns the files
        still to write, by folder."""
        by_parent: dict[str, list[str]] = {}
        for rel in sorted(self.want):
            by_parent.setdefault(rel.rpartition("/")[0], []).append(rel)
        files: list[tuple[str, list[str]]] = []
        for parent in sorted(by_parent):
            dfd = open_dir(self.root_fd, parent)
            try:
                batch = [rel for rel in by_parent[parent] if not self.place(dfd, rel)]
                if batch:
                    files.append((parent, batch))
            finally:
                os.close(dfd)
        return files

    def place(self, dfd: int, rel: str) -> bool:
        """Make the directory or symlink ``rel`` in its folder ``dfd``; False for a file."""
        w = self.want[rel]
        name = rel.rpartition("/")[2]
        if w.type == "dir":
            if rel not in self.keep:
                os.mkdir(name, 0o700, dir_fd=dfd)
            return True
        if w.type != "symlink":
            return False
        assert w.target is not None
        if rel not in self.keep:
            os.symlink(w.target, name, dir_fd=dfd)
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dfd, follow_symlinks=False)
        os.utime(name, ns=(w.mtime_ns, w.mtime_ns), dir_fd=dfd, follow_symlinks=False)
        return True

    def write_files(self, files: list[tuple[str, list[str]]]) -> None:
        """Files, in parallel: each task one folder's files (or a slice of them)."""
        tasks = _tasks(files, self.want)
        if sum(len(batch) for _, batch in tasks) <= INLINE_FILES:
            for task in tasks:  # a few files: starting threads would cost more than copying
                self.write_batch(task)
        elif tasks:
            with ThreadPoolExecutor(self.store.workers, thread_name_prefix="restore") as pool:
                for _ in pool.map(self.write_batch, tasks):
                    pass

    def write_batch(self, task: tuple[str, list[str]]) -> None:
        parent, batch = task
        dfd = open_dir(self.root_fd, parent)
        try:
            for rel in batch:
                self.write_file(dfd, rel)
        finally:
            os.close(dfd)

    def write_file(self, dfd: int, rel: str) -> None:
        """Fetch the file's blob (unless kept), then set its owner, mode and times."""
        w = self.want[rel]
        assert w.hash is not None
        name = rel.rpartition("/")[2]
        kept = rel in self.keep
        fd = os.open(name, O_FILE, dir_fd=dfd) if kept else os.open(name, O_NEW, 0o600, dir_fd=dfd)
        try:
            if not kept:
                try:
                    got = self.store.fetch_blob(w.hash, w.size, fd)
                except BaseException:
                    os.unlink(name, dir_fd=dfd)
                    raise
                with self.lock:
                    self.fetched.append(got)
            st = self._set_metadata(fd, rel, w)
        finally:
            os.close(fd)
        with self.lock:
            self.index.entries[rel] = (stat_key(st), w.hash)

    def _set_metadata(self, fd: int, rel: str, w: Entry) -> os.stat_result:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProtocolError(f"{rel!r:.100} is no longer a regular file")
        if self.owner is not None and (st.st_uid, st.st_gid) != self.owner:
            os.fchown(fd, *self.owner)
        if stat.S_IMODE(st.st_mode) != w.mode or self.owner is not None:
            os.fchmod(fd, w.mode)
        os.utime(fd, ns=(w.mtime_ns, w.mtime_ns))
        return os.fstat(fd)

    def finish_dirs(self) -> None:
        """Directories' modes, owners and times, deepest first (a child's changes would
        move its parent's mtime)."""
        for rel in sorted((r for r, w in self.want.items() if w.type == "dir"), reverse=True):
            w = self.want[rel]
            fd = open_dir(self.root_fd, rel)
            try:
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.fchmod(fd, w.mode)
                os.utime(fd, ns=(w.mtime_ns, w.mtime_ns))
            finally:
                os.close(fd)


def _same(have: Scan, rel: str, w: Entry | None) -> bool:
    """Whether the entry found at ``rel`` is already what the manifest wants there."""
    e = have.entries[rel]
    if w is None or w.type != e["type"]:
        return False
    if w.type == "file":
        return have.known.get(rel) == w.hash
    if w.type == "symlink":
        return e.get("target") == w.target
    return True


def _tasks(
    files: list[tuple[str, list[str]]], want: dict[str, Entry]
) -> list[tuple[str, list[str]]]:
    """Each folder's files cut into slices of at most 64 files or 64 MiB, largest first."""
    tasks: list[tuple[str, list[str]]] = []
    for parent, batch in files:
        cut: list[str] = []
        size = 0
        for rel in batch:
            cut.append(rel)
            size += want[rel].size
            if len(cut) >= 64 or size >= 64 << 20:
                tasks.append((parent, cut))
                cut, size = [], 0
        if cut:
            tasks.append((parent, cut))
    tasks.sort(key=lambda t: -sum(want[r].size for r in t[1]))
    return tasks


def _settle(index: Index, index_path: Path | None, settle: bool) -> int:
    """The index's stats were taken just now: wait out a clock tick (with ``settle``) so that
    any later change gets a different ctime, then call them trustworthy. Returns when that
    tick is over (``time.time_ns()``)."""
    newest = max((key[2] for key, _ in index.entries.values()), default=0)
    fine = index_path is not None and _fine_ctime(index_path.parent, index.dev)
    settled = newest + (1 if fine else MARGIN_NS)
    if settle:
        wait = (settled - time.time_ns()) / 1e9
        if wait > 0:
            time.sleep(min(wait, 0.2))
    index.trusted_before_ns = newest + 1  # every entry recorded here
    return settled


def _owner_for(root_st: os.stat_result) -> tuple[int, int] | None:
    """As root, restored entries belong to the workspace folder's owner (the sandbox user)."""
    if os.geteuid() != 0:
        return None
    if (root_st.st_uid, root_st.st_gid) == (0, 0):
        return None
    return root_st.st_uid, root_st.st_gid


def _remove(root_fd: int, rel: str, is_dir: bool) -> None:
    parent, _, name = rel.rpartition("/")
    dfd = open_dir(root_fd, parent)
    try:
        if is_dir:
            shutil.rmtree(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dfd)


def _hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
    return h.hexdigest()


def _fine_ctime(folder: Path, dev: int) -> bool:
    """Whether a change right after a stat always gets a later ctime on this file system
    (Linux 6.13+ multigrain timestamps): then a restore need not wait for the clock to
    tick. Probed once per device, in ``folder`` (outside the workspace)."""
    found = _FINE_CTIME.get(dev)
    if found is None:
        probe = folder / f".ctime-probe-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            found = os.fstat(fd).st_dev == dev
            for _ in range(8):  # a coarse clock would give two changes in a row one ctime
                os.write(fd, b"x")
                before = os.fstat(fd).st_ctime_ns
                os.write(fd, b"x")
                found = found and os.fstat(fd).st_ctime_ns != before
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        _FINE_CTIME[dev] = found
    return found
