"""What sandboxes must not leave behind in their manager's process and on the host
(issue 16), on the real cgroup hierarchy and real bwrap sandboxes:

- a state folder's cgroup scope (``sandlot/<scope>`` in every controller) goes once empty,
  and a create whose scope was pruned under it makes it again (four empty folders were left
  per state folder used, on cgroup v1);
- a detached manager (a server's) keeps no descriptor per sandbox (it kept each sandbox's
  user namespace open, for its whole life).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from sandlot.manager import Manager
from sandlot.models import Resources, SandboxSpec
from sandlot.providers import cgroups
from sandlot.providers.bwrap import BwrapProvider


def system_or_skip(scope: str) -> cgroups.CgroupSystem:
    system = cgroups.detect(scope)
    if system is None:
        pytest.fail("this host lets root create cgroups: detect() should find them")
    return system


def test_an_empty_scope_is_pruned_and_made_again_on_create() -> None:
    system = system_or_skip(f"test-{uuid.uuid4().hex[:8]}")
    roots = list(system.roots.values())
    assert roots and all(r.is_dir() for r in roots)
    groups = system.create("sb-one", Resources())
    assert system.prune() == []  # a group in it: the kernel refuses
    assert all(r.is_dir() for r in roots)
    assert cgroups.try_remove(groups) == []
    assert set(system.prune()) == set(roots)
    assert not any(r.exists() for r in roots)
    # A create after the prune makes the scope again.
    groups = system.create("sb-two", Resources())
    assert all(g.is_dir() for g in groups)
    assert cgroups.try_remove(groups) == []
    assert set(system.prune()) == set(roots)


def test_creates_survive_prunes_racing_them() -> None:
    """A prune between a create's making the scope and making its group in it: the create
    makes the scope again and retries."""
    system = system_or_skip(f"test-{uuid.uuid4().hex[:8]}")
    stop = threading.Event()
    pruned = 0

    def prune() -> None:
        nonlocal pruned
        while not stop.is_set():
            pruned += len(system.prune())
            # Prunes come at a gc or a close. Back to back, they would win every race against
            # v1's slow memory-group mkdir, which real ones never do.
            time.sleep(0.0005)

    pruner = threading.Thread(target=prune)
    pruner.start()
    try:
        for i in range(200):
            groups = system.create(f"sb-{i}", Resources())
            assert all(g.is_dir() for g in groups)
            assert cgroups.try_remove(groups) == []
    finally:
        stop.set()
        pruner.join()
    assert pruned, "the scope was never pruned under the creates: the race was not run"
    system.prune()
    assert not any(r.exists() for r in system.roots.values())


async def test_a_manager_leaves_no_scope_behind() -> None:
    """A manager with its own state folder makes sandboxes, kills them and closes: nothing
    of its scope is left in any controller."""
    home = Path(tempfile.mkdtemp(prefix="slcg-", dir="/tmp"))
    manager = Manager(home)
    try:
        lives = await asyncio.gather(*(manager.create(SandboxSpec()) for _ in range(3)))
        provider = lives[0].provider
        assert isinstance(provider, BwrapProvider)
        system = provider._cgroups
        assert system is not None
        roots = list(system.roots.values())
        assert all(r.is_dir() for r in roots)
        for live in lives:
            await manager.kill(live.info.id)
    finally:
        await manager.close()
    assert not any(r.exists() for r in roots)


def namespace_fds() -> int:
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}").startswith("user:")
        except OSError:
            continue
    return found


async def test_a_detached_manager_keeps_no_descriptor_per_sandbox() -> None:
    home = Path(tempfile.mkdtemp(prefix="slfd-", dir="/tmp"))
    manager = Manager(home, detached=True)
    try:
        first = await manager.create(SandboxSpec())  # spares and caches made once
        await manager.kill(first.info.id)
        await manager.settle()
        before = os.listdir("/proc/self/fd")
        for _ in range(3):
            lives = await asyncio.gather(*(manager.create(SandboxSpec()) for _ in range(4)))
            for live in lives:
                await manager.kill(live.info.id)
        await manager.settle()
        after = os.listdir("/proc/self/fd")
        # The namespaces' spares (userns.SPARES) are all the descriptors that may differ.
        assert len(after) <= len(before) + 4, (len(before), len(after), namespace_fds())
    finally:
        await manager.close()


def failed_creates_keep_no_namespace() -> None:
    """Run in a fresh interpreter by the test below: nothing else holds namespaces there."""
    from sandlot.providers import bwrap, userns

    def namespaces_held() -> int:
        held = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                held += os.readlink(f"/proc/self/fd/{name}").startswith("user:")
            except OSError:
                continue
        return held

    def broken() -> int:
        raise OSError("no memory for the filter")

    async def fail(times: int, manager: Manager) -> int:
        for _ in range(times):
            with pytest.raises(OSError, match="no memory for the filter"):
                await manager.create(SandboxSpec(provider="bwrap"))
        await asyncio.sleep(1.0)  # the spares taken are made again meanwhile
        return namespaces_held()

    async def main() -> None:
        manager = Manager(Path(tempfile.mkdtemp(prefix="sl-fail-", dir="/tmp")))
        try:
            await manager.create(SandboxSpec(provider="bwrap"))
            bwrap.seccomp.memfd = broken  # type: ignore[assignment]
            after_5 = await fail(5, manager)
            after_25 = await fail(20, manager)
            # Spares come and go (at most SPARES of them); one kept per failure would add 20.
            assert after_25 <= after_5 + userns.SPARES, (after_5, after_25)
        finally:
            await manager.close()

    asyncio.run(main())


def test_a_create_that_fails_before_bwrap_starts_keeps_no_namespace() -> None:
    """A create that fails after it took the sandbox's user namespace but before bwrap
    started (here: the seccomp filter cannot be made) closes it, with the listening socket.
    Before, each such failure kept the namespace's descriptor for the process's life."""
    from fds import in_fresh_process

    in_fresh_process(failed_creates_keep_no_namespace)
