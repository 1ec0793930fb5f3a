"""A size-capped folder: a sandbox's ``/workspace`` as a file system of its own.

The folder is a sparse ext4 image in the sandbox's folder (``workspace.ext4``: it costs no
disk until written, and never more than its size), loop-mounted at ``workspace``. Writing
past it fails inside with ENOSPC ("No space left on device"), inode exhaustion too; the host
disk sees at most the image. Everything on the host keeps reading the folder by its path
(checkpoints, restores, another process's connect), because the mount is made in the host's
mount namespace before the sandbox starts.

Why this and not the alternatives: project quotas need the host file system mounted with
``prjquota`` (it is not, here); a tmpfs is memory, not disk; a mount made after bwrap
started would not reach the sandbox (``/`` is private) and files made before it would land
under it. Loop mounts need root: unprivileged, :func:`unavailable_reason` says so, the
default is not enforced and an explicit ``disk_mb`` is refused.

Cold start: a worker thread keeps spares ready: a copy of the size's template image
(formatted once per size by mkfs, ~6 ms) on a loop device, mounted but attached nowhere
(fsopen/fsmount: a mount held by a descriptor); ~3 ms a spare, 30 ms after the create that
took one. A create only attaches a spare at its folder (move_mount, ~30 µs) and renames its
image: ~0.3 ms in all (the first of a process makes its spare then: ~3 ms more). A spare
dies with its process (the kernel drops a detached mount when its descriptor closes), so a
crash leaves only image files. The syscalls and loop ioctls are
called through ctypes: the losetup and mount binaries cost ~11 ms of exec, and no
maintained library wraps LOOP_CONFIGURE or the new mount API.

Lifetime: loop devices are made with LO_FLAGS_AUTOCLEAR, so each frees itself when its last
mount goes; :func:`remove_folder` (the manager's way to delete a sandbox folder) unmounts
first; :func:`collect` deletes the spare images of processes that died; :func:`leftovers`
lists what is still mounted or attached under a folder.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import fcntl
import functools
import logging
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import ProviderUnavailableError
from . import procinfo

log = logging.getLogger("sandlot")

DEFAULT_MB = 10240  # a workspace's size when the spec leaves resources.disk_mb unset
IMAGE = "workspace.ext4"  # beside the workspace, in the sandbox's folder
SPARES = "quota-spares"  # in the state folder: the spares' images, and the templates
TEMPLATE_VERSION = "v1"  # of MKFS: a template made with other options is not reused
SPARES_PER_SIZE = 2  # enough for creates back to back (~26 ms apart) to find one ready
KEPT_SIZES = 2  # (state folder, size) pairs with spares: the ones taken from last
REFILL_DELAY = 0.03  # seconds: after the create that took a spare (see _work)
MKFS = [
    "mkfs.ext4", "-q", "-F",
    # No journal (a workspace does not outlive a host crash anyway) and no room to grow;
    # inode tables left uninitialised, and no reserved blocks: the sandbox user gets it all.
    "-O", "^has_journal,^resize_inode", "-E", "lazy_itable_init=1,nodiscard", "-m", "0",
]  # fmt: skip
# noinit_itable: the kernel would otherwise zero the inode tables in the background, writing
# ~2 MiB per 128 MiB of image to the host disk for nothing.
MOUNT_FLAG = b"noinit_itable"

# <linux/loop.h>, <linux/mount.h>, and the syscall numbers (the same on every architecture)
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 429, 430, 431, 432
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x2, 0x4
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
MNT_DETACH, UMOUNT_NOFOLLOW = 0x2, 0x8


# -- what the host can do -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None if workspaces can be size-capped here; otherwise why not, in words."""
    if os.geteuid() != 0:
        return f"loop mounts need root (sandlot runs as uid {os.geteuid()})"
    if not os.path.exists("/dev/loop-control"):
        return "the host has no loop devices (/dev/loop-control is missing)"
    if shutil.which(MKFS[0]) is None:
        return "mkfs.ext4 is not installed (Debian/Ubuntu: apt-get install e2fsprogs)"
    try:
        os.close(_syscall(SYS_FSOPEN, b"ext4", FSOPEN_CLOEXEC))
    except OSError as exc:
        return f"the kernel cannot mount ext4 through fsopen (Linux 5.8 or later): {exc}"
    return None


def size_for(disk_mb: int | None) -> int | None:
    """The size to cap a workspace at: ``disk_mb``, or the default where the host can cap
    (None where it cannot and none was asked for). An explicit size the host cannot
    enforce is refused."""
    reason = unavailable_reason()
    if reason is None:
        return DEFAULT_MB if disk_mb is None else disk_mb
    if disk_mb is None:
        return None
    raise ProviderUnavailableError(
        f"resources.disk_mb={disk_mb} cannot be enforced on this host: {reason}; leave "
        "disk_mb unset to run without a /workspace size limit",
        reason=reason,
    )


def refuse(disk_mb: int | None, provider: str) -> None:
    """For providers that cannot cap /workspace: an explicit size is refused, never
    silently ignored."""
    if disk_mb is not None:
        raise ProviderUnavailableError(
            f"resources.disk_mb={disk_mb} cannot be enforced by the {provider} provider; leave "
            "disk_mb unset to run without a /workspace size limit",
            reason="no disk quota",
        )


async def cap(workspace: Path, disk_mb: int | None, home: Path) -> int | None:
    """Make ``workspace`` (which must not exist yet) a file system of ``disk_mb`` MiB, owned
    by root until the caller hands it over. Returns the size, or None if left uncapped
    (see :func:`size_for`). A spare is taken if one is ready, else one is made in a worker
    thread; either way a refill starts."""
    size = size_for(disk_mb)
    if size is None:
        return None
    try:
        spare = _take(home, size)
        if spare is not None and not spare.image.exists():  # the state folder was deleted
            _discard(spare)
            spare = None
        if spare is None:
            made = asyncio.get_running_loop().run_in_executor(None, _make, home, size)
            try:
                spare = await asyncio.shield(made)
            except asyncio.CancelledError:  # the create was cancelled: the spare goes too
                made.add_done_callback(_discard_made)
                raise
        try:
            _place(spare, workspace)
        except OSError:
            _discard(spare)
            raise
    except OSError as exc:
        raise ProviderUnavailableError(f"cannot make a capped /workspace: {exc}") from None
    return size


def make_image(home: Path, size: int, image: Path) -> None:
    """A fresh, empty image of ``size`` MiB at ``image`` (a copy of its template): for a
    file system that outlives sandboxes (a named volume), mounted by :func:`mount_at`."""
    _sparse_copy(_template(home, size), image)


def mount_at(image: Path, folder: Path) -> None:
    """Mount ``image`` (no set-uid, no devices) at the existing ``folder``, in the host's
    mount namespace, without its ``lost+found``; the loop device goes with the mount."""
    fd = _mount_image(image)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir("lost+found", dir_fd=fd)
        _syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, bytes(folder), MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(fd)


def _discard_made(made: asyncio.Future[_Spare]) -> None:
    if not made.cancelled() and made.exception() is None:
        _discard(made.result())


# -- releasing ------------------------------------------------------------------------------


def release(workspace: Path) -> None:
    """Unmount a capped workspace; its files go with its image (deleted with the folder) and
    its loop device frees itself once no sandbox process holds the mount. A no-op for a
    plain folder."""
    for _ in range(4):  # a mount stacked on another would show the one below
        if not os.path.ismount(workspace):
            return
        try:
            _umount(workspace)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return  # unmounted meanwhile (another process's gc)
            raise


def release_under(root: Path) -> list[str]:
    """Unmount every mount below ``root``, deepest first: before deleting a whole state
    folder (a test suite's, say) while some of its sandboxes may still hold theirs."""
    points = [x.removeprefix("mount ") for x in leftovers(root) if x.startswith("mount ")]
    for point in sorted(points, key=len, reverse=True):
        with contextlib.suppress(OSError):
            _umount(Path(point))
    return points


def remove_folder(folder: Path) -> None:
    """Delete a sandbox's folder, its capped workspace unmounted first (what
    ``shutil.rmtree(folder, ignore_errors=True)`` did before there were mounts in it)."""
    try:
        release(folder / "workspace")
    except OSError as exc:
        log.warning("cannot unmount the workspace in %s: %s", folder, exc)
        return  # never delete files through a mount that is still in use
    shutil.rmtree(folder, ignore_errors=True)


def collect(home: Path) -> list[str]:
    """Delete the spare images of processes that died (their mounts died with them; a live
    process's spares are its own). Returns the names removed."""
    removed: list[str] = []
    try:
        names = os.listdir(home / SPARES)
    except OSError:
        return removed
    for name in names:
        pid, _, rest = name.partition("-")
        started = rest.partition("-")[0]
        if not (name.endswith(".ext4") and pid.isdigit() and started.isdigit()):
            continue  # the templates, a staging file
        if not procinfo.is_running(int(pid), int(started)):
            (home / SPARES / name).unlink(missing_ok=True)
            removed.append(name)
    return removed


def leftovers(root: Path) -> list[str]:
    """Mounts whose mount point, and loop devices whose image, lie under ``root``: after
    every sandbox of a state folder is gone (and its processes' spares released), none."""
    prefix = str(root.resolve()) + "/"
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point.startswith(prefix):
                found.append(f"mount {point}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            image = backing.read_text().strip()
            if image.startswith(prefix):
                found.append(f"loop /dev/{backing.parent.parent.name} {image}")
    return found


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        path = path.replace(code, chr(int(code[1:], 8)))
    return path


# -- spares ---------------------------------------------------------------------------------


class _Spare(NamedTuple):
    """A formatted image, mounted nowhere yet: the mount's descriptor, and the image,
    ``<state folder>/quota-spares/<pid>-<start time>-<n>.ext4``."""

    fd: int
    image: Path


class _Spares:
    """Ready spares per (state folder, size), topped up by one worker thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: dict[tuple[Path, int], list[_Spare]] = {}
        self.wanted: set[tuple[Path, int]] = set()  # to top up
        self.recent: list[tuple[Path, int]] = []  # the last KEPT_SIZES taken from
        self.dropped: list[_Spare] = []  # of pairs no longer kept: the worker discards them
        self.collected: set[Path] = set()
        self.worker: threading.Thread | None = None
        self.closed = False
        self.seq = 0
        self.pid = os.getpid()


_spares = _Spares()


def _take(home: Path, size: int) -> _Spare | None:
    """A ready spare or None; either way the worker tops the size up (later: see _work)."""
    key = (home, size)
    with _spares.cond:
        queue = _spares.ready.setdefault(key, [])
        found = queue.pop() if queue else None
        if key in _spares.recent:
            _spares.recent.remove(key)
        _spares.recent.append(key)
        for old in _spares.recent[:-KEPT_SIZES]:  # a test suite's many state folders
            _spares.dropped += _spares.ready.pop(old, [])
            _spares.wanted.discard(old)
        del _spares.recent[:-KEPT_SIZES]
        if not _spares.closed:
            _spares.wanted.add(key)
            if _spares.worker is None:
                _spares.worker = threading.Thread(target=_work, name="sandlot-quota", daemon=True)
                _spares.worker.start()
            _spares.cond.notify()
    return found


def _work() -> None:
    """Top up the wanted sizes, REFILL_DELAY after being asked: by then the create that
    took a spare has started its sandbox, so this thread (a fork for a size's first
    template, then system calls only) does not compete with it for the CPU and the GIL."""
    while True:
        with _spares.cond:
            while not _spares.wanted and not _spares.closed:
                _spares.cond.wait()
            if _spares.closed:
                return
            dropped, _spares.dropped = _spares.dropped, []
        time.sleep(REFILL_DELAY)
        for spare in dropped:
            _discard(spare)
        while True:
            with _spares.cond:
                short = [
                    k for k in _spares.wanted if len(_spares.ready.get(k, ())) < SPARES_PER_SIZE
                ]
                if not short or _spares.closed:
                    _spares.wanted.clear()
                    break
            home, size = key = short[0]
            try:
                if home not in _spares.collected:  # a state folder's first use: old spares go
                    _spares.collected.add(home)
                    collect(home)
                spare = _make(home, size)
            except Exception as exc:  # the next cap() makes one itself and reports why
                log.debug("no spare workspace made: %s", exc)
                with _spares.cond:
                    _spares.wanted.discard(key)
                continue
            with _spares.cond:
                keep = not _spares.closed and key in _spares.wanted
                if keep:
                    _spares.ready.setdefault(key, []).append(spare)
            if not keep:
                _discard(spare)


def _make(home: Path, size: int) -> _Spare:
    """A fresh image of ``size`` MiB (a copy of its template), mounted nowhere: a spare."""
    template = _template(home, size)
    with _spares.cond:
        _spares.seq += 1
        name = f"{os.getpid()}-{procinfo.start_time(os.getpid())}-{_spares.seq}.ext4"
    image = home / SPARES / name
    try:
        _sparse_copy(template, image)
        fd = _mount_image(image)
    except BaseException:
        image.unlink(missing_ok=True)
        raise
    try:
        os.rmdir("lost+found", dir_fd=fd)  # not part of anyone's workspace
    except BaseException:
        _discard(_Spare(fd, image))
        raise
    return _Spare(fd, image)


def _template(home: Path, size: int) -> Path:
    """The formatted, empty image of ``size`` MiB that spares are copied from (formatting
    forks mkfs: ~4 ms, once per size and state folder)."""
    folder = home / SPARES / "templates"
    template = folder / f"{TEMPLATE_VERSION}-{size}.ext4"
    if template.exists():
        return template
    folder.parent.mkdir(mode=0o700, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    staging = folder / f".{os.getpid()}-{threading.get_ident()}.ext4"
    try:
        with open(staging, "wb") as f:
            os.ftruncate(f.fileno(), size << 20)  # sparse: no disk used until written
        done = subprocess.run(
            [*MKFS, str(staging)], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise ProviderUnavailableError(f"mkfs.ext4 failed: {done.stderr.strip()}")
        os.rename(staging, template)  # whole or not at all, for every process
    finally:
        staging.unlink(missing_ok=True)
    return template


def _sparse_copy(source: Path, target: Path) -> None:
    """Copy the data of a sparse file and none of its holes (an empty 10 GiB image holds
    ~230 KiB of data: ~0.6 ms)."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        end = os.fstat(src.fileno()).st_size
        at = 0
        while at < end:
            try:
                data = os.lseek(src.fileno(), at, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole is left
                raise
            hole = os.lseek(src.fileno(), data, os.SEEK_HOLE)
            while data < hole:
                data += os.copy_file_range(src.fileno(), dst.fileno(), hole - data, data, data)
            at = hole
        os.ftruncate(dst.fileno(), end)


def _place(spare: _Spare, workspace: Path) -> None:
    """Attach the spare's mount at ``workspace`` and move its image beside it. The folder
    under the mount is root's and read-only, so nothing could write there unnoticed."""
    workspace.mkdir(mode=0o555)
    _syscall(SYS_MOVE_MOUNT, spare.fd, b"", AT_FDCWD, bytes(workspace), MOVE_MOUNT_F_EMPTY_PATH)
    os.rename(spare.image, workspace.parent / IMAGE)
    os.close(spare.fd)  # last: on failure the caller closes it, once


def _discard(spare: _Spare) -> None:
    with contextlib.suppress(OSError):
        os.close(spare.fd)  # the kernel drops the mount, then the loop device
    spare.image.unlink(missing_ok=True)


@atexit.register
def _release_spares() -> None:
    with _spares.cond:
        _spares.closed = True
        _spares.cond.notify()
        ready = [spare for queue in _spares.ready.values() for spare in queue]
        ready += _spares.dropped
        _spares.ready, _spares.dropped = {}, []
    if _spares.pid == os.getpid():  # a forked child's copy of the list is not its own
        for spare in ready:
            _discard(spare)


def _forget_in_child() -> None:
    global _spares
    _spares = _Spares()


os.register_at_fork(after_in_child=_forget_in_child)


# -- loop devices and mounts ----------------------------------------------------------------


def _mount_image(image: Path) -> int:
    """Attach ``image`` to a free loop device (freed again with its last mount, or at once if
    the mount fails) and mount it nowhere, without set-uid or device files: the mount's
    descriptor."""
    device, loop_fd = _attach(image)
    try:
        fs = _syscall(SYS_FSOPEN, b"ext4", FSOPEN_CLOEXEC)
        try:
            _syscall(SYS_FSCONFIG, fs, FSCONFIG_SET_STRING, b"source", device.encode(), 0)
            _syscall(SYS_FSCONFIG, fs, FSCONFIG_SET_FLAG, MOUNT_FLAG, None, 0)
            _syscall(SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0)
            attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
            return _syscall(SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC, attrs)
        finally:
            os.close(fs)
    finally:
        os.close(loop_fd)


def _attach(image: Path) -> tuple[str, int]:
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        # struct loop_config: fd, block_size, struct loop_info64 (lo_flags at 52 of 232 bytes)
        info = bytearray(232)
        struct.pack_into("I", info, 52, LO_FLAGS_AUTOCLEAR)
        config = struct.pack("II", backing, 0) + bytes(info) + bytes(64)
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(32):  # another process may take the free device first
                device = f"/dev/loop{fcntl.ioctl(control, LOOP_CTL_GET_FREE)}"
                fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno == errno.EBUSY:
                        continue
                    raise
                return device, fd
        finally:
            os.close(control)
    finally:
        os.close(backing)
    raise OSError(errno.EBUSY, "no free loop device")


@functools.cache
def _libc() -> Any:
    import ctypes  # here: ~3 ms to import, paid by the first mount, not by every import

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _syscall(number: int, *args: int | bytes | None) -> int:
    import ctypes

    # Every integer as a long: syscall(2) reads its arguments as longs (AT_FDCWD is < 0).
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = int(_libc().syscall(ctypes.c_long(number), *wide))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _umount(target: Path) -> None:
    import ctypes

    # Detached: a sandbox process still in the file system keeps it until it exits.
    if _libc().umount2(bytes(target), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unmount {target}: {os.strerror(code)}")
