"""A template's root filesystem for a bwrap sandbox: overlayfs in a private mount namespace.

bwrap 0.8 cannot mount overlays, so the sandbox's command line gets a small wrapper in front
of it: ``unshare`` makes a private mount namespace (as root; otherwise a user namespace
mapping us to root in it, where the kernel allows unprivileged overlays), ``sh`` mounts the
overlays with ``mount(8)`` and then execs bwrap with its arguments and inherited descriptors
(the same pid, so bwrap is still the child we started). The mounts live only in that
namespace: the host never sees them, and they go away with the sandbox.

The layout:

- **host base** (the host's system plus layers): each top-level folder a layer holds is
  overlaid on the matching host folder (``/usr`` on the host's, ``/etc`` on the sandbox's /etc
  snapshot, others on nothing), the host's top-level symlinks (/bin, /lib...) as today;
- **image base** (a whole root filesystem as the bottom layer): the layers merged by one
  overlay, and each of its top-level entries bound (symlinks kept as symlinks), never its
  /proc, /dev, /sys, /tmp, /workspace, /.sandlot or /run (the sandbox gets its own).

A folder held by one layer only is bound from it directly: no overlay, and no wrapper at all
when nothing needs one. Read-only for sandboxes (``ro`` overlays, bound read-only); build
mode (``upper``) makes the overlays writable into an upper folder: how template steps run.

Everything in a layer is untrusted (a build step or an image wrote it). An entry is judged by
``lstat`` and a folder that is a symlink is never handed to ``mount`` or bwrap (both would
follow it on the host); a symlink in a layer is only ever read inside the sandbox's own view.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import InvalidArgumentError, ProviderUnavailableError
from . import idmap

MAX_LAYERS = 32
# The mount data of one overlay must fit in a page; stay well below.
MAX_OPTIONS = 3800
# Names a sandbox gets its own of: never taken from a template.
RESERVED = frozenset({"proc", "dev", "sys", "tmp", "workspace", ".sandlot", "run"})
# Folders a host-base template overlays on the host's own.
HOST_FOLDERS = {"usr": Path("/usr")}
HOST_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Writable in build mode on a host base even if no layer has them yet.
BUILD_FOLDERS = ("usr", "etc", "opt", "var", "srv")
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
WHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
MOUNT_DIR = "rootfs"
FSTAB = "rootfs.fstab"
SHARED_DIR = "rootfs"  # beneath the state folder: mount points shared by read-only sandboxes
WORK_SUFFIX = ".work"
EMPTY = "empty"


class Template(Protocol):
    """What this module needs of a resolved template (``ResolvedTemplate``)."""

    @property
    def lowers(self) -> list[Path]: ...  # layer root folders, topmost first

    @property
    def host_base(self) -> bool: ...


@dataclass(frozen=True)
class Entry:
    """One top-level entry of the merged root: a folder from ``sources`` (topmost first), a
    symlink to ``target``, or a file at ``sources[0]``."""

    name: str
    kind: str  # "dir", "symlink" or "file"
    sources: tuple[Path, ...] = ()
    target: str = ""


@dataclass
class Root:
    """The wrapper argv to put before bwrap (empty: none needed), bwrap's root arguments,
    and the interpreter (inside the root) that runs the agent."""

    wrapper: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    python: str = "/usr/bin/python3"
    joined: bool = False  # the wrapper enters the sandbox's user namespace: bwrap must not


def _is_whiteout(path: Path, st: os.stat_result) -> bool:
    """A deletion marker: a 0/0 character device, or an empty file with a whiteout xattr."""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        return False
    return any(_xattr(path, name) is not None for name in WHITEOUT_XATTRS)


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _is_opaque(path: Path) -> bool:
    return any(_xattr(path, name) == b"y" for name in OPAQUE_XATTRS)


def entries(lowers: Sequence[Path], bottom: dict[str, Path | str] | None = None) -> list[Entry]:
    """The merged root's top-level entries as overlayfs shows them: the topmost layer that has
    a name decides what it is; folders merge downwards until a whiteout, an opaque folder or
    a non-folder. ``bottom``: a host base's own entries (a folder Path or a symlink target
    str) beneath every layer."""
    names: set[str] = set()
    listed: list[dict[str, os.stat_result]] = []
    for lower in lowers:
        found: dict[str, os.stat_result] = {}
        with os.scandir(lower) as it:
            for item in it:
                found[item.name] = item.stat(follow_symlinks=False)
        listed.append(found)
        names.update(found)
    names.update(bottom or {})
    result = []
    for name in sorted(names - RESERVED):
        entry = _entry(name, lowers, listed, (bottom or {}).get(name))
        if entry is not None:
            result.append(entry)
    return result


def _entry(
    name: str,
    lowers: Sequence[Path],
    listed: list[dict[str, os.stat_result]],
    bottom: Path | str | None,
) -> Entry | None:
    sources: list[Path] = []
    for lower, found in zip(lowers, listed, strict=True):
        st = found.get(name)
        if st is None:
            continue
        path = lower / name
        if stat.S_ISDIR(st.st_mode):
            sources.append(path)
            if _is_opaque(path):
                return Entry(name, "dir", tuple(sources))
            continue
        if sources:  # a non-folder beneath a folder: hidden
            return Entry(name, "dir", tuple(sources))
        if _is_whiteout(path, st):
            return None
        if stat.S_ISLNK(st.st_mode):
            return Entry(name, "symlink", target=os.readlink(path))
        if stat.S_ISREG(st.st_mode):
            return Entry(name, "file", (path,))
        return None  # a device, fifo or socket at the top: not shown
    if isinstance(bottom, str):
        return (
            Entry(name, "dir", tuple(sources)) if sources else Entry(name, "symlink", target=bottom)
        )
    if isinstance(bottom, Path):
        sources.append(bottom)
    return Entry(name, "dir", tuple(sources)) if sources else None


@functools.cache
def host_bottom() -> dict[str, Path | str]:
    """The host's entries a host-base sandbox sees beneath the layers (as without a
    template): /usr and the top-level symlinks or folders into it."""
    found: dict[str, Path | str] = dict(HOST_FOLDERS)
    for name in HOST_TOP_LEVEL:
        host = Path("/") / name
        if host.is_symlink():
            found[name] = os.readlink(host)
        elif host.is_dir():
            found[name] = host
    return found


def check_lowers(lowers: Sequence[Path]) -> None:
    if not lowers:
        raise InvalidArgumentError("the template has no layers to start from")
    if len(lowers) > MAX_LAYERS:
        raise InvalidArgumentError(
            f"the template has {len(lowers)} layers; bwrap mounts at most {MAX_LAYERS} "
            "(rebuild it with fewer steps)"
        )
    for lower in lowers:
        st = os.lstat(lower)  # a missing layer is an OSError the caller reports
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgumentError(f"template layer {lower} is not a folder")


def plan(
    template: Template,
    folder: Path,
    etc_folder: Path,
    upper: Path | None = None,
    idmapped: tuple[str, int] | None = None,
    shared: Path | None = None,
) -> Root:
    """The wrapper and bwrap arguments for a sandbox (state folder ``folder``) of
    ``template``; with ``upper``: build mode (writable, changes into ``upper``), its folders
    idmapped through a user namespace with ``idmapped`` = (host python, namespace fd): the
    wrapper then enters that namespace itself (:attr:`Root.joined`). ``shared``: where
    read-only sandboxes of one template share their mount points and fstab (made once: the
    mounts are in each sandbox's own namespace, so one host folder serves them all)."""
    lowers = list(template.lowers)
    if lowers or not template.host_base:
        check_lowers(lowers)
    place = folder
    if upper is None and shared is not None:
        key = "\0".join(map(str, [template.host_base, etc_folder, *lowers]))
        place = shared / hashlib.sha256(key.encode()).hexdigest()[:16]
    mounts = _Mounts(lowers, place, upper)
    if template.host_base:
        bottom: dict[str, Path | str] = {**host_bottom(), "etc": etc_folder}
        if upper is not None:
            for name in BUILD_FOLDERS:
                bottom.setdefault(name, empty_folder(folder))
        args = mounts.host_base(entries(lowers, bottom), upper is not None)
    else:
        args = mounts.image_base(entries(lowers), upper is not None)
    if upper is not None and idmapped is not None and mounts.overlays:
        return Root(mounts.idmapped_wrapper(*idmapped), args, joined=True)
    return Root(mounts.wrapper(), args)


@dataclass(frozen=True)
class Overlay:
    """One overlay mount: its lower folders (topmost first) and, in build mode, its upper
    and work folders."""

    target: Path
    lowers: tuple[Path, ...]
    upper: Path | None = None
    work: Path | None = None

    def options(self, rel: Callable[[Path], str]) -> str:
        """Its mount options, each folder written as ``rel`` gives it."""
        lowers = [rel(p).replace(":", "\\:") for p in self.lowers]
        others = [rel(p) for p in (self.upper, self.work) if p is not None]
        if any(c in p for p in (*lowers, *others) for c in ",\n\0"):
            raise InvalidArgumentError("a template layer path holds a comma (SANDLOT_HOME?)")
        options = "lowerdir=" + ":".join(lowers)
        options += f",upperdir={others[0]},workdir={others[1]}" if others else ""
        options = options if others else "ro," + options
        if len(options) > MAX_OPTIONS:
            raise InvalidArgumentError(
                "the template's layer paths are too long to mount (shorten SANDLOT_HOME)"
            )
        return options


class _Mounts:
    """Collects the overlay mounts the wrapper makes and the binds bwrap makes of them."""

    def __init__(self, lowers: list[Path], folder: Path, upper: Path | None) -> None:
        self.lowers = lowers
        self.base = _common_parent(lowers)
        self.target = folder / MOUNT_DIR
        self.upper = upper
        self.overlays: list[Overlay] = []
        self.checks: list[str] = []

    def _rel(self, path: Path) -> str:
        if self.base is not None and path.is_relative_to(self.base):
            return str(path.relative_to(self.base))
        return str(path)

    def _overlay(self, sources: Sequence[Path], target: Path, name: str = "") -> None:
        """One overlay mount of ``sources`` (topmost first) on ``target``: read-only, or in
        build mode writable into the upper folder (its ``name`` beneath it), with its work
        folder beneath ``<upper>.work`` (never inside the upper: the layer)."""
        upper = work = None
        if self.upper is not None:
            upper = self.upper / name if name else self.upper
            work = work_folder(self.upper) / (name or "root")
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
        overlay = Overlay(target, tuple(sources), upper, work)
        overlay.options(self._rel)  # checked now: refused before anything starts
        self.overlays.append(overlay)

    def host_base(self, found: list[Entry], build: bool) -> list[str]:
        """Each folder overlaid on the host's (or bound from its only layer); symlinks and
        files as they are. Build mode: the :data:`BUILD_FOLDERS` writable."""
        args: list[str] = []
        for entry in found:
            where = f"/{entry.name}"
            if entry.kind == "symlink":
                args += ["--symlink", entry.target, where]
            elif entry.kind == "file":
                args += ["--ro-bind", str(entry.sources[0]), where]
            elif build and entry.name in BUILD_FOLDERS:
                assert self.upper is not None
                target = self.target / entry.name
                self._overlay(entry.sources, target, entry.name)
                args += ["--bind", str(target), where]
            elif len(entry.sources) == 1:
                args += ["--ro-bind", str(entry.sources[0]), where]
            else:
                target = self.target / entry.name
                self._overlay(entry.sources, target)
                args += ["--ro-bind", str(target), where]
        return args

    def image_base(self, found: list[Entry], build: bool) -> list[str]:
        """One layer: its entries bound as they are. More: merged by one overlay and its
        entries bound from there. Build mode: the whole merged root, writable, is the
        sandbox's root (a step may make new top-level folders); bwrap makes its mount points
        (/proc, /workspace...) in it, and :func:`tidy_upper` removes those afterwards."""
        if build:
            assert self.upper is not None
            self._overlay(self.lowers, self.target)
            return ["--bind", str(self.target), "/"]
        merged = len(self.lowers) > 1
        args: list[str] = []
        for entry in found:
            where = f"/{entry.name}"
            if entry.kind == "symlink":
                args += ["--symlink", entry.target, where]
            elif not merged:
                args += ["--ro-bind", str(entry.sources[0]), where]
            else:
                source = self.target / entry.name
                self.checks.append(shlex.quote(str(source)))
                args += ["--ro-bind", str(source), where]
        if merged:
            self._overlay(self.lowers, self.target)
        return args

    def wrapper(self) -> list[str]:
        """``unshare ... sh -c 'mount -a ...; exec "$@"' sh`` (bwrap's argv follows), or []:
        the mounts listed in an fstab of the sandbox's own, made by one ``mount`` (each
        ``mount`` started costs ~4 ms; the mount itself ~30 us). ``-c``: no canonicalising
        (libmount's realpath walks), ``-n -i``: no mtab, no helpers."""
        if not self.overlays:
            return []
        fstab = self.target.parent / FSTAB
        if not fstab.exists():  # else made by an earlier sandbox of the same template
            fields = [(str(o.target), o.options(self._rel)) for o in self.overlays]
            text = "".join(
                f"sandlot {_fstab_field(t)} overlay {_fstab_field(o)} 0 0\n" for t, o in fields
            )
            self.make_targets()
            staging = fstab.with_name(f".{FSTAB}.{os.getpid()}.{id(self)}")
            staging.write_text(text)
            staging.rename(fstab)
        lines = [f"cd {shlex.quote(str(self.base))}"] if self.base is not None else []
        lines += [f"mount -n -i -c -a -T {shlex.quote(str(fstab))}"]
        # A merged entry bwrap binds must be what it was judged to be: never a symlink
        # (bwrap would follow it on the host).
        lines += [f"! test -L {path}" for path in self.checks]
        return [*_unshare(), "/bin/sh", "-c", " && ".join(lines) + ' && exec "$@"', "sh"]

    def make_targets(self) -> None:
        """The overlays' mount points, reachable by the sandbox's own host uid (whatever the
        umask): bwrap, as that uid, binds them."""
        for overlay in self.overlays:
            overlay.target.mkdir(parents=True, exist_ok=True)
        for path in {self.target.parent.parent, self.target.parent, self.target}:
            if path.stat().st_mode & 0o111 != 0o111:
                path.chmod(0o711)
        for overlay in self.overlays:
            overlay.target.chmod(0o755)

    def idmapped_wrapper(self, python: str, ns_fd: int) -> list[str]:
        """Build mode as root: the overlays made from idmapped clones of their folders (see
        :mod:`.idmap`), run by ``python``, bwrap then joining the namespace ``ns_fd``."""
        assert self.upper is not None
        self.make_targets()
        roots = [self.upper.parent]  # the upper and its work folder: one mount
        if self.base is not None:
            roots.append(self.base)
        for overlay in self.overlays:
            for path in overlay.lowers:
                if not any(path == r or path.is_relative_to(r) for r in roots):
                    roots.append(path)
        base = self.target.parent / idmap.IDMAP_DIR
        clones = [(root, base / str(i)) for i, root in enumerate(roots)]
        for _, clone in clones:
            clone.mkdir(parents=True, exist_ok=True)

        def rel(path: Path) -> str:
            for i, root in enumerate(roots):
                if path == root or path.is_relative_to(root):
                    return str(Path(str(i)) / path.relative_to(root))
            raise AssertionError(f"{path} is beneath no idmapped folder")

        # Mounted inside the user namespace: overlayfs keeps its marks in user.* xattrs.
        mounts = [(o.target, "userxattr," + o.options(rel)) for o in self.overlays]
        return idmap.command(python, ns_fd, clones, base, mounts)


def _fstab_field(text: str) -> str:
    """A field of an fstab line: whitespace and backslashes as octal escapes."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in text)


def _unshare() -> list[str]:
    """A private mount namespace: as root, just that; otherwise inside a user namespace
    that maps us to root (the kernel's unprivileged overlay)."""
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private", "--"]
    return ["unshare", "--user", "--map-root-user", "--mount", "--"]


def empty_folder(parent: Path) -> Path:
    """An empty folder in the sandbox's state folder: the bottom of a build-mode folder the
    host base lacks."""
    path = parent / "rootfs-empty"
    if not path.is_dir():
        path.mkdir(mode=0o555, exist_ok=True)
    return path


def work_folder(upper: Path) -> Path:
    """Overlayfs's work folders of a build-mode sandbox: beside its upper folder, on the
    same file system; removed with :func:`tidy_upper`."""
    return upper.with_name(upper.name + WORK_SUFFIX)


def _common_parent(lowers: list[Path]) -> Path | None:
    """The folder holding the layers' folders (``layers/``): the wrapper works from there so
    each lower folder is a short relative path in the mount options."""
    parents = {p.parent.parent for p in lowers}
    return parents.pop() if len(parents) == 1 else None


def tidy_upper(upper: Path, lowers: Sequence[Path]) -> None:
    """After a build-mode sandbox: remove the overlay work folders, and the empty top-level
    folders the sandbox's start made in the upper folder rather than its step: the upper
    folders of a host base's :data:`BUILD_FOLDERS` (empty: nothing changed there) and the
    mount points bwrap made in an image base's root that no layer has. An opaque folder is
    a change (the step emptied it): it stays."""
    shutil.rmtree(work_folder(upper), ignore_errors=True)
    for name in RESERVED | set(BUILD_FOLDERS):
        path = upper / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or _is_opaque(path):
            continue
        if name in RESERVED and any(os.path.lexists(lower / name) for lower in lowers):
            continue
        try:
            path.rmdir()
        except OSError:
            pass  # not empty: the step's work, it stays


def unavailable_reason() -> str | None:
    """Why overlays cannot be mounted here, or None. Checked once, on first use."""
    return _probe()


@functools.cache
def _probe() -> str | None:
    with tempfile.TemporaryDirectory(prefix="sandlot-overlay-") as scratch:
        for name in ("a", "b", "m"):
            (Path(scratch) / name).mkdir()
        script = "mount -n -i -c -t overlay sandlot -o ro,lowerdir=a:b m"
        try:
            done = subprocess.run(
                [*_unshare(), "/bin/sh", "-c", script],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot run unshare and mount: {exc}"
    if done.returncode != 0:
        how = "as root" if os.geteuid() == 0 else "in an unprivileged user namespace"
        message = done.stderr.strip() or f"exit status {done.returncode}"
        return f"this kernel does not let sandlot mount overlayfs {how} ({message})"
    return None


def require() -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise ProviderUnavailableError(
            f"bwrap cannot start a template here: {reason}", reason=reason
        )
