"""Processes that outlive their client, in real bwrap sandboxes: ``sb.commands.list()`` and
``sb.commands.connect(pid)`` from a new process after the client that started a command was
SIGKILLed mid-command (every byte once), replay from an offset, overflow reported as a gap in
bytes, and an ended process's output and exit code after its end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

import sandlot
from sandlot.sdk.commands import AsyncCommandHandle

PART_ONE = "".join(f"line {i}\n" for i in range(1, 2001))
PART_TWO = "".join(f"line {i}\n" for i in range(2001, 4001))
COMMAND = (
    "for i in $(seq 1 2000); do echo line $i; done; "
    "while [ ! -e /workspace/go ]; do sleep 0.02; done; "
    "for i in $(seq 2001 4000); do echo line $i; done; echo oops >&2; exit 3"
)

# The client that starts the command, reports how far it got, and is then killed.
CLIENT = """
import json, sys, threading, sandlot
sb = sandlot.Sandbox.connect(sys.argv[1])
seen = threading.Event()
handle = sb.commands.run(
    sys.argv[2], background=True,
    on_stdout=lambda text: "line 2000\\n" in text and seen.set(),
)
seen.wait(60)
while not handle.stdout.endswith("line 2000\\n"):  # the callback may run ahead of the tail
    seen.wait(0.01)
print(json.dumps({"pid": handle.pid, "offset": handle.offset, "stdout": handle.stdout}),
      flush=True)
threading.Event().wait(600)
"""

# A new process: lists, reattaches from an offset, lets the command go on, waits for its end.
REATTACH = """
import json, sys, sandlot
sb = sandlot.Sandbox.connect(sys.argv[1])
pid, offset = int(sys.argv[2]), int(sys.argv[3])
info = {p.pid: p for p in sb.commands.list()}[pid]
handle = sb.commands.connect(pid, offset=offset)
sb.files.write("/workspace/go", "")
result = handle.wait()
print(json.dumps({
    "running": info.running, "kind": info.kind, "cmd": info.cmd,
    "stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code,
    "gap": handle.gap, "offset": handle.offset,
}))
sb.close()
"""


def python(script: str, *args: str, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        **kwargs,
    )


@pytest.fixture
def sb():
    with sandlot.Sandbox.create() as box:
        yield box


def test_a_killed_client_loses_nothing_a_new_process_reattaches(sb: sandlot.Sandbox) -> None:
    client = python(CLIENT, sb.id, COMMAND)
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        assert line, client.stderr.read() if client.stderr else ""
        before = json.loads(line)
    finally:
        client.send_signal(signal.SIGKILL)  # mid-command: it waits for /workspace/go
        client.wait(10)
    assert before["stdout"] == PART_ONE and before["offset"] == len(PART_ONE)

    after = python(REATTACH, sb.id, str(before["pid"]), str(before["offset"]))
    out, err = after.communicate(timeout=60)
    assert after.returncode == 0, err
    seen = json.loads(out)
    assert seen["running"] is True and seen["kind"] == "exec" and seen["cmd"] == COMMAND
    # Every byte exactly once: what the dead client had, then the rest.
    assert before["stdout"] + seen["stdout"] == PART_ONE + PART_TWO
    assert (seen["stderr"], seen["exit_code"], seen["gap"]) == ("oops\n", 3, 0)
    assert seen["offset"] == len(PART_ONE + PART_TWO) + len("oops\n")

    # The ended process stays listed, with its exit status; its whole log replays.
    info = {p.pid: p for p in sb.commands.list()}[before["pid"]]
    assert (info.running, info.exit_code, info.signal, info.attached) == (False, 3, None, 0)
    assert (info.start, info.end) == (0, seen["offset"])
    replay = sb.commands.connect(before["pid"]).wait()
    assert (replay.stdout, replay.stderr, replay.exit_code) == (PART_ONE + PART_TWO, "oops\n", 3)


async def test_replay_from_an_offset_after_the_end() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        done = await sb.commands.run("seq 1 1000; exit 5")
        text = "".join(f"{i}\n" for i in range(1, 1001))
        assert done.stdout == text and done.pid is not None
        for offset in (0, 1, 2000, len(text) - 1, len(text)):
            seen: list[str] = []
            handle = await sb.commands.connect(done.pid, offset=offset, on_stdout=seen.append)
            assert isinstance(handle, AsyncCommandHandle) and handle.pid == done.pid
            result = await handle.wait()
            assert result.stdout == "".join(seen) == text[offset:]
            assert (result.exit_code, handle.gap, handle.offset) == (5, 0, len(text))


async def test_an_overflow_is_reported_as_a_gap_in_bytes() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        size = 3 * 1024 * 1024
        handle = await sb.commands.run(f"head -c {size} /dev/zero | tr '\\0' x", background=True)
        result = await handle.wait()
        assert len(result.stdout) == size  # its own reader was attached: nothing lost
        info = {p.pid: p for p in await sb.commands.list()}[handle.pid]
        kept = 2 * 1024 * 1024  # the default log
        assert (info.start, info.end) == (size - kept, size)

        late = await sb.commands.connect(handle.pid, offset=100)
        assert late.gap == size - kept - 100
        assert len((await late.wait()).stdout) == kept and late.offset == size


async def test_a_background_command_is_reattached_while_it_runs() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        first = await sb.commands.run("read x; echo got $x; sleep 1000", background=True)
        second = await sb.commands.connect(first.pid)
        await second.send_stdin("hello\n")  # its stdin, from the second reader
        while not (first.stdout and second.stdout):  # until both have the answer
            await asyncio.sleep(0.01)
        listed = {p.pid: p for p in await sb.commands.list()}[first.pid]
        assert listed.running and listed.attached == 2 and listed.exit_code is None
        assert await second.kill() is True
        for handle in (first, second):
            result = await handle.wait()
            assert result.stdout == "got hello\n" and result.signal == 9


async def test_bad_pids_and_offsets_are_refused() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        for pid in (0, -1, "1", 1.0, True, None):
            with pytest.raises(sandlot.InvalidArgumentError):
                await sb.commands.connect(pid)  # type: ignore[arg-type]
        for pid in (1, 999999):  # the sandbox's init, a pid nobody has
            with pytest.raises(sandlot.ProcessNotFoundError):
                await sb.commands.connect(pid)
        done = await sb.commands.run("true")
        for offset in (-1, "0", 0.5, None):
            with pytest.raises(sandlot.InvalidArgumentError):
                await sb.commands.connect(done.pid, offset=offset)  # type: ignore[arg-type]
