"""Checkpoint a workspace folder into a store, safely against the sandbox that owns it.

The folder is read as :mod:`.walk` says (fd-relative, never through a symlink). What is
stored is what was read through the fd opened, hashed on the way, so a blob always matches
its name; only files the index cannot vouch for are read.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import NoSpaceError
from .base import Staged, StoreBase, prune_names
from .manifest import FORMAT, CheckpointInfo
from .walk import CHUNK, MARGIN_NS, Index, Scan, open_file, open_root, scan, stat_key


def _stage(fd: int, store: StoreBase) -> Staged:
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
    store: StoreBase, session_id: str, folder: Path, index_path: Path | None
) -> CheckpointInfo:
    """Store what ``folder`` holds as the session's next checkpoint; prune old ones."""
    t0 = time.perf_counter()
    scan_start = time.time_ns()
    names = store.manifest_names(session_id)
    prev = store.latest_of(session_id, names)
    root_fd = open_root(folder)
    try:
        dev = os.fstat(root_fd).st_dev
        found = scan(root_fd, Index.load(index_path, dev))
        prev_hashes = prev.hashes if prev is not None else set()
        run = _Run(store, root_fd, found, Index(dev, scan_start - MARGIN_NS), prev_hashes)
        try:
            run.read(run.todo())
            store.sync_blobs([digest for digest, _ in run.uploaded])
            number = max(names, default=0) + 1
            files = _write_manifest(store, session_id, number, found, run.skipped())
        finally:
            store.unpin(run.claimed)
        names[number] = "(new)"
        stale = prune_names(names)
        if stale:
            store.delete_manifests(session_id, stale)
        run.index.save(index_path)
    finally:
        os.close(root_fd)
    return CheckpointInfo(
        session_id=session_id,
        number=number,
        files=len(files),
        bytes=sum(e["size"] for e in files),
        changed=run.changed,
        uploaded_blobs=len(run.uploaded),
        uploaded_bytes=sum(size for _, size in run.uploaded),
        skipped=run.skipped(),
        seconds=time.perf_counter() - t0,
    )


class _Run:
    """One checkpoint's reading and uploading of files, on several threads at once."""

    def __init__(
        self, store: StoreBase, root_fd: int, found: Scan, index: Index, prev_hashes: set[str]
    ) -> None:
        self.store = store
        self.root_fd = root_fd
        self.found = found
        self.index = index  # the new index, filled in as files are hashed
        self.prev_hashes = prev_hashes  # blobs the latest manifest names: stored already
        self.lock = threading.Lock()
        self.claimed: set[str] = set()  # new hashes this checkpoint is putting (pinned)
        self.uploaded: list[tuple[str, int]] = []
        self.changed = 0
        self.vanished: list[str] = []

    def todo(self) -> list[str]:
        """Files to read: not trusted by the index, or whose known hash the store may lack."""
        found, todo = self.found, []
        for rel in found.stats:
            digest = found.known.get(rel)
            if digest is not None and digest in self.prev_hashes:
                found.entries[rel]["hash"] = digest
                self.index.entries[rel] = (stat_key(found.stats[rel]), digest)
            else:
                todo.append(rel)
        return todo

    def read(self, todo: list[str]) -> None:
        """Hash and store each of ``todo``; drop from the scan the files that vanished."""
        if len(todo) <= 2:
            for rel in todo:
                self.one(rel)
        else:
            with ThreadPoolExecutor(self.store.workers, thread_name_prefix="checkpoint") as pool:
                for _ in pool.map(self.one, todo):
                    pass
        for rel in self.vanished:
            self.found.entries.pop(rel, None)

    def skipped(self) -> int:
        return self.found.skipped + len(self.vanished)

    def exists(self, digest: str) -> bool:
        """Is the blob stored (or being stored by another task)? Claims it if not."""
        if digest in self.prev_hashes:
            return True
        with self.lock:
            if digest in self.claimed:
                return True
            self.claimed.add(digest)
        self.store.pin(digest)
        return self.store.has_blob(digest)

    def one(self, rel: str) -> None:
        known = self.found.known.get(rel)
        if known is not None and self.exists(known):
            with self.lock:
                self.found.entries[rel]["hash"] = known
                self.index.entries[rel] = (stat_key(self.found.stats[rel]), known)
            return
        try:
            fd, st = open_file(self.root_fd, rel)
        except OSError:
            with self.lock:
                self.vanished.append(rel)
            return
        try:
            staged = _stage(fd, self.store)
        finally:
            os.close(fd)
        self.put(staged)
        with self.lock:
            self.changed += staged.hash not in self.prev_hashes
            self.found.entries[rel].update(
                hash=staged.hash,
                size=staged.size,
                mode=stat.S_IMODE(st.st_mode),
                mtime_ns=st.st_mtime_ns,
            )
            self.index.entries[rel] = (stat_key(st), staged.hash)

    def put(self, staged: Staged) -> None:
        """Store the blob unless it is there already; the staged copy is gone after."""
        try:
            if not self.exists(staged.hash):
                self.store.put_blob(staged)
                with self.lock:
                    self.uploaded.append((staged.hash, staged.size))
        finally:
            staged.discard()


def _write_manifest(
    store: StoreBase, session_id: str, number: int, found: Scan, skipped: int
) -> list[dict[str, Any]]:
    """Write checkpoint ``number`` from the scan's entries; returns its file entries.

    Built from our own entries (no model validation: 10,000 entries cost tens of ms); a
    reader validates it like any other."""
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
    store.remember(session_id, number, raw, {e["hash"] for e in files})
    return files
