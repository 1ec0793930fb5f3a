"""The workspace store: where checkpoints go. :class:`WorkspaceStore` runs the algorithms
(:mod:`.checkpoint`, :mod:`.restore`, garbage collection) over a backend's primitives
(:class:`.base.StoreBase`; :mod:`.local`, :mod:`.s3`) and gives them an async surface.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from .base import StoreBase
from .checkpoint import checkpoint
from .manifest import CheckpointInfo, Manifest, RestoreInfo, check_session_id
from .restore import restore


class WorkspaceStore(StoreBase):
    """Checkpoints of session workspaces. The async methods run the blocking core in a
    thread; ``*_sync`` twins exist for callers already in one."""

    def checkpoint_sync(
        self, session_id: str, folder: Path, index: Path | None = None
    ) -> CheckpointInfo:
        check_session_id(session_id)
        with self._locks[session_id]:
            return checkpoint(self, session_id, Path(folder), index)

    def restore_sync(
        self, session_id: str, folder: Path, index: Path | None = None, *, settle: bool = True
    ) -> RestoreInfo | None:
        check_session_id(session_id)
        with self._locks[session_id]:
            return restore(self, session_id, Path(folder), index, settle=settle)

    def delete_sync(self, session_id: str, grace: float = 60.0) -> int:
        check_session_id(session_id)
        with self._locks[session_id]:
            names = self.manifest_names(session_id)
            self.delete_manifests(session_id, list(names.values()))
            self._cache.pop(session_id, None)
        return self.gc_sync(grace)

    def gc_sync(self, grace: float = 60.0) -> int:
        """Delete blobs that no manifest of any session names and that are older than
        ``grace`` seconds (a checkpoint running elsewhere writes its blobs before its
        manifest: grace must outlast the longest checkpoint). Returns how many were deleted."""
        referenced: set[str] = set()
        for session_id in self.session_ids():
            for number, name in self.manifest_names(session_id).items():
                try:
                    data = self.read_manifest(session_id, name)
                except FileNotFoundError:
                    continue  # pruned meanwhile
                referenced |= Manifest.decode(data, session_id, number).hashes()
        cutoff = time.time() - grace
        pinned = self.pinned()
        doomed = [
            digest
            for digest, mtime in self.list_blobs()
            if mtime < cutoff and digest not in referenced and digest not in pinned
        ]
        self.delete_blobs(doomed)
        self.clean_staging(grace)
        return len(doomed)

    # -- the async surface --------------------------------------------------------------------

    async def checkpoint(
        self, session_id: str, folder: Path, index: Path | None = None
    ) -> CheckpointInfo:
        """Checkpoint ``folder`` (the sandbox may be running). ``index`` is a cache of file
        hashes outside the folder: only files whose stat changed are read."""
        return await asyncio.to_thread(self.checkpoint_sync, session_id, folder, index)

    async def restore(
        self, session_id: str, folder: Path, index: Path | None = None, *, settle: bool = True
    ) -> RestoreInfo | None:
        """Make ``folder`` hold the session's latest checkpoint (None: it has none).
        ``settle=False``: see :func:`sandlot.workspace.restore.restore`."""
        return await asyncio.to_thread(
            lambda: self.restore_sync(session_id, folder, index, settle=settle)
        )

    async def delete(self, session_id: str, grace: float = 60.0) -> int:
        """Delete the session's manifests, then unreferenced blobs; returns blobs deleted."""
        return await asyncio.to_thread(self.delete_sync, session_id, grace)

    async def gc(self, grace: float = 60.0) -> int:
        return await asyncio.to_thread(self.gc_sync, grace)

    async def latest(self, session_id: str) -> Manifest | None:
        return await asyncio.to_thread(self.latest_sync, session_id)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
