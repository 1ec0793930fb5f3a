"""A session sandbox's workspace on this host: where it is, and saving it when it ends.

A sandbox attached to a durable session carries ``handle["session"] = {"id", "workspace"}``
in the host registry, so whichever process releases it (a kill, its deadline, garbage
collection of a dead holder's sandbox) checkpoints its ``/workspace`` first, without the
session store. The workspace stores themselves (:mod:`sandlot.workspace`) are imported only
here and only for such sandboxes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SessionError

if TYPE_CHECKING:
    from ..workspace import WorkspaceStore

log = logging.getLogger("sandlot")
# Providers whose /workspace is a folder on this host (under the sandbox's folder).
HOST_WORKSPACE = frozenset({"bwrap", "docker", "process"})
UNSAVED = "unsaved-workspaces"  # in the state folder: workspaces a failed checkpoint kept


class Workspaces:
    """The workspace stores this process has open, by URL."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._stores: dict[str, WorkspaceStore] = {}

    def store(self, url: str) -> WorkspaceStore:
        found = self._stores.get(url)
        if found is None:
            from ..workspace import open_store

            found = self._stores[url] = open_store(url, self.home)
        return found

    @staticmethod
    def paths(sandbox_folder: Path) -> tuple[Path, Path]:
        """The sandbox's /workspace on the host, and the stat index beside it (outside the
        workspace, where the sandbox cannot forge it)."""
        return sandbox_folder / "workspace", sandbox_folder / "workspace.index"

    @staticmethod
    def check_provider(provider: str) -> None:
        if provider not in HOST_WORKSPACE:
            raise SessionError(
                f"the {provider} provider keeps /workspace on another machine: a durable "
                f"session needs one of {', '.join(sorted(HOST_WORKSPACE))} (or a sandlot "
                "server's sessions, through SANDLOT_URL)",
                provider=provider,
            )

    async def checkpoint(self, session: dict[str, Any], sandbox_folder: Path) -> Any:
        workspace, index = self.paths(sandbox_folder)
        return await self.store(session["workspace"]).checkpoint(session["id"], workspace, index)

    async def restore(self, session: dict[str, Any], sandbox_folder: Path) -> Any:
        """Restore without waiting for the clock to move past the last write: the caller
        keeps the sandbox to itself until the answer's ``settled_ns``."""
        workspace, index = self.paths(sandbox_folder)
        store = self.store(session["workspace"])
        return await store.restore(session["id"], workspace, index, settle=False)

    async def save_released(self, sandbox_id: str, session: dict[str, Any], folder: Path) -> Any:
        """Checkpoint a released sandbox's workspace. If that fails, move the folder aside
        (never lose work to a store that is down) and raise."""
        try:
            return await self.checkpoint(session, folder)
        except Exception as exc:
            kept = self.home / UNSAVED / f"{session['id']}-{sandbox_id}-{int(time.time())}"
            kept.parent.mkdir(exist_ok=True, mode=0o700)
            workspace, _ = self.paths(folder)
            if os.path.ismount(workspace):  # capped (providers.quota): its files, copied
                shutil.copytree(workspace, kept, symlinks=True)
            elif workspace.is_dir():
                shutil.move(str(workspace), kept)
            log.error(
                "session %s: the workspace of sandbox %s could not be saved (%s); it was kept "
                "in %s",
                session["id"],
                sandbox_id,
                exc,
                kept,
            )
            raise

    async def close(self) -> None:
        for store in self._stores.values():
            try:
                await store.close()
            except RuntimeError:  # interpreter exit: no worker thread takes it any more
                continue
        self._stores.clear()
