"""Resource limits through the host's cgroups: v1 (one hierarchy per controller) or v2.

Each sandbox gets ``sandlot/<scope>/<id>`` in every controller it needs; the scope is derived
from the state folder, so a manager with another ``SANDLOT_HOME`` never mistakes this one's
sandboxes for orphans. Its processes are moved in
before the agent starts any command, so everything the sandbox runs is counted and can be
killed as a group. Where the hierarchy is missing or not writable, :func:`detect` returns
None and the provider falls back to rlimits.

The scope's own folders go once empty (:meth:`CgroupSystem.prune`): otherwise every state
folder ever used (each test run, each benchmark) leaves one per controller behind. The
kernel refuses to remove a group that still has a child or a process, atomically, so a prune
is safe at any time; a create whose scope vanished in between makes it again and retries.

The freezer (v1's ``freezer`` controller, v2's ``cgroup.freeze``) pauses a sandbox: every
process in its groups stops where it is, and thawing lets it go on. A frozen v1 process
cannot even die, so :func:`kill_all` thaws after it has sent SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..models import Resources

ROOT = Path("/sys/fs/cgroup")
GROUP = "sandlot"
V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
CFS_PERIOD_US = 100_000
FREEZE_TIMEOUT = 5.0  # seconds a freeze may take before it is given up (and thawed)
CREATE_ATTEMPTS = 10  # a prune may remove the scope between making it and making a group in it


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass
class CgroupSystem:
    version: int
    roots: dict[str, Path] = field(default_factory=dict)  # controller (or "unified") -> parent
    controllers: tuple[str, ...] = ()  # v2: those the scope hands down to its groups

    def folders(self, sandbox_id: str) -> list[Path]:
        return [root / sandbox_id for root in self.roots.values()]

    def make_roots(self) -> None:
        """Make the scope's folders (again: :meth:`prune` removes them when empty)."""
        for root in self.roots.values():
            self._make_root(root)

    def _make_root(self, root: Path) -> None:
        try:
            if self.version == 1:
                root.mkdir(parents=True, exist_ok=True)
                return
            for folder in (root.parent, root):
                folder.mkdir(exist_ok=True)
                controllers = " ".join("+" + c for c in self.controllers)
                _write(folder / "cgroup.subtree_control", controllers)
        except (FileExistsError, FileNotFoundError):
            pass  # pruned again meanwhile: the caller's next attempt makes it again

    def _make_group(self, root: Path, sandbox_id: str) -> Path:
        """``root/sandbox_id``, making the scope again if a prune removed it; the two
        mkdirs are back to back, so a prune between them is rare, and then retried."""
        folder = root / sandbox_id
        for attempt in range(CREATE_ATTEMPTS):
            try:
                folder.mkdir(exist_ok=True)
                return folder
            except FileNotFoundError:
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                self._make_root(root)
        raise AssertionError("unreachable")

    def prune(self) -> list[Path]:
        """Remove the scope's folders that are empty (no group, no process); the kernel
        refuses the others. The shared ``sandlot`` parent stays. Returns those removed."""
        removed = []
        for root in self.roots.values():
            try:
                root.rmdir()
            except OSError:  # busy (a group or a process in it), or gone already
                continue
            removed.append(root)
        return removed

    def create(self, sandbox_id: str, resources: Resources) -> list[Path]:
        memory = resources.memory_mb * 1024 * 1024
        quota = int(resources.cpus * CFS_PERIOD_US)
        folders = []
        try:
            if self.version == 1:
                for controller, root in self.roots.items():
                    folder = self._make_group(root, sandbox_id)
                    folders.append(folder)
                    if controller == "memory":
                        _write(folder / "memory.limit_in_bytes", str(memory))
                        if (folder / "memory.memsw.limit_in_bytes").exists():
                            _write(folder / "memory.memsw.limit_in_bytes", str(memory))
                    elif controller == "pids":
                        _write(folder / "pids.max", str(resources.pids))
                    elif controller == "cpu":
                        _write(folder / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                        _write(folder / "cpu.cfs_quota_us", str(quota))
            else:
                folder = self._make_group(self.roots["unified"], sandbox_id)
                folders.append(folder)
                _write(folder / "memory.max", str(memory))
                if (folder / "memory.swap.max").exists():
                    _write(folder / "memory.swap.max", "0")
                _write(folder / "pids.max", str(resources.pids))
                if (folder / "cpu.max").exists():
                    _write(folder / "cpu.max", f"{quota} {CFS_PERIOD_US}")
        except OSError:
            try_remove(folders)
            raise
        return folders

    def add(self, folders: list[Path], pids: list[int]) -> None:
        for folder in folders:
            for pid in pids:
                try:
                    _write(folder / "cgroup.procs", str(pid))
                except ProcessLookupError:
                    continue


def procs(folders: list[Path]) -> set[int]:
    found: set[int] = set()
    for folder in folders:
        try:
            found.update(int(x) for x in (folder / "cgroup.procs").read_text().split())
        except OSError:
            continue
    return found


def kill_all(folders: list[Path]) -> None:
    """SIGKILL every process in the groups (v2: cgroup.kill where the kernel has it), then
    thaw them if they were frozen: a frozen v1 process dies only once thawed, and thawing
    after the signal lets nothing run in between."""
    for folder in folders:
        kill_file = folder / "cgroup.kill"
        if kill_file.exists():
            try:
                _write(kill_file, "1")
            except OSError:
                pass
    for pid in procs(folders):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    freezer = freezer_folder(folders)
    if freezer is not None:
        try:
            _set_frozen(freezer, False)
        except OSError:
            pass


# -- the freezer ----------------------------------------------------------------------------


def freezer_folder(folders: list[Path]) -> Path | None:
    """The group among ``folders`` that can freeze the sandbox (v1: the ``freezer``
    controller's; v2: the unified one, with ``cgroup.freeze``), or None."""
    for folder in folders:
        if (folder / "freezer.state").exists() or (folder / "cgroup.freeze").exists():
            return folder
    return None


def _set_frozen(folder: Path, frozen: bool) -> None:
    if (folder / "freezer.state").exists():
        _write(folder / "freezer.state", "FROZEN" if frozen else "THAWED")
    else:
        _write(folder / "cgroup.freeze", "1" if frozen else "0")


def _state(folder: Path) -> str:
    """v1: THAWED, FREEZING or FROZEN. v2 says the same in its own words: the wanted state
    in ``cgroup.freeze``, the reached one as ``frozen`` in ``cgroup.events``."""
    v1 = folder / "freezer.state"
    if v1.exists():
        return v1.read_text().strip()
    if (folder / "cgroup.freeze").read_text().strip() != "1":
        return "THAWED"
    for line in (folder / "cgroup.events").read_text().splitlines():
        if line == "frozen 1":
            return "FROZEN"
    return "FREEZING"


def is_frozen(folder: Path) -> bool:
    """Whether the group is frozen, or on its way (a freeze asked for, not yet complete)."""
    try:
        return _state(folder) != "THAWED"
    except OSError:
        return False


async def freeze(folder: Path, timeout: float = FREEZE_TIMEOUT) -> None:
    """Freeze every process in the group; return once all are stopped. A freeze that does
    not complete in time (a process stuck in the kernel) is undone, and TimeoutError raised."""
    _set_frozen(folder, True)
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while _state(folder) != "FROZEN":
        if time.monotonic() >= deadline:
            _set_frozen(folder, False)
            raise TimeoutError(f"the processes of {folder} did not stop within {timeout:g} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)
        if (folder / "freezer.state").exists():
            _write(folder / "freezer.state", "FROZEN")  # v1 retries the stragglers on a write


def thaw(folder: Path) -> None:
    """Let the group's processes run again (at once: thawing does not wait on anything)."""
    _set_frozen(folder, False)


def try_remove(folders: list[Path]) -> list[Path]:
    """Kill what is left in the groups and remove them; return those still busy."""
    pending = [f for f in folders if f.exists()]
    if pending:
        kill_all(pending)
    busy = []
    for folder in pending:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            busy.append(folder)
    return busy


async def remove(folders: list[Path], wait: float = 5.0) -> bool:
    """Remove the groups, waiting for their processes to die. True when all are gone."""
    deadline = time.monotonic() + wait
    pending = try_remove(folders)
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.0005)
        pending = try_remove(pending)
    return not pending


def detect(scope: str) -> CgroupSystem | None:
    """The host's cgroup hierarchy if this process may create groups in it."""
    if (ROOT / "cgroup.controllers").exists():
        return _detect_v2(scope)
    roots = {c: ROOT / c / GROUP / scope for c in V1_CONTROLLERS}
    if not all((ROOT / c / "cgroup.procs").exists() for c in ("memory", "pids")):
        return None
    roots = {c: r for c, r in roots.items() if (ROOT / c / "cgroup.procs").exists()}
    system = CgroupSystem(1, roots)
    try:
        system.make_roots()
    except OSError:
        return None
    if not all(os.access(parent, os.W_OK) for parent in roots.values()):
        return None
    return system


def _detect_v2(scope: str) -> CgroupSystem | None:
    try:
        available = (ROOT / "cgroup.controllers").read_text().split()
        if not {"memory", "pids"} <= set(available):
            return None
        wanted = tuple(c for c in ("memory", "pids", "cpu") if c in available)
        enabled = (ROOT / "cgroup.subtree_control").read_text().split()
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(ROOT / "cgroup.subtree_control", " ".join("+" + c for c in missing))
        system = CgroupSystem(2, {"unified": ROOT / GROUP / scope}, wanted)
        system.make_roots()
    except OSError:
        return None
    return system


def list_groups(system: CgroupSystem) -> set[str]:
    found: set[str] = set()
    for root in system.roots.values():
        try:
            found.update(p.name for p in root.iterdir() if p.is_dir())
        except OSError:
            continue
    return found
