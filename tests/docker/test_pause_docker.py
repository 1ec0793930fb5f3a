"""Pause and resume of docker sandboxes: the engine's pause and unpause, on a real engine.

The provider is driven directly (``Manager.provider("docker").pause(handle)``); what the
container does is seen from the host (a counter file in its workspace) and through the
``docker`` CLI, never through the provider under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from integration.helpers import sandbox_folder

import sandlot
from sandlot.manager import Manager
from sandlot.providers.base import Provider

from .conftest import IMAGE
from .test_docker import containers, inspect

COUNTER = "i=0; while :; do i=$((i+1)); echo $i >> /workspace/c; sleep 0.05; done"


async def eventually(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll without blocking the event loop: the container's removal runs on it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def provider_of(sb: sandlot.AsyncSandbox) -> Provider:
    return Manager.current().provider(sb.provider)


def counter_file(sb: sandlot.AsyncSandbox) -> Path:
    return sandbox_folder(sb.id) / "workspace" / "c"


def count(sb: sandlot.AsyncSandbox) -> int:
    try:
        return len(counter_file(sb).read_text().split())
    except FileNotFoundError:
        return 0


def engine_says_paused(sb: sandlot.AsyncSandbox) -> bool:
    return bool(inspect(sb.info.handle["container"])["State"]["Paused"])


@pytest.fixture
async def box() -> AsyncIterator[sandlot.AsyncSandbox]:
    sb = await sandlot.AsyncSandbox.create(provider="docker", image=IMAGE)
    try:
        yield sb
    finally:
        await sb.kill()


async def test_pause_stops_the_container_and_resume_lets_it_go_on(
    box: sandlot.AsyncSandbox,
) -> None:
    provider, handle = provider_of(box), box.info.handle
    assert provider.can_pause(handle)
    assert "pause" in provider.info().capabilities
    counter = await box.commands.run(COUNTER, background=True)
    assert await eventually(lambda: count(box) >= 2, 10), "the counter does not run"
    assert not provider.is_paused(handle)

    await provider.pause(handle)
    assert provider.is_paused(handle) and engine_says_paused(box)
    before = counter_file(box).read_text()
    await asyncio.sleep(0.5)
    assert counter_file(box).read_text() == before, "the container ran while paused"

    await provider.resume(handle)
    assert not provider.is_paused(handle) and not engine_says_paused(box)
    stopped_at = len(before.split())
    assert await eventually(lambda: count(box) >= stopped_at + 3, 10), "no progress after resume"
    assert (await box.commands.run("echo after")).stdout == "after\n"
    assert await counter.kill()


async def test_a_command_running_across_a_pause_completes(box: sandlot.AsyncSandbox) -> None:
    provider, handle = provider_of(box), box.info.handle
    running = await box.commands.run(
        "for i in $(seq 1 20); do echo $i; sleep 0.02; done", background=True
    )
    await asyncio.sleep(0.1)
    await provider.pause(handle)
    await asyncio.sleep(0.3)
    await provider.resume(handle)
    result = await running.wait()
    assert (result.exit_code, result.stdout) == (0, "".join(f"{i}\n" for i in range(1, 21)))


async def test_pause_and_resume_are_idempotent(box: sandlot.AsyncSandbox) -> None:
    provider, handle = provider_of(box), box.info.handle
    await provider.resume(handle)  # running: the engine's "not paused" is no error
    await provider.pause(handle)
    await provider.pause(handle)  # the engine's "already paused" is no error
    assert provider.is_paused(handle)
    await provider.resume(handle)
    await provider.resume(handle)
    assert not provider.is_paused(handle)
    assert (await box.commands.run("echo ok")).stdout == "ok\n"


async def test_kill_of_a_paused_sandbox_removes_its_container() -> None:
    sb = await sandlot.AsyncSandbox.create(provider="docker", image=IMAGE)
    provider, handle = provider_of(sb), sb.info.handle
    await provider.pause(handle)
    assert engine_says_paused(sb)
    await sb.kill()
    assert not provider.is_paused(handle)
    await Manager.current().settle()
    assert await eventually(lambda: not containers(f"sandlot.sandbox={sb.id}"))
    with pytest.raises(sandlot.SandboxClosedError):
        await provider.pause(handle)
    with pytest.raises(sandlot.SandboxClosedError):
        await provider.resume(handle)


async def test_a_paused_container_removed_behind_our_back_is_gone() -> None:
    """Another manager (or an operator) removed the container: a resume says it is gone."""
    sb = await sandlot.AsyncSandbox.create(provider="docker", image=IMAGE)
    provider, handle = provider_of(sb), sb.info.handle
    try:
        await provider.pause(handle)
        other = Manager(Manager.current().home).provider("docker")
        await other.destroy(handle)
        await other.settle()
        await other.close()
        assert not containers(f"sandlot.sandbox={sb.id}")
        assert not provider.is_paused(handle)
        with pytest.raises(sandlot.SandboxClosedError):
            await provider.resume(handle)
    finally:
        await sb.kill()
