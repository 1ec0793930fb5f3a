"""Scan, checkpoint and restore a workspace folder, safely against the sandbox that owns it.

The sandbox may run while we read its folder and may swap any file for a symlink at any
moment, so nothing here resolves a path: every directory is opened relative to its parent's
fd with ``O_DIRECTORY|O_NOFOLLOW``, every file with ``O_NOFOLLOW|O_NONBLOCK`` and checked
with ``fstat`` on the fd actually opened (a regular file, or it is skipped). What is stored
is what was read through that fd, hashed on the way, so a blob always matches its name.

Restore works the same way round: entries are created relative to directory fds with
``O_EXCL|O_NOFOLLOW`` (never through a symlink the sandbox planted), every manifest path was
validated when the manifest was parsed, and every blob is hashed as it is written.

The index (a JSON file outside the workspace) caches ``relpath -> (size, mtime_ns, ctime_ns,
ino, mode, hash)``. A file whose stat matches is not read again; ctime and the inode are set
by the kernel, so a sandbox that forges mtimes cannot make a changed file look unchanged.
Timestamps are coarse (a clock tick), so an entry is trusted only if its ctime is older than
the scan that recorded it by a margin (git's "racily clean" rule).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, NoSpaceError, ProtocolError
from .manifest import FORMAT, CheckpointInfo, RestoreInfo
from .store import Staged, WorkspaceStore, prune_names

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20


def _tick_ns() -> int:
    """How coarse a file's ctime can be: the kernel stamps it from its coarse clock (one
    timer tick, 1-10 ms; kernels with fine-grained timestamps are finer still)."""
    try:
        import ctypes

        class _Timespec(ctypes.Structure):
            _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

        res = _Timespec()
        if ctypes.CDLL(None, use_errno=True).clock_getres(6, ctypes.byref(res)) == 0:
            return int(res.sec * 1_000_000_000 + res.nsec)  # 6: CLOCK_MONOTONIC_COARSE
    except (OSError, AttributeError):
        pass
    return 10_000_000


# An index entry is trusted if its ctime is this much older than its scan: one tick of the
# coarse clock, and a millisecond to spare. (File systems with coarser timestamps, such as
# FAT's two seconds, are not suited to a workspace.)
MARGIN_NS = min(_tick_ns(), 20_000_000) + 1_000_000
_FINE_CTIME: dict[int, bool] = {}  # by device: whether ctimes are fine-grained
MAX_DEPTH = 512
INLINE_FILES = 64  # a restore of at most this many files copies them on its own thread
INDEX_FORMAT = 1

StatKey = tuple[int, int, int, int, int]  # size, mtime_ns, ctime_ns, ino, mode


def _key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)


# --------------------------------------------------------------------------------------------
# the index


@dataclass
class Index:
    dev: int
    trusted_before_ns: int
    entries: dict[str, tuple[StatKey, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, dev: int) -> Index | None:
        """The index if it is for this filesystem; any problem means no index (a cache)."""
        if path is None:
            return None
        try:
            raw = json.loads(Path(path).read_bytes())
            if raw.get("format") != INDEX_FORMAT or raw.get("dev") != dev:
                return None
            entries = {
                rel: ((v[0], v[1], v[2], v[3], v[4]), v[5]) for rel, v in raw["entries"].items()
            }
            return cls(dev, int(raw["trusted_before_ns"]), entries)
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None

    def hash_of(self, rel: str, st: os.stat_result) -> str | None:
        got = self.entries.get(rel)
        if got is None:
            return None
        key, digest = got
        if key == _key(st) and key[2] < self.trusted_before_ns:
            return digest
        return None

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        path = Path(path)
        data = {
            "format": INDEX_FORMAT,
            "dev": self.dev,
            "trusted_before_ns": self.trusted_before_ns,
            "entries": {rel: [*key, digest] for rel, (key, digest) in self.entries.items()},
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache: the next checkpoint reads more, that's all


# --------------------------------------------------------------------------------------------
# walking with directory fds


def _open_dir(root_fd: int, rel: str) -> int:
    """A directory below ``root_fd``, each component opened with O_NOFOLLOW."""
    fd = os.dup(root_fd)
    if not rel:
        return fd
    try:
        for part in rel.split("/"):
            sub = os.open(part, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_file(root_fd: int, rel: str) -> tuple[int, os.stat_result]:
    """A regular file below ``root_fd``, opened without following any symlink; the stat is
    of the fd opened. OSError if it is gone or is no longer a regular file."""
    parent, _, name = rel.rpartition("/")
    dfd = _open_dir(root_fd, parent)
    try:
        fd = os.open(name, O_FILE, dir_fd=dfd)
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", rel)
    return fd, st


def _open_root(folder: Path) -> int:
    try:
        return os.open(folder, O_DIR)
    except FileNotFoundError:
        raise InvalidArgumentError(f"workspace folder {folder} does not exist") from None
    except OSError as exc:
        raise InvalidArgumentError(f"workspace folder {folder} cannot be opened: {exc}") from None


@dataclass
class Scan:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, os.stat_result] = field(default_factory=dict)  # regular files
    known: dict[str, str] = field(default_factory=dict)  # file -> hash, from the index
    skipped: int = 0


def scan(root_fd: int, index: Index | None) -> Scan:
    """Every entry below ``root_fd`` (not following symlinks); file hashes from the index
    where it can be trusted. Depth-first with one open fd per level."""
    out = Scan()

    def list_dir(fd: int, prefix: str) -> list[str]:
        subdirs = []
        with os.scandir(fd) as it:
            for e in it:
                name = e.name
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    out.skipped += 1
                    continue
                rel = prefix + name
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    out.skipped += 1  # vanished meanwhile
                    continue
                mode = st.st_mode
                if stat.S_ISREG(mode):
                    out.stats[rel] = st
                    if index is not None:
                        digest = index.hash_of(rel, st)
                        if digest is not None:
                            out.known[rel] = digest
                    out.entries[rel] = {
                        "type": "file",
                        "mode": stat.S_IMODE(mode),
                        "mtime_ns": st.st_mtime_ns,
                        "size": st.st_size,
                    }
                elif stat.S_ISDIR(mode):
                    out.entries[rel] = {
                        "type": "dir",
                        "mode": stat.S_IMODE(mode),
                        "mtime_ns": st.st_mtime_ns,
                    }
                    subdirs.append(name)
                elif stat.S_ISLNK(mode):
                    try:
                        target = os.readlink(name, dir_fd=fd)
                        target.encode("utf-8")
                    except (OSError, UnicodeEncodeError):
                        out.skipped += 1
                        continue
                    out.entries[rel] = {
                        "type": "symlink",
                        "mode": stat.S_IMODE(mode),
                        "mtime_ns": st.st_mtime_ns,
                        "target": target,
                    }
                else:
                    out.skipped += 1  # fifo, socket, device
        return subdirs

    def drop(rel: str) -> None:
        """A directory we could not enter (swapped or gone): leave it out, with its files."""
        out.entries.pop(rel, None)
        out.skipped += 1

    stack: list[tuple[int, str, Iterator[str]]] = []
    root = os.dup(root_fd)
    try:
        stack.append((root, "", iter(list_dir(root, ""))))
        while stack:
            fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            rel = prefix + name
            if len(stack) > MAX_DEPTH:
                drop(rel)
                continue
            try:
                sub = os.open(name, O_DIR, dir_fd=fd)
            except OSError:
                drop(rel)
                continue
            try:
                subdirs = list_dir(sub, rel + "/")
            except OSError:
                os.close(sub)
                drop(rel)
                continue
            stack.append((sub, rel + "/", iter(subdirs)))
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    # Entries below a dropped directory (none, since it was never listed) and children of a
    # directory that was dropped after listing cannot occur: listing happens once entered.
    return out


# --------------------------------------------------------------------------------------------
# checkpoint


def _stage(fd: int, store: WorkspaceStore) -> Staged:
    """Read ``fd`` to its end into a private copy (memory up to ``store.max_inline``, else a
    temp file in the store's staging folder), hashing on the way: the copy is what is
    stored, so the blob matches its hash even if the sandbox writes the file meanwhile."""
    h = hashlib.sha256()
    chunks: list[bytes] = []
    total = 0
    out: int | None = None
    path: Path | None = None
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            h.update(view[:n])
            total += n
            if out is None and total <= store.max_inline:
                chunks.append(bytes(view[:n]))
                continue
            if out is None:
                out, name = tempfile.mkstemp(prefix=".stage-", dir=store.staging_dir())
                path = Path(name)
                for chunk in chunks:
                    os.write(out, chunk)
                chunks = []
            done = 0
            while done < n:
                done += os.write(out, view[done:n])
    except BaseException as exc:
        if path is not None:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise NoSpaceError("no space left to stage a workspace blob") from None
        raise
    finally:
        if out is not None:
            os.close(out)
    if path is not None:
        return Staged(h.hexdigest(), total, path=path)
    return Staged(h.hexdigest(), total, data=b"".join(chunks))


def checkpoint(
    store: WorkspaceStore, session_id: str, folder: Path, index_path: Path | None
) -> CheckpointInfo:
    t0 = time.perf_counter()
    scan_start = time.time_ns()
    names = store.manifest_names(session_id)
    prev = store._latest(session_id, names)
    prev_hashes = prev.hashes if prev is not None else set()
    root_fd = _open_root(folder)
    try:
        dev = os.fstat(root_fd).st_dev
        index = Index.load(index_path, dev)
        found = scan(root_fd, index)
        new_index = Index(dev, scan_start - MARGIN_NS)

        # Files to read: not trusted by the index, or whose known hash the store may lack.
        todo: list[str] = []
        for rel in found.stats:
            digest = found.known.get(rel)
            if digest is not None and digest in prev_hashes:
                found.entries[rel]["hash"] = digest
                new_index.entries[rel] = (_key(found.stats[rel]), digest)
            else:
                todo.append(rel)

        lock = threading.Lock()
        claimed: set[str] = set()  # new hashes this checkpoint is putting
        uploaded: list[tuple[str, int]] = []
        changed = 0
        vanished: list[str] = []

        def exists(digest: str) -> bool:
            """Is the blob stored (or being stored by another task)? Claims it if not."""
            if digest in prev_hashes:
                return True
            with lock:
                if digest in claimed:
                    return True
                claimed.add(digest)
            with store._mutex:
                store._pinned[digest] += 1
            return store.has_blob(digest)

        def one(rel: str) -> None:
            nonlocal changed
            known = found.known.get(rel)
            if known is not None and exists(known):
                with lock:
                    found.entries[rel]["hash"] = known
                    new_index.entries[rel] = (_key(found.stats[rel]), known)
                return
            try:
                fd, st = _open_file(root_fd, rel)
            except OSError:
                with lock:
                    vanished.append(rel)
                return
            try:
                staged = _stage(fd, store)
            finally:
                os.close(fd)
            try:
                is_new = staged.hash not in prev_hashes
                if not exists(staged.hash):
                    store.put_blob(staged)
                    with lock:
                        uploaded.append((staged.hash, staged.size))
            finally:
                staged.discard()
            entry = found.entries[rel]
            with lock:
                changed += is_new
                entry.update(
                    hash=staged.hash,
                    size=staged.size,
                    mode=stat.S_IMODE(st.st_mode),
                    mtime_ns=st.st_mtime_ns,
                )
                new_index.entries[rel] = (_key(st), staged.hash)

        try:
            if len(todo) <= 2:
                for rel in todo:
                    one(rel)
            else:
                with ThreadPoolExecutor(store.workers, thread_name_prefix="checkpoint") as pool:
                    for _ in pool.map(one, todo):
                        pass
            for rel in vanished:
                found.entries.pop(rel, None)
            store.sync_blobs([digest for digest, _ in uploaded])

            # The manifest is built from our own entries (no model validation: 10,000 entries
            # cost tens of ms); a reader validates it like any other.
            number = max(names, default=0) + 1
            skipped = found.skipped + len(vanished)
            raw = {
                "format": FORMAT,
                "session_id": session_id,
                "number": number,
                "created_at": datetime.now(UTC).isoformat(),
                "entries": found.entries,
                "skipped": skipped,
            }
            data = json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()
            if store.compress:
                data = gzip.compress(data, compresslevel=5, mtime=0)
            store.write_manifest(session_id, number, data)
            files = [e for e in found.entries.values() if e["type"] == "file"]
            store._remember(session_id, number, raw, {e["hash"] for e in files})
        finally:
            with store._mutex:
                store._pinned.subtract(claimed)
                for digest in claimed:
                    if store._pinned[digest] <= 0:
                        del store._pinned[digest]

        names[number] = "(new)"
        stale = prune_names(names)
        if stale:
            store.delete_manifests(session_id, stale)
        new_index.save(index_path)
    finally:
        os.close(root_fd)
    return CheckpointInfo(
        session_id=session_id,
        number=number,
        files=len(files),
        bytes=sum(e["size"] for e in files),
        changed=changed,
        uploaded_blobs=len(uploaded),
        uploaded_bytes=sum(size for _, size in uploaded),
        skipped=skipped,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------------
# restore


def _owner_for(root_st: os.stat_result) -> tuple[int, int] | None:
    """As root, restored entries belong to the workspace folder's owner (the sandbox user)."""
    if os.geteuid() != 0:
        return None
    if (root_st.st_uid, root_st.st_gid) == (0, 0):
        return None
    return root_st.st_uid, root_st.st_gid


def _remove(root_fd: int, rel: str, is_dir: bool) -> None:
    parent, _, name = rel.rpartition("/")
    dfd = _open_dir(root_fd, parent)
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


def restore(
    store: WorkspaceStore,
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
    want = manifest.entries
    root_fd = _open_root(folder)
    try:
        root_st = os.fstat(root_fd)
        owner = _owner_for(root_st)
        index = Index.load(index_path, root_st.st_dev)
        have = scan(root_fd, index)
        new_index = Index(root_st.st_dev, 0)
        lock = threading.Lock()

        # 1. Files that may already be right: same size, hash known or cheap to learn.
        keep: set[str] = set()
        unsure = [
            rel
            for rel, e in have.entries.items()
            if e["type"] == "file"
            and rel not in have.known
            and (w := want.get(rel)) is not None
            and w.type == "file"
            and w.size == e["size"]
        ]

        def learn(rel: str) -> None:
            try:
                fd, _ = _open_file(root_fd, rel)
            except OSError:
                return
            try:
                digest = _hash_fd(fd)
            finally:
                os.close(fd)
            with lock:
                have.known[rel] = digest

        if unsure:
            with ThreadPoolExecutor(store.workers, thread_name_prefix="restore") as pool:
                list(pool.map(learn, unsure))

        # 2. Remove what the manifest does not have, or has as something else.
        removed: set[str] = set()
        for rel in sorted(have.entries):
            parts = rel.split("/")
            if any("/".join(parts[:i]) in removed for i in range(1, len(parts))):
                continue
            e = have.entries[rel]
            w = want.get(rel)
            same = w is not None and w.type == e["type"]
            if same and w is not None and w.type == "file":
                same = have.known.get(rel) == w.hash
            elif same and w is not None and w.type == "symlink":
                same = e.get("target") == w.target
            if same:
                keep.add(rel)
                continue
            _remove(root_fd, rel, e["type"] == "dir")
            if e["type"] == "dir":
                removed.add(rel)

        # 3. Directories, then symlinks, in path order (parents first).
        by_parent: dict[str, list[str]] = {}
        for rel in sorted(want):
            by_parent.setdefault(rel.rpartition("/")[0], []).append(rel)
        files: list[tuple[str, list[str]]] = []
        for parent in sorted(by_parent):
            dfd = _open_dir(root_fd, parent)
            try:
                batch = []
                for rel in by_parent[parent]:
                    w = want[rel]
                    name = rel.rpartition("/")[2]
                    if w.type == "dir":
                        if rel not in keep:
                            os.mkdir(name, 0o700, dir_fd=dfd)
                    elif w.type == "symlink":
                        assert w.target is not None
                        if rel not in keep:
                            os.symlink(w.target, name, dir_fd=dfd)
                        if owner is not None:
                            os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)
                        os.utime(
                            name,
                            ns=(w.mtime_ns, w.mtime_ns),
                            dir_fd=dfd,
                            follow_symlinks=False,
                        )
                    else:
                        batch.append(rel)
                if batch:
                    files.append((parent, batch))
            finally:
                os.close(dfd)

        # 4. Files, in parallel: each task one folder's files (or a slice of them).
        fetched: list[int] = []
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

        def write(task: tuple[str, list[str]]) -> None:
            parent, batch = task
            dfd = _open_dir(root_fd, parent)
            try:
                for rel in batch:
                    w = want[rel]
                    assert w.hash is not None
                    name = rel.rpartition("/")[2]
                    if rel in keep:
                        fd = os.open(name, O_FILE, dir_fd=dfd)
                    else:
                        fd = os.open(name, O_NEW, 0o600, dir_fd=dfd)
                    try:
                        if rel not in keep:
                            try:
                                got = store.fetch_blob(w.hash, w.size, fd)
                            except BaseException:
                                os.unlink(name, dir_fd=dfd)
                                raise
                            with lock:
                                fetched.append(got)
                        st = os.fstat(fd)
                        if not stat.S_ISREG(st.st_mode):
                            raise ProtocolError(f"{rel!r:.100} is no longer a regular file")
                        if owner is not None and (st.st_uid, st.st_gid) != owner:
                            os.fchown(fd, *owner)
                        if stat.S_IMODE(st.st_mode) != w.mode or owner is not None:
                            os.fchmod(fd, w.mode)
                        os.utime(fd, ns=(w.mtime_ns, w.mtime_ns))
                        st = os.fstat(fd)
                    finally:
                        os.close(fd)
                    with lock:
                        new_index.entries[rel] = (_key(st), w.hash)
            finally:
                os.close(dfd)

        if sum(len(files) for _, files in tasks) <= INLINE_FILES:
            for task in tasks:  # a few files: starting threads would cost more than copying
                write(task)
        elif tasks:
            with ThreadPoolExecutor(store.workers, thread_name_prefix="restore") as pool:
                for _ in pool.map(write, tasks):
                    pass

        # 5. Directories' modes, owners and times, deepest first (a child's changes would
        # move its parent's mtime).
        for rel in sorted((r for r, w in want.items() if w.type == "dir"), reverse=True):
            w = want[rel]
            fd = _open_dir(root_fd, rel)
            try:
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, w.mode)
                os.utime(fd, ns=(w.mtime_ns, w.mtime_ns))
            finally:
                os.close(fd)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left to restore the workspace into {folder}") from None
        raise
    finally:
        os.close(root_fd)

    # The index's stats were taken just now: wait out a clock tick so that any later change
    # gets a different ctime, then call them trustworthy.
    newest = max((key[2] for key, _ in new_index.entries.values()), default=0)
    fine = index_path is not None and _fine_ctime(index_path.parent, new_index.dev)
    settled = newest + (1 if fine else MARGIN_NS)
    if settle:
        wait = (settled - time.time_ns()) / 1e9
        if wait > 0:
            time.sleep(min(wait, 0.2))
    new_index.trusted_before_ns = newest + 1  # every entry recorded here
    new_index.save(index_path)
    return RestoreInfo(
        session_id=session_id,
        number=manifest.number,
        files=manifest.file_count,
        bytes=manifest.total_bytes,
        fetched_blobs=len(fetched),
        fetched_bytes=sum(fetched),
        seconds=time.perf_counter() - t0,
        settled_ns=settled,
    )
