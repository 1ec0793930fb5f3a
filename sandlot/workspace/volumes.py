"""Named volumes: host folders managed by sandlot, mounted into any number of sandboxes at
once and outliving them (see docs/volumes.md).

State, per owner (``""``: the local user; a server passes the tenant)::

    $SANDLOT_HOME/volumes/<owner dir>/          "local", or "t-" + sha256(tenant)
        .lock                                   flock: creates, removes and mount records
        uid                                     the owner's volume uid (as root, see below)
        <name>/volume.json                      VolumeRecord
        <name>/volume.ext4                      the size cap: a sparse ext4 image (as root)
        <name>/data/                            the files (the image's mount point, as root)
        <name>/mounts/<sandbox id>              one per sandbox that mounts it
    $SANDLOT_HOME/volumes/.removed/<random>/    a volume removed by force while mounted

Size: as root the folder is an ext4 image loop-mounted at ``data`` (the workspace cap of
:mod:`sandlot.providers.quota`): writing past it fails with ENOSPC inside. Where loop mounts
are unavailable (:func:`quota.unavailable_reason`), an explicit size is refused (never
silently ignored, as for ``disk_mb``) and a volume made without one is recorded as
``enforced: false``.

Who owns the files: as root each sandbox runs as a fresh host uid (providers/userns.py), so
two sandboxes could not write each other's files. A sandbox that mounts volumes runs instead
as its owner's *volume uid*: one fresh uid per owner (tenant), drawn at the owner's first
volume from a range of its own and kept in ``uid``. Every volume of the owner belongs to it,
so all its sandboxes read and write them; another tenant's sandboxes never run as it and
never see the folder (it is mounted only where named, and names are looked up per owner).
The cost: those sandboxes of one tenant share a host uid's kernel counters. Unprivileged,
everything is sandlot's own user's, as for binds.

Mount records are written (under the lock) before a sandbox starts and cleared when it is
destroyed; a record whose sandbox is no longer live (its control plane crashed) is ignored
and cleared, so a volume is never "in use" forever. Forced removal of a mounted volume: its
name goes at once; its folder moves to ``.removed/`` (the sandboxes using it keep their
files until they end) and is deleted by :meth:`VolumeStore.collect` once none is live.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ..errors import (
    InvalidArgumentError,
    ProviderUnavailableError,
    VolumeError,
    VolumeInUseError,
    VolumeNotFoundError,
)
from ..models import VolumeInfo, VolumeMount, check_volume_name
from ..providers import procinfo, quota

if TYPE_CHECKING:
    from .manifest import CheckpointInfo, RestoreInfo

FOLDER = "volumes"
REMOVED = ".removed"
IMAGE = "volume.ext4"
INDEX = "data.index"  # the stat index of syncs: beside the files, out of the sandboxes' reach
MAX_SIZE_MB = 8 << 20  # 8 TiB, as for a workspace
MIN_SIZE_MB = 16
# Host uids for the owners' volumes: apart from userns.UID_RANGE (one per sandbox), so an
# owner's uid is never a sandbox's own.
VOLUME_UID_RANGE = range(2_100_000_000, 2_100_000_000 + (1 << 24))
MAX_WALK = 200_000  # entries counted for an unenforced volume's used bytes


class VolumeRecord(BaseModel):
    """What ``volume.json`` holds."""

    model_config = ConfigDict(extra="forbid")

    name: str
    owner: str
    size_mb: int | None
    enforced: bool
    created_at: datetime


@dataclass(frozen=True)
class Resolved:
    """A volume mount ready for a provider: the host folder to mount at ``path``."""

    name: str
    host: str
    path: str
    mode: str


def owner_dir(owner: str) -> str:
    """A folder name for any owner string: never a path, never one owner's for another.
    "" (embedded) and "local" (store/keys.py's LOCAL_TENANT: a keyless server's callers,
    the same user) are one owner."""
    if owner in ("", "local"):
        return "local"
    return "t-" + hashlib.sha256(owner.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``1T`` or a number of MiB: the size in MiB."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    scale = units.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        mb = int(float(number) * (scale or 1))
    except (ValueError, OverflowError):
        raise InvalidArgumentError(f"size {text!r} is not like 512M, 20G or 1T") from None
    return mb


class VolumeStore:
    """The named volumes of a state folder. ``is_live(sandbox_id)``: whether a sandbox with
    a mount record still runs (default: it has a record in the state folder's registry
    whose owner process is alive)."""

    def __init__(self, home: Path, is_live: Callable[[str], bool] | None = None) -> None:
        self.home = home
        self.root = home / FOLDER
        self.is_live = is_live or _registry_liveness(home)

    # -- the volumes ----------------------------------------------------------------------

    def create(
        self,
        name: str,
        size_mb: int | None = None,
        owner: str = "",
        *,
        max_count: int | None = None,
        max_total_mb: int | None = None,
    ) -> VolumeInfo:
        """A new, empty volume. ``max_count``, ``max_total_mb``: the owner's quotas (a
        server's), checked under the lock; an uncapped volume counts as the default size."""
        check_volume_name(name)
        if size_mb is not None and not MIN_SIZE_MB <= size_mb <= MAX_SIZE_MB:
            raise InvalidArgumentError(
                f"a volume's size is {MIN_SIZE_MB} MiB to {MAX_SIZE_MB} MiB ({size_mb} asked)"
            )
        reason = quota.unavailable_reason()
        if reason is not None and size_mb is not None:
            raise ProviderUnavailableError(
                f"a volume size cannot be enforced on this host: {reason}; create it without "
                "a size to have an uncapped volume",
                reason=reason,
            )
        size = (size_mb or quota.DEFAULT_MB) if reason is None else None
        with self._locked(owner) as base:
            folder = base / name
            if (folder / "volume.json").exists():
                raise VolumeError(f"volume {name!r} exists already", name=name)
            self._check_quota(owner, size or quota.DEFAULT_MB, max_count, max_total_mb)
            _delete(folder)  # what a remove that died half-way left
            staging = base / f".new-{secrets.token_hex(6)}"
            staging.mkdir(mode=0o711)
            try:
                (staging / "mounts").mkdir(mode=0o700)
                if size is not None:
                    quota.make_image(self.home, size, staging / IMAGE)
                else:
                    (staging / "data").mkdir(mode=0o700)
                    self._hand_over(staging / "data", owner)
                record = VolumeRecord(
                    name=name,
                    owner=owner,
                    size_mb=size,
                    enforced=size is not None,
                    created_at=datetime.now(UTC),
                )
                (staging / "volume.json").write_text(record.model_dump_json())
                os.rename(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if size is not None:
                self._mount(folder, owner)
        return self.get(name, owner)

    def list(self, owner: str = "") -> builtins.list[VolumeInfo]:
        base = self.root / owner_dir(owner)
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return []
        found = []
        for name in names:
            if name.startswith(".") or not (base / name / "volume.json").is_file():
                continue
            with contextlib.suppress(VolumeNotFoundError):
                found.append(self.get(name, owner))
        return found

    def get(self, name: str, owner: str = "") -> VolumeInfo:
        record, folder = self._record(name, owner)
        return VolumeInfo(
            name=record.name,
            size_mb=record.size_mb,
            enforced=record.enforced,
            used_bytes=_used(folder / "data", record.enforced),
            created_at=record.created_at,
            mounted_by=self._live_mounts(folder),
        )

    def remove(self, name: str, owner: str = "", force: bool = False) -> None:
        """Delete the volume and its files; refused (VolumeInUseError) while a live sandbox
        mounts it, unless ``force`` (see the module's docstring for what that does)."""
        with self._locked(owner):
            _, folder = self._record(name, owner)
            users = self._live_mounts(folder)
            if users and not force:
                raise VolumeInUseError(
                    f"volume {name!r} is mounted by {', '.join(users)}: stop them first, or "
                    "remove it with force (they keep their files until they end)",
                    name=name,
                    sandboxes=users,
                )
            (folder / "volume.json").unlink()  # the name is gone from here on
            if users:
                trash = self.root / REMOVED
                trash.mkdir(mode=0o700, exist_ok=True)
                os.rename(folder, trash / secrets.token_hex(8))
                return
            _delete(folder)  # under the lock: a create of the name waits for it

    # -- a workspace store (local or S3) ---------------------------------------------------

    def sync(self, name: str, store_url: str, owner: str = "") -> CheckpointInfo:
        """Save the volume's files to a workspace store (``"local"`` or ``"s3://..."``) as a
        checkpoint of its own key (see :func:`store_key`), incrementally: only files whose
        stat changed since the last sync are read. Sandboxes may be writing meanwhile."""
        from . import check_store_url, open_store

        record, folder = self._record(name, owner)
        if record.enforced:
            self._mount(folder, owner)
        store = open_store(check_store_url(store_url), self.home)
        try:
            return store.checkpoint_sync(store_key(name, owner), folder / "data", folder / INDEX)
        finally:
            store.close_sync()

    def seed(self, name: str, store_url: str, owner: str = "") -> RestoreInfo | None:
        """Make the volume hold its latest checkpoint in a workspace store (None: the store
        has none). Refused while a live sandbox mounts it (its files would change under it)."""
        from . import check_store_url, open_store

        with self._locked(owner):
            record, folder = self._record(name, owner)
            users = self._live_mounts(folder)
            if users:
                raise VolumeInUseError(
                    f"volume {name!r} is mounted by {', '.join(users)}: seed it before they "
                    "start or after they end",
                    name=name,
                    sandboxes=users,
                )
            if record.enforced:
                self._mount(folder, owner)
            store = open_store(check_store_url(store_url), self.home)
            try:
                info = store.restore_sync(store_key(name, owner), folder / "data", folder / INDEX)
            finally:
                store.close_sync()
            if os.geteuid() == 0:
                _chown_tree(folder / "data", self.uid(owner))
        return info

    # -- mounts ---------------------------------------------------------------------------

    def attach(
        self, sandbox_id: str, mounts: builtins.list[VolumeMount], owner: str = ""
    ) -> builtins.list[Resolved]:
        """Record that ``sandbox_id`` mounts these volumes (before it starts: a concurrent
        remove then sees it) and return their host folders, mounted and ready."""
        if not mounts:
            return []
        resolved = []
        with self._locked(owner):
            done: builtins.list[Path] = []
            try:
                for mount in mounts:
                    record, folder = self._record(mount.name, owner)
                    if record.enforced:
                        self._mount(folder, owner)
                    (folder / "mounts" / sandbox_id).write_text(str(os.getpid()))
                    done.append(folder / "mounts" / sandbox_id)
                    host = str(folder / "data")
                    resolved.append(Resolved(mount.name, host, mount.path, mount.mode))
            except BaseException:
                for path in done:
                    path.unlink(missing_ok=True)
                raise
        return resolved

    def detach(self, sandbox_id: str) -> None:
        """Clear a sandbox's mount records (it was destroyed), whoever owns the volumes."""
        for record in self.root.glob(f"*/*/mounts/{sandbox_id}"):
            record.unlink(missing_ok=True)
        for record in self.root.glob(f"{REMOVED}/*/mounts/{sandbox_id}"):
            record.unlink(missing_ok=True)

    def collect(self) -> builtins.list[str]:
        """Clear the records of sandboxes no longer live, and delete force-removed volumes
        none of which mounts any more. Returns the sandbox ids whose records went."""
        cleared: builtins.list[str] = []
        for record in self.root.glob("*/*/mounts/*"):
            if not self.is_live(record.name):
                record.unlink(missing_ok=True)
                cleared.append(record.name)
        for folder in self.root.glob(f"{REMOVED}/*"):
            if not any(folder.glob("mounts/*")):
                _delete(folder)
        return cleared

    def uid(self, owner: str = "") -> int:
        """The owner's volume uid (as root: see the module's docstring), drawn once."""
        base = self.root / owner_dir(owner)
        path = base / "uid"
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text())
        base.mkdir(parents=True, mode=0o711, exist_ok=True)
        staging = base / f".uid-{secrets.token_hex(6)}"
        staging.write_text(str(secrets.choice(VOLUME_UID_RANGE)))
        with contextlib.suppress(FileExistsError):
            os.link(staging, path)  # the first writer wins; everyone reads its uid
        staging.unlink()
        return int(path.read_text())

    # -- helpers --------------------------------------------------------------------------

    def _check_quota(
        self, owner: str, size: int, max_count: int | None, max_total_mb: int | None
    ) -> None:
        if max_count is None and max_total_mb is None:
            return
        base = self.root / owner_dir(owner)
        sizes = []
        for entry in base.glob("*/volume.json"):
            with contextlib.suppress(OSError, ValueError):
                record = VolumeRecord.model_validate_json(entry.read_bytes())
                sizes.append(record.size_mb or quota.DEFAULT_MB)
        if max_count is not None and len(sizes) >= max_count:
            raise VolumeError(
                f"the volume quota is full: {len(sizes)} of {max_count} volumes",
                quota="count",
                limit=max_count,
            )
        if max_total_mb is not None and sum(sizes) + size > max_total_mb:
            raise VolumeError(
                f"the volume size quota is full: {sum(sizes)} MiB used of {max_total_mb} MiB, "
                f"{size} MiB asked",
                quota="size",
                limit=max_total_mb,
            )

    @contextlib.contextmanager
    def _locked(self, owner: str) -> Iterator[Path]:
        base = self.root / owner_dir(owner)
        # Search permission only (0711) on the way down: bwrap, in the sandbox's user
        # namespace, resolves the folder it mounts; nothing here can be listed.
        self.root.mkdir(parents=True, mode=0o711, exist_ok=True)
        base.mkdir(mode=0o711, exist_ok=True)
        with open(base / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield base

    def _record(self, name: str, owner: str) -> tuple[VolumeRecord, Path]:
        check_volume_name(name)
        folder = self.root / owner_dir(owner) / name
        try:
            record = VolumeRecord.model_validate_json((folder / "volume.json").read_bytes())
        except FileNotFoundError:
            raise VolumeNotFoundError(f"no volume named {name!r}", name=name) from None
        return record, folder

    def _live_mounts(self, folder: Path) -> builtins.list[str]:
        users = []
        with contextlib.suppress(OSError):
            for record in sorted((folder / "mounts").iterdir()):
                if self.is_live(record.name):
                    users.append(record.name)
                else:  # its control plane died and nobody destroyed it
                    record.unlink(missing_ok=True)
        return users

    def _mount(self, folder: Path, owner: str) -> None:
        """Mount the volume's image at ``data`` unless it is (after a reboot, it is not)."""
        data = folder / "data"
        if os.path.ismount(data):
            return
        if not data.exists():
            data.mkdir(mode=0o555)  # root's and read-only under the mount, as a workspace
        try:
            quota.mount_at(folder / IMAGE, data)
        except OSError as exc:
            raise ProviderUnavailableError(f"cannot mount volume {folder.name}: {exc}") from None
        self._hand_over(data, owner)

    def _hand_over(self, data: Path, owner: str) -> None:
        """The volume's top folder, the sandbox user's alone (0700): as root, the owner's
        volume uid's."""
        if os.geteuid() == 0:
            uid = self.uid(owner)
            os.chown(data, uid, uid)
        data.chmod(0o700)


def store_key(name: str, owner: str = "") -> str:
    """The key a volume's checkpoints have in a workspace store: ``vol-`` and a hash of its
    owner and name (a store's keys allow no '.'; two tenants' volumes never share one)."""
    digest = hashlib.sha256(f"{owner_dir(owner)}/{name}".encode()).hexdigest()[:32]
    return "vol-" + digest


def _chown_tree(data: Path, uid: int) -> None:
    """Give what a restore (as root) made to the owner's volume uid, links themselves not
    their targets (nothing mounts the volume meanwhile: see seed)."""
    os.chown(data, uid, uid)
    for top, dirs, files in os.walk(data):
        for entry in (*dirs, *files):
            os.chown(os.path.join(top, entry), uid, uid, follow_symlinks=False)


def _delete(folder: Path) -> None:
    quota.release(folder / "data")
    shutil.rmtree(folder, ignore_errors=True)


def _used(data: Path, enforced: bool) -> int:
    """Bytes in use: the file system's count for an image (cheap), else a walk that never
    follows a symlink (a sandbox may have planted any) and stops at :data:`MAX_WALK`."""
    if enforced and os.path.ismount(data):
        fs = os.statvfs(data)
        return (fs.f_blocks - fs.f_bfree) * fs.f_frsize
    total, seen, stack = 0, 0, [str(data)]
    while stack and seen < MAX_WALK:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                seen += 1
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
    return total


def _registry_liveness(home: Path) -> Callable[[str], bool]:
    """A sandbox is live while the state folder's registry has it and its owner process
    (none for a detached one) still runs, before its deadline."""

    def is_live(sandbox_id: str) -> bool:
        from ..store.registry import Store

        store = Store(home)
        try:
            found = store.get(sandbox_id)
        finally:
            store.close()
        if found is None:
            return False
        info, started = found
        if info.expires_at.timestamp() < datetime.now(UTC).timestamp():
            return False
        return info.owner_pid == 0 or procinfo.is_running(info.owner_pid, started)

    return is_live
