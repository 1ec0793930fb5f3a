"""The channel against a real agent in a real bwrap sandbox: flow control, multiplexing,
and what happens when the agent dies."""

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

import sandlot
from sandlot.agent import protocol as p


def _buffered(request) -> int:
    return sum(len(payload) for kind, _, payload in request._frames if kind == p.DATA)


async def test_a_reader_that_stops_stops_the_writer():
    async with sandlot.AsyncSandbox.create() as sb:
        channel = sb._channel
        request = channel.open("exec", argv=["head", "-c", "200M", "/dev/zero"], timeout=60)
        await asyncio.sleep(1.0)  # the agent fills the window, then must stop reading
        held = _buffered(request)
        assert 0 < held <= p.WINDOW + p.MAX_DATA
        await asyncio.sleep(0.5)
        assert _buffered(request) == held, "the agent kept sending without credit"

        total = 0
        while True:
            kind, _, payload = await request.receive()
            if kind == p.DATA:
                total += len(payload)
                request.consumed(len(payload))
            elif kind == p.END:
                break
        assert total == 200 * 1024 * 1024


async def test_a_slow_request_does_not_block_others():
    async with sandlot.AsyncSandbox.create() as sb:
        slow = asyncio.ensure_future(sb.commands.run("sleep 2"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        for _ in range(5):
            assert (await sb.commands.run(["true"])).exit_code == 0
            assert await sb.files.exists("/workspace")
        assert time.monotonic() - started < 1.5
        assert not slow.done()
        assert (await slow).exit_code == 0


async def test_agent_death_fails_open_requests_clearly():
    sb = await sandlot.AsyncSandbox.create()
    try:
        handle = await sb.commands.run("sleep 30", background=True)
        agent_pid = sb._channel.hello["pid"]  # pid inside the sandbox's namespace
        assert agent_pid > 0
        # Kill the agent from the host: it is the bwrap tree's deepest python3.
        from sandlot.providers import procinfo

        tree = procinfo.descendants(sb.info.handle["pid"])
        agent = [pid for pid in tree if b"python3" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.kill(agent[0], signal.SIGKILL)
        with pytest.raises(sandlot.SandboxClosedError):
            await asyncio.wait_for(handle.wait(), 10)
        with pytest.raises(sandlot.SandboxClosedError):
            await sb.commands.run("true")
    finally:
        await sb.kill()


async def test_a_refused_upload_larger_than_the_window_fails_instead_of_hanging():
    async with sandlot.AsyncSandbox.create() as sb:
        big = b"x" * (3 * p.WINDOW)
        with pytest.raises(sandlot.PermissionDeniedError):
            await asyncio.wait_for(sb.files.write("/usr/big.bin", big), 20)
        with pytest.raises(sandlot.IsADirectoryInSandboxError):
            await asyncio.wait_for(sb.files.write("/workspace", big), 20)
        await sb.files.write("/workspace/ok.bin", big)
        assert await sb.files.read("/workspace/ok.bin", "bytes") == big


async def test_stdin_to_a_command_that_exited_does_not_hang():
    async with sandlot.AsyncSandbox.create() as sb:
        result = await asyncio.wait_for(sb.commands.run(["true"], stdin=b"y" * (3 * p.WINDOW)), 20)
        assert result.exit_code == 0
        handle = await sb.commands.run(["head", "-c", "10"], background=True)
        await asyncio.wait_for(handle.send_stdin(b"z" * (3 * p.WINDOW)), 20)
        assert (await handle.wait()).stdout == "z" * 10
