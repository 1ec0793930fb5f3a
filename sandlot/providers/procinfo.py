"""Process identity on Linux: a pid plus its start time, so a recycled pid is never mistaken
for the process we started."""

from __future__ import annotations

import os
import signal


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None  # a zombie has finished; only its exit status is left
    return int(fields[19])


def is_running(pid: int, started: int | None) -> bool:
    return pid > 0 and started is not None and start_time(pid) == started


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children(stack.pop()):
            out.append(child)
            stack.append(child)
    return out


def kill(pid: int, started: int | None, signum: int = signal.SIGKILL) -> bool:
    """Signal the process if it is still the one we started. True if a signal was sent."""
    if not is_running(pid, started):
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True
