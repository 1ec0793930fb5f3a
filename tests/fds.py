"""Descriptor-leak checks for tests that run in the same process as other work.

Counting ``/proc/self/fd`` is not enough there: the pytest process also runs other tests'
background work (sandboxes' sweepers, pools, garbage collection of earlier tests' sockets),
which opens and closes descriptors at any moment, so a count can move either way by one
without a leak. What a leak looks like instead: a descriptor that was not open before and
is still open after the work is over. :func:`leaked` names those, waiting out short-lived
ones, and cannot be masked by some other descriptor closing meanwhile.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from collections.abc import Callable

Identity = tuple[int, int, int]  # (number, device, inode): a reused number is a new one


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def snapshot() -> set[Identity]:
    """The descriptors open in this process now."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            stat = os.stat(f"/proc/self/fd/{name}")
        except OSError:  # closed since the listing (or the listing's own descriptor)
            continue
        found.add((int(name), stat.st_dev, stat.st_ino))
    return found


def leaked(before: set[Identity], within: float = 5.0) -> list[str]:
    """What is open now that was not in ``before``, once ``within`` seconds have let other
    work of the process close its short-lived descriptors: [] if nothing stayed."""
    deadline = time.monotonic() + within
    while True:
        gc.collect()  # a socket object nobody holds closes only when collected
        new = snapshot() - before
        if not new or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    names = []
    for number, _, _ in sorted(new):
        try:
            names.append(f"{number} -> {os.readlink(f'/proc/self/fd/{number}')}")
        except OSError:
            continue  # closed after all
    return names


def in_fresh_process(function: Callable[[], None], timeout: float = 300.0) -> None:
    """Run ``function`` (module level, so importable by name) in a new interpreter and raise
    here what it raised there. Nothing else of the test process runs in that interpreter
    (no sandboxes' sweepers, pools or engine clients), so :func:`leaked` there is exact."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply_async(function).get(timeout)
