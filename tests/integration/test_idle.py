"""Idle timeouts, embedded: real bwrap sandboxes stopped when nothing uses them, kept while a
command runs or a client calls, and stopped by their own agent when the process that made
them is gone. Short timeouts; every wait is "eventually, within a bound"."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sandlot
from sandlot.errors import SandboxNotFoundError
from sandlot.manager import Manager
from sandlot.manager.idle import agent_limit

from .helpers import pids_in_namespace, sandbox_pid_namespace, wait_until

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
BOUND = 30.0  # seconds: "eventually"

# A process that creates a detached sandbox (as a server or a session keeper would), starts
# ``argv[2]`` in it unless empty, prints its id and exits without killing it.
ABANDON = """
import asyncio, os, sys
from sandlot.manager import Manager
from sandlot.models import SandboxSpec

async def main():
    manager = Manager(detached=True)
    live = await manager.create(SandboxSpec(timeout=120, idle_timeout=float(sys.argv[1])))
    if sys.argv[2]:
        await live.channel.call("ping")
        request = live.channel.open("exec", cmd=sys.argv[2])
        await request.receive()  # started
    print(live.info.id, live.info.handle["pid"], flush=True)
    os._exit(0)  # no kill, no close: abandoned

asyncio.run(main())
"""


def abandon(idle: float, command: str = "") -> tuple[str, str]:
    """A detached sandbox whose creator has exited: its id and PID namespace."""
    done = subprocess.run(
        [sys.executable, "-c", ABANDON, str(idle), command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    sandbox_id, pid = done.stdout.split()
    return sandbox_id, sandbox_pid_namespace(int(pid))


def release(sandbox_id: str) -> None:
    async def kill() -> None:
        manager = Manager()
        try:
            await manager.kill(sandbox_id)
        except SandboxNotFoundError:
            pass
        finally:
            await manager.close()

    asyncio.run(kill())


def test_an_idle_sandbox_is_stopped() -> None:
    sb = sandlot.Sandbox.create(idle_timeout=1)
    assert sb.info.idle_timeout == 1
    assert sb.commands.run("echo hi").stdout == "hi\n"
    assert wait_until(lambda: not sb.is_running(), BOUND), "an idle sandbox outlived its timeout"
    assert sb.id not in {i.id for i in sandlot.Sandbox.list()}


def test_the_egress_proxy_it_keeps_open_is_not_use() -> None:
    sb = sandlot.Sandbox.create(idle_timeout=1, network={"allow": ["example.com"]})
    assert wait_until(lambda: not sb.is_running(), BOUND), "its proxy's listener kept it"


def test_a_running_quiet_command_keeps_it_then_its_end_starts_the_clock() -> None:
    sb = sandlot.Sandbox.create(idle_timeout=1)
    try:
        handle = sb.commands.run("sleep 4", background=True)
        time.sleep(3)  # three timeouts, with a command running all along
        assert sb.is_running()
        assert handle.wait().exit_code == 0
        assert wait_until(lambda: not sb.is_running(), BOUND)
    finally:
        sb.kill()


def test_time_paused_is_not_idleness() -> None:
    sb = sandlot.Sandbox.create(idle_timeout=1)
    try:
        sb.pause()
        time.sleep(3)  # three timeouts, frozen: its host's checks go unanswered
        assert sb.is_paused() and sb.id in {i.id for i in sandlot.Sandbox.list()}
        sb.resume()
        assert sb.commands.run("echo thawed").stdout == "thawed\n"
        assert wait_until(lambda: not sb.is_running(), BOUND)
    finally:
        sb.kill()


def test_calls_extend_it() -> None:
    sb = sandlot.Sandbox.create(idle_timeout=1)
    try:
        until = time.monotonic() + 3.5
        while time.monotonic() < until:  # a client that keeps calling, however briefly
            assert sb.files.exists("/workspace") is True
            time.sleep(0.3)
        assert sb.is_running()
        assert wait_until(lambda: not sb.is_running(), BOUND)
    finally:
        sb.kill()


def test_no_idle_timeout_means_none() -> None:
    with sandlot.Sandbox.create(idle_timeout=None) as sb:
        assert sb.info.idle_timeout is None
        time.sleep(1.5)
        assert sb.is_running()


def test_set_idle_timeout_turns_it_on_and_off() -> None:
    on = sandlot.Sandbox.create(idle_timeout=None)
    off = sandlot.Sandbox.create(idle_timeout=1)
    try:
        on.set_idle_timeout(1)
        off.set_idle_timeout(None)
        assert (on.info.idle_timeout, off.info.idle_timeout) == (1, None)
        assert wait_until(lambda: not on.is_running(), BOUND)
        time.sleep(1.5)
        assert off.is_running()
        with pytest.raises(sandlot.InvalidArgumentError, match="idle_timeout"):
            off.set_idle_timeout(0)
    finally:
        on.kill()
        off.kill()


@pytest.mark.parametrize("bad", [0, -1, "soon", float("nan")])
def test_a_bad_idle_timeout_is_refused(bad: object) -> None:
    with pytest.raises(sandlot.InvalidArgumentError, match="idle_timeout"):
        sandlot.Sandbox.create(idle_timeout=bad)  # type: ignore[arg-type]


def test_an_abandoned_sandbox_is_stopped_by_its_agent() -> None:
    """The creator exited without a kill and no process owns the sandbox: its agent's own
    limit (a little longer than the idle timeout) ends it."""
    sandbox_id, namespace = abandon(1)
    try:
        assert pids_in_namespace(namespace), "the sandbox should outlive its creator"
        assert wait_until(lambda: not pids_in_namespace(namespace), agent_limit(1) + BOUND)
    finally:
        release(sandbox_id)


def test_an_abandoned_sandbox_with_a_running_command_is_kept() -> None:
    sandbox_id, namespace = abandon(1, "sleep 60")
    try:
        time.sleep(agent_limit(1) + 3)  # past its agent's idle limit, the command running
        assert pids_in_namespace(namespace), "stopped while a command ran"
    finally:
        release(sandbox_id)
    assert wait_until(lambda: not pids_in_namespace(namespace), BOUND)


async def test_a_session_sandbox_is_checkpointed_then_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sandlot.manager.sessions import Sessions

    monkeypatch.setenv("SANDLOT_REAP_INTERVAL", "3600")  # the session reaper stays out of it
    sessions = await Sessions.local()
    try:
        s = await sandlot.AsyncSession.create()  # no session idle timeout: the sandbox's own
        sb = await s.sandbox(idle_timeout=1)
        await sb.files.write("/workspace/notes.txt", "kept across the stop")
        for _ in range(int(BOUND * 10)):
            info = await s.refresh()
            if info.sandbox_id is None and info.checkpoint is not None:
                break
            await asyncio.sleep(0.1)
        assert info.sandbox_id is None and info.checkpoint == 1
        assert not await sb.is_running()
        events = [(e.kind, e.data) for e in await s.events()]
        stopping = [d for k, d in events if k == "sandbox" and d["event"] == "stopping"]
        assert stopping and stopping[0]["why"] == "idle"
        async with s.sandbox() as again:
            assert await again.files.read("/workspace/notes.txt") == "kept across the stop"
    finally:
        await sessions.close()


async def test_the_agents_idle_operation() -> None:
    """``{"op": "idle"}``: its own checks are not use, a running command is, bad limits are
    refused."""
    async with sandlot.AsyncSandbox.create(idle_timeout=None) as sb:
        channel = sb._channel
        first = await channel.call("idle")
        assert first["busy"] == 0 and first["limit"] is None
        await asyncio.sleep(0.2)
        assert (await channel.call("idle"))["idle"] > first["idle"]
        handle = await sb.commands.run("sleep 1", background=True)
        during = await channel.call("idle")
        assert during["busy"] >= 1 and during["idle"] == 0
        await handle.wait()
        assert (await channel.call("idle", touch=True))["idle"] < 0.5
        assert (await channel.call("idle", seconds=30))["limit"] == 30
        for bad in (-1, 0, "1", True, 10**9):
            with pytest.raises(sandlot.InvalidArgumentError):
                await channel.call("idle", seconds=bad)
