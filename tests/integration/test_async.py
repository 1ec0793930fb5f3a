"""The async face: the same basics through ``AsyncSandbox``, and real concurrency."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

import sandlot


async def test_quickstart_async() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        assert sb.isolated is True
        r = await sb.commands.run("echo hi; echo oops >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 3)

        seen: list[str] = []
        r = await sb.commands.run(
            "for i in 1 2 3; do echo $i; sleep 0.1; done", on_stdout=seen.append
        )
        assert "".join(seen) == "1\n2\n3\n" == r.stdout

        h = await sb.commands.run("sleep 600", background=True)
        assert isinstance(h.pid, int)
        assert await h.kill() is True
        r = await h.wait()
        assert (r.signal, r.exit_code) == (signal.SIGKILL, 137)

        r = await sb.commands.run(
            ["python3", "-c", "import sys; print(sys.stdin.read()[::-1])"], stdin="abc"
        )
        assert r.stdout == "cba\n"

        await sb.files.write("/workspace/a.txt", "hello")
        assert await sb.files.read("/workspace/a.txt") == "hello"
        assert [e.name for e in await sb.files.list("/workspace")] == ["a.txt"]
        assert (await sb.files.stat("/workspace/a.txt")).size == 5
        assert await sb.files.exists("/workspace/a.txt") is True
        assert await sb.files.make_dir("/workspace/d") is True
        await sb.files.rename("/workspace/a.txt", "/workspace/d/b.txt")
        assert await sb.files.read("/workspace/d/b.txt", format="bytes") == b"hello"
        await sb.files.remove("/workspace/d")
        assert await sb.files.exists("/workspace/d") is False
    assert await sb.is_running() is False


async def test_create_can_be_awaited() -> None:
    sb = await sandlot.AsyncSandbox.create(metadata={"face": "async"})
    try:
        assert sb.id in {i.id for i in await sandlot.AsyncSandbox.list({"face": "async"})}
        assert (await sb.commands.run("echo $((1 + 1))")).stdout == "2\n"
    finally:
        assert await sb.kill() is True
    assert await sb.kill() is False


async def test_async_callbacks_may_be_coroutines() -> None:
    got: list[str] = []

    async def on_stdout(text: str) -> None:
        await asyncio.sleep(0)
        got.append(text)

    async with sandlot.AsyncSandbox.create() as sb:
        r = await sb.commands.run("echo a; sleep 0.1; echo b", on_stdout=on_stdout)
        assert "".join(got) == r.stdout == "a\nb\n"


async def test_async_timeout_and_errors() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        with pytest.raises(sandlot.CommandTimeoutError) as caught:
            await sb.commands.run("echo partial; sleep 30", timeout=0.5)
        assert caught.value.stdout == "partial\n"
        with pytest.raises(sandlot.InvalidArgumentError):
            await sb.commands.run("")
        with pytest.raises(sandlot.FileNotFoundInSandboxError):
            await sb.files.read("/workspace/missing")
        with pytest.raises(sandlot.PermissionDeniedError):
            await sb.files.write("/usr/x", "x")
        assert (await sb.commands.run("echo ok")).stdout == "ok\n"


async def test_async_connect_and_set_timeout() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        other = await sandlot.AsyncSandbox.connect(sb.id)
        await other.files.write("/workspace/x", "shared")
        assert await sb.files.read("/workspace/x") == "shared"
        await other.close()
        await sb.set_timeout(0.5)
        deadline = time.monotonic() + 10
        while await sb.is_running() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await sb.is_running() is False
        with pytest.raises(sandlot.SandboxClosedError):
            await sb.commands.run("echo too late")


@pytest.mark.timeout(60)
async def test_thirty_concurrent_commands_in_one_sandbox() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        started = time.monotonic()
        results = await asyncio.gather(
            *(sb.commands.run(f"sleep 1; echo {i}") for i in range(30)),
            *(sb.files.write(f"/workspace/f{i}", str(i)) for i in range(10)),
        )
        elapsed = time.monotonic() - started
        outputs = [r.stdout for r in results[:30]]
        assert outputs == [f"{i}\n" for i in range(30)]
        # Run one after the other, that would take 30 s: nothing waits behind anything else.
        assert elapsed < 6, f"30 concurrent one-second commands took {elapsed:.1f} s"
        names = [e.name for e in await sb.files.list("/workspace")]
        assert sorted(names) == sorted(f"f{i}" for i in range(10))


@pytest.mark.timeout(60)
async def test_a_slow_command_does_not_block_others() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        # The slow command runs until the test lets it end, after the fast calls: had they
        # waited behind it, they would never have ended (no clock: CI saw 10 remote calls
        # under load outlast an 8 s sleep).
        slow = asyncio.ensure_future(
            sb.commands.run("until [ -e /workspace/go ]; do sleep 0.05; done; echo slow")
        )
        await asyncio.sleep(0.2)
        for _ in range(10):
            assert (await sb.commands.run("echo fast")).stdout == "fast\n"
        await sb.files.write("/workspace/x", "x" * 100_000)
        assert not slow.done()
        await sb.files.write("/workspace/go", "")
        assert (await slow).stdout == "slow\n"


async def test_cancelling_a_foreground_command_kills_it() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        task = asyncio.ensure_future(sb.commands.run("sleep 4999"))
        await asyncio.sleep(0.5)
        assert "sleep 4999" in (await sb.commands.run("ps -eo args")).stdout
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if "sleep 4999" not in (await sb.commands.run("ps -eo args")).stdout:
                break
            await asyncio.sleep(0.05)
        assert "sleep 4999" not in (await sb.commands.run("ps -eo args")).stdout
