"""Terminals through the SDK (``sb.pty``), in real bwrap sandboxes: checks that need a real
controlling terminal (``tty``, ``stty size`` after a resize, a password read from /dev/tty,
Ctrl-C to a foreground job, ``bash -i`` job control), exit codes, and reattaching."""

from __future__ import annotations

import asyncio

import pytest

import sandlot
from sandlot.sdk.pty import AsyncPtyHandle


class Screen:
    """What a terminal has shown, and a way to wait for a marker in it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.changed = asyncio.Event()

    def __call__(self, chunk: bytes) -> None:
        assert isinstance(chunk, bytes)
        self.data += chunk
        self.changed.set()

    async def wait_for(self, marker: bytes, since: int = 0, limit: float = 20) -> int:
        """Wait until ``marker`` shows after position ``since``; the position after it."""

        async def go() -> int:
            while True:
                found = self.data.find(marker, since)
                if found >= 0:
                    return found + len(marker)
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(go(), limit)


@pytest.fixture
async def sb():
    box = await sandlot.AsyncSandbox.create()
    try:
        yield box
    finally:
        await box.kill()


async def start(sb: sandlot.AsyncSandbox, **kwargs) -> tuple[AsyncPtyHandle, Screen]:
    screen = Screen()
    handle = await sb.pty.create(on_data=screen, **kwargs)
    return handle, screen


async def test_tty_names_its_terminal_and_the_exit_code_comes_back(sb) -> None:
    handle, screen = await start(sb, cmd="tty; echo $TERM; exit 3")
    result = await handle.wait()
    lines = bytes(screen.data).split(b"\r\n")
    assert lines[0].startswith(b"/dev/pts/") and lines[1] == b"xterm-256color"
    assert result.exit_code == 3 and result.pid == handle.pid
    assert result.stdout_bytes == bytes(screen.data)
    assert handle.offset == len(screen.data) and handle.gap == 0


async def test_stty_size_follows_a_resize(sb) -> None:
    handle, screen = await start(sb, cmd="stty size; read x; stty size", cols=90, rows=20)
    at = await screen.wait_for(b"20 90\r\n")
    await handle.resize(200, 50)
    await handle.send_stdin("\r")
    await screen.wait_for(b"50 200\r\n", at)
    assert (await handle.wait()).exit_code == 0
    for cols, rows in ((0, 24), (80, 10001), (80.0, 24)):
        with pytest.raises(sandlot.InvalidArgumentError):
            await handle.resize(cols, rows)  # type: ignore[arg-type]


async def test_a_password_is_read_from_dev_tty(sb) -> None:
    handle, screen = await start(
        sb, cmd=["python3", "-c", "import getpass; print('got', getpass.getpass())"]
    )
    at = await screen.wait_for(b"Password: ")
    await handle.send_stdin("hunter2\r")
    await screen.wait_for(b"got hunter2", at)
    assert bytes(screen.data).count(b"hunter2") == 1  # not echoed as it was typed
    assert (await handle.wait()).exit_code == 0


async def test_ctrl_c_stops_the_foreground_job_and_the_shell_stays(sb) -> None:
    handle, screen = await start(sb, cmd=["bash", "--norc", "-i"])
    await handle.send_stdin("echo started-$((1+1)); sleep 1000; echo not-$((1+1))-interrupted\r")
    at = await screen.wait_for(b"started-2\r\n")  # the $((...)) shows only in output
    await handle.send_stdin("\x03")
    await handle.send_stdin("echo alive $((6*7))\r")
    await screen.wait_for(b"alive 42", at)
    assert b"not-2-interrupted" not in bytes(screen.data)
    await handle.send_stdin("exit 4\r")
    assert (await handle.wait()).exit_code == 4


async def test_bash_job_control(sb) -> None:
    handle, screen = await start(sb, cmd=["bash", "--norc", "-i"])
    await handle.send_stdin("sleep 100 &\r")
    at = await screen.wait_for(b"[1] ")
    await handle.send_stdin("jobs\r")
    at = await screen.wait_for(b"Running", at)
    await handle.send_stdin("kill %1; wait; jobs; echo done-$((1+1))\r")
    await screen.wait_for(b"done-2", at)
    assert b"no job control" not in bytes(screen.data)
    await handle.send_stdin("exit\r")
    assert (await handle.wait()).exit_code == 0


async def test_the_default_is_an_interactive_shell_and_ctrl_d_ends_it(sb) -> None:
    handle, screen = await start(sb)
    await handle.send_stdin("echo $- $((2*21))\r")
    await screen.wait_for(b" 42\r\n")
    assert b"i" in bytes(screen.data).split(b" 42\r\n")[0].rsplit(b"\n", 1)[-1]
    await handle.send_stdin("\x04")
    assert (await handle.wait()).exit_code == 0


async def test_kill_ends_the_terminal(sb) -> None:
    handle, screen = await start(sb, cmd="echo ready; sleep 1000")
    await screen.wait_for(b"ready")
    assert await handle.kill() is True
    result = await handle.wait()
    assert result.signal == 9 and result.exit_code == 137
    assert await handle.kill() is False
    with pytest.raises(sandlot.SandboxClosedError):
        await handle.send_stdin("x")


async def test_a_terminal_is_reattached_and_replayed(sb) -> None:
    handle, screen = await start(sb, cmd=["bash", "--norc", "-i"], cols=100, rows=30)
    await handle.send_stdin("echo first-$((1+1))\r")
    await screen.wait_for(b"first-2")
    listed = {p.pid: p for p in await sb.commands.list()}
    info = listed[handle.pid]
    assert info.kind == "pty" and info.running and (info.cols, info.rows) == (100, 30)

    # A second view of the same terminal, from the start: the same bytes so far.
    other = Screen()
    again = await sb.pty.connect(handle.pid, on_data=other)
    await other.wait_for(b"first-2")
    await handle.send_stdin("echo second-$((2+2))\r")
    await other.wait_for(b"second-4")
    await again.send_stdin("exit 6\r")  # keystrokes from either view
    assert (await again.wait()).exit_code == 6
    assert (await handle.wait()).exit_code == 6
    assert bytes(other.data) == bytes(screen.data)
    assert again.offset == handle.offset == len(screen.data)

    # After its end: from an offset, the rest.
    tail = Screen()
    late = await sb.pty.connect(handle.pid, offset=10, on_data=tail)
    assert (await late.wait()).exit_code == 6
    assert bytes(tail.data) == bytes(screen.data[10:])
    with pytest.raises(sandlot.ProcessNotFoundError):
        await sb.pty.connect(999999)


def test_the_sync_face() -> None:
    with sandlot.Sandbox.create() as box:
        seen: list[bytes] = []
        handle = box.pty.create(cmd="read x; stty size", on_data=seen.append)
        handle.resize(33, 11)
        handle.send_stdin("\r")
        result = handle.wait()
        assert result.exit_code == 0
        assert b"11 33\r\n" in b"".join(seen)
        replay: list[bytes] = []
        assert box.pty.connect(handle.pid, on_data=replay.append).wait().exit_code == 0
        assert b"".join(replay) == b"".join(seen)
