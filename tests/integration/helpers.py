"""Host-side probes for the integration tests: processes, namespaces, cgroups, memory.

Everything here reads the real host (``/proc``, ``/sys/fs/cgroup``); nothing is faked.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from sandlot.providers.procinfo import children

CGROUP_ROOT = Path("/sys/fs/cgroup")


def home() -> Path:
    return Path(os.environ["SANDLOT_HOME"]).resolve()


def sandbox_folder(sandbox_id: str) -> Path:
    return home() / "sandboxes" / sandbox_id


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll until ``predicate()`` is true; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def host_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Host processes (not this one) whose command line contains ``text``."""
    me = os.getpid()
    found = []
    for pid in host_pids():
        if pid == me:
            continue
        line = cmdline(pid)
        if text in line:
            found.append((pid, line))
    return found


def is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def sandbox_pid_namespace(bwrap_pid: int) -> str:
    """The PID namespace of the sandbox whose outer bwrap is ``bwrap_pid``.

    bwrap forks the namespace's init; that child (or a later descendant) lives in the new
    namespace, which differs from the host's.
    """
    host_ns = pid_namespace(os.getpid())
    stack = [bwrap_pid]
    while stack:
        for child in children(stack.pop()):
            ns = pid_namespace(child)
            if ns is not None and ns != host_ns:
                return ns
            stack.append(child)
    raise AssertionError(f"no process in a new PID namespace below bwrap pid {bwrap_pid}")


def pids_in_namespace(ns: str) -> list[int]:
    """Live (not zombie) host processes in the PID namespace ``ns``."""
    return [pid for pid in host_pids() if pid_namespace(pid) == ns and not is_zombie_or_gone(pid)]


def cgroup_folders(sandbox_id: str) -> list[Path]:
    """Every cgroup folder named after the sandbox below a ``sandlot`` group, any layout."""
    found = []
    for controller in CGROUP_ROOT.iterdir():
        top = controller / "sandlot"
        if not top.is_dir():
            if controller.name == "sandlot":  # cgroup v2: /sys/fs/cgroup/sandlot
                top = controller
            else:
                continue
        found.extend(p for p in (top / sandbox_id, *top.glob(f"*/{sandbox_id}")) if p.is_dir())
    return found


def status_kb(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (``echo 5 > /proc/self/clear_refs``). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return status_kb("VmHWM") <= status_kb("VmRSS") + 1024
