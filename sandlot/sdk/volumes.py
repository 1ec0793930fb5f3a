"""``sandlot.volumes``: named volumes (docs/volumes.md), on this host or, with a ``client``
(or ``SANDLOT_URL`` set), the server's for the API key's tenant.

    sandlot.volumes.create("data", size="20G")
    sb = sandlot.Sandbox.create(volumes={"data": "/data"})
"""

from __future__ import annotations

import asyncio
import builtins
import os
from typing import TYPE_CHECKING, Any

from ..models import VolumeInfo
from .mirror import mirror

if TYPE_CHECKING:
    from ..remote import Client
    from ..workspace import CheckpointInfo, RestoreInfo


def _size_mb(size: int | str | None) -> int | None:
    """MiB from an int (MiB) or a text like ``512M``, ``20G``."""
    if size is None or isinstance(size, int):
        return size
    from ..workspace.volumes import parse_size

    return parse_size(size)


def _backend(client: Client | None) -> Any:
    """The server's volumes (a client, or SANDLOT_URL), else this state folder's."""
    if client is None and os.environ.get("SANDLOT_URL"):
        from .backend import backend_for

        backend: Any = backend_for(None)
        client = backend.client
    if client is not None:
        from ..remote.volumes import RemoteVolumes

        return RemoteVolumes(client)
    return None


def _host_only(client: Client | None, what: str) -> None:
    if client is not None or os.environ.get("SANDLOT_URL"):
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"a volume {what} with a workspace store runs on this host only: not through a "
            "server yet (unset SANDLOT_URL)"
        )


def _local() -> Any:
    from ..store import default_home
    from ..workspace.volumes import VolumeStore

    return VolumeStore(default_home())


class AsyncVolumes:
    """Named volumes: folders that outlive sandboxes, mounted with ``volumes=`` at create."""

    async def create(
        self, name: str, *, size: int | str | None = None, client: Client | None = None
    ) -> VolumeInfo:
        """Create a volume. ``size``: MiB, or a text like ``"20G"`` (default 10 GiB where
        the host can cap it; where it cannot, a size is refused and the volume is uncapped:
        see ``enforced``)."""
        remote = _backend(client)
        if remote is not None:
            return await remote.create(name, _size_mb(size))
        return await asyncio.to_thread(_local().create, name, _size_mb(size))

    async def list(self, *, client: Client | None = None) -> builtins.list[VolumeInfo]:
        """The volumes, by name."""
        remote = _backend(client)
        if remote is not None:
            return await remote.list()
        return await asyncio.to_thread(_local().list)

    async def get(self, name: str, *, client: Client | None = None) -> VolumeInfo:
        """One volume: its size, bytes used and the live sandboxes that mount it
        (VolumeNotFoundError if there is none of that name)."""
        remote = _backend(client)
        if remote is not None:
            return await remote.get(name)
        return await asyncio.to_thread(_local().get, name)

    async def remove(self, name: str, *, force: bool = False, client: Client | None = None) -> None:
        """Delete a volume and its files. Refused with VolumeInUseError while a live sandbox
        mounts it, unless ``force`` (those sandboxes keep their files until they end)."""
        remote = _backend(client)
        if remote is not None:
            await remote.remove(name, force)
            return
        await asyncio.to_thread(_local().remove, name, "", force)

    async def sync(self, name: str, store: str, *, client: Client | None = None) -> CheckpointInfo:
        """Save the volume's files to a workspace store (``"local"`` or
        ``"s3://bucket/prefix"``, see docs/workspaces.md) as a checkpoint, incrementally.
        On this host only, for now."""
        _host_only(client, "sync")
        return await asyncio.to_thread(_local().sync, name, store)

    async def seed(
        self, name: str, store: str, *, client: Client | None = None
    ) -> RestoreInfo | None:
        """Make the volume hold its latest checkpoint in a workspace store (None: there is
        none); refused with VolumeInUseError while a sandbox mounts it. On this host only,
        for now."""
        _host_only(client, "seed")
        return await asyncio.to_thread(_local().seed, name, store)


@mirror(AsyncVolumes)
class Volumes:
    """Named volumes: folders that outlive sandboxes, mounted with ``volumes=`` at create."""

    def __init__(self) -> None:
        self._inner = AsyncVolumes()

    def create(
        self, name: str, *, size: int | str | None = None, client: Client | None = None
    ) -> VolumeInfo:
        """Create a volume. ``size``: MiB, or a text like ``"20G"`` (default 10 GiB where
        the host can cap it; where it cannot, a size is refused and the volume is uncapped:
        see ``enforced``)."""
        return _call(self._inner.create(name, size=size, client=client))

    def list(self, *, client: Client | None = None) -> builtins.list[VolumeInfo]:
        """The volumes, by name."""
        return _call(self._inner.list(client=client))

    def get(self, name: str, *, client: Client | None = None) -> VolumeInfo:
        """One volume: its size, bytes used and the live sandboxes that mount it
        (VolumeNotFoundError if there is none of that name)."""
        return _call(self._inner.get(name, client=client))

    def remove(self, name: str, *, force: bool = False, client: Client | None = None) -> None:
        """Delete a volume and its files. Refused with VolumeInUseError while a live sandbox
        mounts it, unless ``force`` (those sandboxes keep their files until they end)."""
        _call(self._inner.remove(name, force=force, client=client))

    def sync(self, name: str, store: str, *, client: Client | None = None) -> CheckpointInfo:
        """Save the volume's files to a workspace store (``"local"`` or
        ``"s3://bucket/prefix"``, see docs/workspaces.md) as a checkpoint, incrementally.
        On this host only, for now."""
        return _call(self._inner.sync(name, store, client=client))

    def seed(self, name: str, store: str, *, client: Client | None = None) -> RestoreInfo | None:
        """Make the volume hold its latest checkpoint in a workspace store (None: there is
        none); refused with VolumeInUseError while a sandbox mounts it. On this host only,
        for now."""
        return _call(self._inner.seed(name, store, client=client))


def _call(coro: Any) -> Any:
    from .sync import _portal

    return _portal.call(coro)


volumes = Volumes()
async_volumes = AsyncVolumes()
