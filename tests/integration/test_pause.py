"""Pause and resume in the providers, on real sandboxes: bwrap through the cgroup freezer,
process through SIGSTOP/SIGCONT. Docker's are in ``tests/docker/test_pause_docker.py``.

The provider is driven directly (``Manager.provider(name).pause(handle)``); what a paused
sandbox does is seen from the host: a counter file in its workspace, /proc and the cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import sandlot
from sandlot.manager import Manager
from sandlot.providers import cgroups
from sandlot.providers.base import Provider
from sandlot.providers.ssh import SshProvider

from .helpers import (
    cgroup_folders,
    is_zombie_or_gone,
    pids_in_namespace,
    processes_mentioning,
    sandbox_folder,
    sandbox_pid_namespace,
)

pytestmark = pytest.mark.filterwarnings("ignore:the 'process' provider:RuntimeWarning")

COUNTER = "i=0; while :; do i=$((i+1)); echo $i >> {path}; sleep 0.05; done"


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll without blocking the event loop: the clean-up after a kill runs on it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def provider_of(sb: sandlot.AsyncSandbox) -> Provider:
    return Manager.current().provider(sb.provider)


def handle_of(sb: sandlot.AsyncSandbox) -> dict:
    return sb.info.handle


def counter_file(sb: sandlot.AsyncSandbox) -> Path:
    return sandbox_folder(sb.id) / "workspace" / "c"


async def count(sb: sandlot.AsyncSandbox) -> int:
    try:
        return len(counter_file(sb).read_text().split())
    except FileNotFoundError:
        return 0


async def start_counter(sb: sandlot.AsyncSandbox, path: str) -> sandlot.AsyncCommandHandle:
    handle = await sb.commands.run(COUNTER.format(path=path), background=True)
    for _ in range(200):
        if await count(sb) >= 2:
            break
        await asyncio.sleep(0.01)
    assert await count(sb) >= 2, "the counter does not run"
    return handle


async def assert_frozen_then_runs(sb: sandlot.AsyncSandbox) -> None:
    """Paused: the counter stands still for 0.5 s. Resumed: it goes on."""
    provider, handle = provider_of(sb), handle_of(sb)
    await provider.pause(handle)
    assert provider.is_paused(handle)
    before = counter_file(sb).read_text()
    await asyncio.sleep(0.5)
    assert counter_file(sb).read_text() == before, "the sandbox ran while paused"
    await provider.resume(handle)
    assert not provider.is_paused(handle)
    stopped_at = len(before.split())
    for _ in range(200):
        if await count(sb) >= stopped_at + 3:
            break
        await asyncio.sleep(0.01)
    assert await count(sb) >= stopped_at + 3, "the counter did not go on after the resume"


@pytest.fixture
async def bwrap_box() -> AsyncIterator[sandlot.AsyncSandbox]:
    sb = await sandlot.AsyncSandbox.create(provider="bwrap")
    try:
        yield sb
    finally:
        await sb.kill()


@pytest.fixture
async def process_box() -> AsyncIterator[sandlot.AsyncSandbox]:
    sb = await sandlot.AsyncSandbox.create(provider="process")
    try:
        yield sb
    finally:
        await sb.kill()


# -- bwrap: the cgroup freezer ------------------------------------------------------------------


async def test_bwrap_sandbox_has_a_freezer_group(bwrap_box: sandlot.AsyncSandbox) -> None:
    provider, handle = provider_of(bwrap_box), handle_of(bwrap_box)
    assert provider.can_pause(handle)
    freezer = cgroups.freezer_folder([Path(g) for g in handle["cgroups"]])
    assert freezer is not None and freezer.is_dir()
    # Every process of the sandbox is in it (bwrap, the namespace's init, the agent).
    assert handle["pid"] in cgroups.procs([freezer])
    assert len(cgroups.procs([freezer])) >= 3
    assert "pause" in provider.info().capabilities


async def test_bwrap_pause_stops_the_sandbox_and_resume_lets_it_go_on(
    bwrap_box: sandlot.AsyncSandbox,
) -> None:
    counter = await start_counter(bwrap_box, "/workspace/c")
    assert not provider_of(bwrap_box).is_paused(handle_of(bwrap_box))
    await assert_frozen_then_runs(bwrap_box)
    # The agent answers again: a new command runs, and the old one can still be killed.
    result = await bwrap_box.commands.run("echo after")
    assert result.stdout == "after\n"
    assert await counter.kill()


async def test_bwrap_command_running_across_a_pause_completes_with_all_its_output(
    bwrap_box: sandlot.AsyncSandbox,
) -> None:
    provider, handle = provider_of(bwrap_box), handle_of(bwrap_box)
    running = await bwrap_box.commands.run(
        "for i in $(seq 1 20); do echo $i; sleep 0.02; done", background=True
    )
    await asyncio.sleep(0.1)
    await provider.pause(handle)
    await asyncio.sleep(0.3)
    await provider.resume(handle)
    result = await running.wait()
    assert result.exit_code == 0
    assert result.stdout == "".join(f"{i}\n" for i in range(1, 21))


async def test_bwrap_pause_and_resume_are_idempotent(bwrap_box: sandlot.AsyncSandbox) -> None:
    provider, handle = provider_of(bwrap_box), handle_of(bwrap_box)
    await provider.resume(handle)  # not paused: nothing to do
    await provider.pause(handle)
    await provider.pause(handle)
    assert provider.is_paused(handle)
    await provider.resume(handle)
    await provider.resume(handle)
    assert not provider.is_paused(handle)
    assert (await bwrap_box.commands.run("echo ok")).stdout == "ok\n"


async def test_bwrap_kill_of_a_paused_sandbox_leaves_nothing() -> None:
    sb = await sandlot.AsyncSandbox.create(provider="bwrap")
    provider, handle = provider_of(sb), handle_of(sb)
    await start_counter(sb, "/workspace/c")
    namespace = sandbox_pid_namespace(handle["pid"])
    await provider.pause(handle)
    assert cgroup_folders(sb.id)
    await sb.kill()
    assert await eventually(lambda: is_zombie_or_gone(handle["pid"]))
    assert await eventually(lambda: not pids_in_namespace(namespace)), "processes survived"
    assert await eventually(lambda: not cgroup_folders(sb.id)), cgroup_folders(sb.id)
    assert not provider.is_paused(handle)


async def test_bwrap_orphaned_paused_sandbox_is_collected() -> None:
    """A paused sandbox whose groups have no record (its manager crashed) is thawed and
    killed by gc's orphan clean-up: a frozen v1 process could not die otherwise."""
    sb = await sandlot.AsyncSandbox.create(provider="bwrap")
    provider, handle = provider_of(sb), handle_of(sb)
    namespace = sandbox_pid_namespace(handle["pid"])
    await provider.pause(handle)
    await provider.cleanup_orphan(sb.id)
    assert await eventually(lambda: not pids_in_namespace(namespace)), "processes survived"
    assert not cgroup_folders(sb.id)
    await sb.kill()


async def test_bwrap_without_a_freezer_cannot_pause(bwrap_box: sandlot.AsyncSandbox) -> None:
    """A sandbox made where sandlot had no cgroups: no freezer, and a clear refusal."""
    provider = provider_of(bwrap_box)
    handle = {**handle_of(bwrap_box), "cgroups": []}
    assert not provider.can_pause(handle)
    assert not provider.is_paused(handle)
    with pytest.raises(sandlot.InvalidArgumentError, match="bwrap provider cannot pause") as err:
        await provider.pause(handle)
    assert "no cgroup freezer" in str(err.value)
    assert err.value.code == "invalid_argument"
    with pytest.raises(sandlot.InvalidArgumentError, match="bwrap"):
        await provider.resume(handle)


async def test_pause_of_a_dead_sandbox_says_it_is_gone() -> None:
    sb = await sandlot.AsyncSandbox.create(provider="bwrap")
    provider, handle = provider_of(sb), handle_of(sb)
    await sb.kill()
    await Manager.current().settle()
    with pytest.raises(sandlot.SandboxClosedError):
        await provider.pause(handle)


# -- process: SIGSTOP and SIGCONT ---------------------------------------------------------------


async def test_process_pause_stops_the_commands_and_resume_lets_them_go_on(
    process_box: sandlot.AsyncSandbox,
) -> None:
    provider, handle = provider_of(process_box), handle_of(process_box)
    assert provider.can_pause(handle)
    await start_counter(process_box, str(counter_file(process_box)))
    await assert_frozen_then_runs(process_box)
    assert (await process_box.commands.run("echo after")).stdout == "after\n"


async def test_process_command_running_across_a_pause_completes(
    process_box: sandlot.AsyncSandbox,
) -> None:
    provider, handle = provider_of(process_box), handle_of(process_box)
    running = await process_box.commands.run(
        "for i in $(seq 1 20); do echo $i; sleep 0.02; done", background=True
    )
    await asyncio.sleep(0.1)
    await provider.pause(handle)
    assert provider.is_paused(handle)
    await asyncio.sleep(0.3)
    await provider.resume(handle)
    result = await running.wait()
    assert (result.exit_code, result.stdout) == (0, "".join(f"{i}\n" for i in range(1, 21)))


async def test_process_kill_of_a_paused_sandbox_leaves_nothing(
    process_box: sandlot.AsyncSandbox,
) -> None:
    provider, handle = provider_of(process_box), handle_of(process_box)
    marker = f"pause-{uuid.uuid4().hex}"
    await process_box.commands.run(
        f"sh -c 'sleep 600; : {marker}' & sh -c 'sleep 600; : {marker}' & wait", background=True
    )
    assert await eventually(lambda: len(processes_mentioning(marker)) >= 2)
    await provider.pause(handle)
    assert all(_state(pid) == "T" for pid, _ in processes_mentioning(marker))
    await process_box.kill()
    assert await eventually(lambda: is_zombie_or_gone(handle["pid"]))
    assert await eventually(lambda: not processes_mentioning(marker)), processes_mentioning(marker)


async def test_process_pause_reaches_a_new_session_and_kill_does_not_leave_it_stopped(
    process_box: sandlot.AsyncSandbox,
) -> None:
    """A command's child in a session of its own is paused too. A kill, as ever with this
    unisolated provider, does not reach it (it left the command's group); it must not be
    left stopped for good either."""
    provider, handle = provider_of(process_box), handle_of(process_box)
    pid_file = sandbox_folder(process_box.id) / "workspace" / "escaped"
    await process_box.commands.run(
        f"setsid sh -c 'echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 600'"
        " & wait",
        background=True,
    )
    assert await eventually(pid_file.exists)
    escaped = int(pid_file.read_text())
    try:
        await provider.pause(handle)
        assert _state(escaped) == "T"
        await process_box.kill()
        assert await eventually(lambda: is_zombie_or_gone(handle["pid"]))
        assert await eventually(lambda: _state(escaped) != "T"), "left stopped"
        assert _state(escaped) in "SR"  # the kill did not reach it: it runs on, as before
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(escaped, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return "X"
    return stat[stat.rfind(b")") + 2 :][:1].decode()


# -- providers that cannot ----------------------------------------------------------------------


async def test_ssh_refuses_to_pause_clearly(tmp_path: Path) -> None:
    provider = SshProvider(tmp_path)
    handle = {"host": "example.invalid"}
    assert not provider.can_pause(handle)
    assert not provider.is_paused(handle)
    for call in (provider.pause, provider.resume):
        with pytest.raises(sandlot.InvalidArgumentError, match="the ssh provider cannot pause"):
            await call(handle)
