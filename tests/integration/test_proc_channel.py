"""The agent's process log and terminals at the channel level, in a real bwrap sandbox:
``proc.list``, ``proc.attach`` (replay from an offset, gaps, several readers, a command that
runs on when its connection drops), ``proc.resize`` and ``pty``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import sandlot
from sandlot.agent import protocol as p


async def drain(request: Any, limit: float = 30) -> tuple[list[dict[str, Any]], bytes, bytes, dict]:
    """Every frame of a request: events, stdout, stderr, the END message."""
    events: list[dict[str, Any]] = []
    out = {p.STDOUT: bytearray(), p.STDERR: bytearray()}

    async def go() -> dict[str, Any]:
        while True:
            kind, stream, payload = await request.receive()
            if kind == p.DATA:
                out[stream] += payload
                request.consumed(len(payload))
            elif kind == p.EVENT:
                events.append(json.loads(payload))
            elif kind == p.END:
                return json.loads(payload)

    end = await asyncio.wait_for(go(), limit)
    return events, bytes(out[p.STDOUT]), bytes(out[p.STDERR]), end


async def tagged(request: Any) -> list[tuple[int, int]]:
    """A request's output as (stream, byte) pairs, in the order it came."""
    pairs: list[tuple[int, int]] = []
    while True:
        kind, stream, payload = await asyncio.wait_for(request.receive(), 20)
        if kind == p.DATA:
            pairs += [(stream, b) for b in payload]
            request.consumed(len(payload))
        elif kind == p.END:
            return pairs


async def read_until(request: Any, marker: bytes, limit: float = 20) -> bytes:
    seen = bytearray()

    async def go() -> None:
        while marker not in seen:
            kind, _, payload = await request.receive()
            if kind == p.DATA:
                seen.extend(payload)
                request.consumed(len(payload))
            elif kind == p.END:
                raise AssertionError(f"ended before {marker!r}: {bytes(seen)!r}")

    await asyncio.wait_for(go(), limit)
    return bytes(seen)


async def listed(channel: Any, pid: int) -> dict[str, Any]:
    processes = (await channel.call("proc.list"))["processes"]
    return next(x for x in processes if x["pid"] == pid)


async def test_an_ended_command_is_listed_and_replayed_from_any_offset() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        ch = sb._channel
        events, out, err, end = await drain(
            ch.open("exec", cmd="printf 'one\\n'; printf 'two\\n' >&2; printf 'three\\n'; exit 3")
        )
        pid = events[0]["pid"]
        assert (out, err) == (b"one\nthree\n", b"two\n")
        assert end == {"exit_code": 3, "signal": None, "timed_out": False, "end": 14}

        info = await listed(ch, pid)
        assert info["kind"] == "exec" and info["running"] is False
        assert (info["exit_code"], info["start"], info["end"], info["attached"]) == (3, 0, 14, 0)
        assert info["cmd"].startswith("printf") and info["argv"] is None

        events, out, err, end = await drain(ch.open("proc.attach", pid=pid))
        assert events == [
            {
                "event": "attached",
                "pid": pid,
                "kind": "exec",
                "start": 0,
                "end": 14,
                "gap": 0,
                "running": False,
            }
        ]
        assert (out, err, end["exit_code"], end["end"]) == (b"one\nthree\n", b"two\n", 3, 14)

        # From any offset: the same bytes with the same stream tags as from 0, from there on
        # (offsets count both streams in the order the agent read them).
        whole = await tagged(ch.open("proc.attach", pid=pid))
        assert len(whole) == 14
        for offset in (1, 5, 9, 13):
            assert await tagged(ch.open("proc.attach", pid=pid, offset=offset)) == whole[offset:]
        _, out, err, end = await drain(ch.open("proc.attach", pid=pid, offset=14))
        assert (out, err, end["end"]) == (b"", b"", 14)


async def test_a_command_runs_on_when_its_connection_drops_and_is_reattached() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        other = await sandlot.AsyncSandbox.connect(sb.id)
        request = other._channel.open(
            "exec",
            cmd="for i in $(seq 1 3000); do echo line $i; done; read x; echo got $x; exit 7",
            stdin=True,
        )
        _kind, _, payload = await request.receive()
        pid = json.loads(payload)["pid"]
        await read_until(request, b"line 3\n")
        await other.close()  # the client goes away mid-command

        info = await listed(sb._channel, pid)
        while info["attached"]:  # until the agent has seen the connection go
            await asyncio.sleep(0.01)
            info = await listed(sb._channel, pid)
        assert info["running"] is True
        attach = sb._channel.open("proc.attach", pid=pid, offset=0)
        lines = b"".join(b"line %d\n" % i for i in range(1, 3001))
        assert await read_until(attach, b"line 3000\n") == lines  # every byte, once
        await attach.send_data(b"more\n")  # its stdin stayed open for the next reader
        _, out, _, end = await drain(attach)
        assert out == b"got more\n"
        assert end["exit_code"] == 7 and end["end"] == len(lines) + len(out)
        assert (await listed(sb._channel, pid))["attached"] == 0


async def test_overflow_is_reported_as_a_gap_in_bytes() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        ch = sb._channel
        events, out, _, end = await drain(
            ch.open("exec", argv=["head", "-c", "100000", "/dev/zero"], buffer=4096)
        )
        assert len(out) == 100000  # the attached reader missed nothing
        pid = events[0]["pid"]
        info = await listed(ch, pid)
        assert (info["start"], info["end"]) == (100000 - 4096, 100000)

        events, out, _, end = await drain(ch.open("proc.attach", pid=pid, offset=1000))
        assert events[0]["gap"] == 100000 - 4096 - 1000
        assert len(out) == 4096 and end["end"] == 100000


async def test_several_readers_get_the_same_bytes_and_an_attach_cancel_only_detaches() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        ch = sb._channel
        first = ch.open("exec", cmd="cat", stdin=True)
        _kind, _, payload = await first.receive()
        pid = json.loads(payload)["pid"]
        second = ch.open("proc.attach", pid=pid)
        third = ch.open("proc.attach", pid=pid)
        for r in (second, third):
            _kind, _, payload = await r.receive()
            assert json.loads(payload)["running"] is True
        assert (await listed(ch, pid))["attached"] == 3
        await first.send_data(b"from the first\n")
        await second.send_data(b"from an attached reader\n")  # DATA on an attach is stdin
        both = b"from the first\nfrom an attached reader\n"
        for r in (first, second, third):
            assert await read_until(r, b"reader\n") == both
        third.cancel()  # detaches only that reader
        await first.send_data(b"still running\n")
        assert await read_until(second, b"running\n") == b"still running\n"
        second.send_eof()  # EOF from any reader closes the command's stdin
        for r in (first, second):
            end = (await drain(r))[3]
            assert end["exit_code"] == 0 and end["end"] == len(both) + 14


async def test_attach_refuses_unknown_processes_and_bad_arguments() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        ch = sb._channel
        agent = ch.hello["pid"]
        for pid in (1, agent, 999999, -1, "1", None, 2.0):
            with pytest.raises(sandlot.SandlotError) as caught:
                await drain(ch.open("proc.attach", pid=pid))
            assert caught.value.code == "process_not_found"
        done = await drain(ch.open("exec", argv=["true"]))
        pid = done[0][0]["pid"]
        for offset in (-1, "0", 1.5, True):
            with pytest.raises(sandlot.InvalidArgumentError):
                await drain(ch.open("proc.attach", pid=pid, offset=offset))
        for buffer in (0, 4095, 64 * 1024 * 1024 + 1, 2**80, "1", 1.5, True):
            with pytest.raises(sandlot.InvalidArgumentError):
                await drain(ch.open("exec", argv=["true"], buffer=buffer))
        for timeout in (-1, "5", True, [1]):
            with pytest.raises(sandlot.InvalidArgumentError):
                await drain(ch.open("exec", argv=["true"], timeout=timeout))
        # Nothing was started by the refused requests.
        assert [x["pid"] for x in (await ch.call("proc.list"))["processes"]] == [pid]


async def test_pty_is_a_controlling_terminal_with_a_size() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        ch = sb._channel
        _, out, err, end = await drain(
            ch.open("pty", cmd="tty; stty size; echo $TERM; exit 4", cols=100, rows=30)
        )
        lines = out.decode().split("\r\n")
        assert lines[0].startswith("/dev/pts/")
        assert lines[1:3] == ["30 100", "xterm-256color"]
        assert err == b"" and end["exit_code"] == 4

        shell = ch.open("pty", argv=["sh", "-c", "read x; stty size; read y; stty size"])
        _kind, _, payload = await shell.receive()
        pid = json.loads(payload)["pid"]
        assert (await ch.call("proc.resize", pid=pid, cols=132, rows=43)) == {}
        await shell.send_data(b"\r")
        assert b"43 132" in await read_until(shell, b"132")
        info = await listed(ch, pid)
        assert (info["kind"], info["cols"], info["rows"]) == ("pty", 132, 43)
        for cols, rows in ((0, 10), (10, 10001), ("80", 24), (80, None), (2**40, 1)):
            with pytest.raises(sandlot.InvalidArgumentError):
                await ch.call("proc.resize", pid=pid, cols=cols, rows=rows)
        exec_pid = (await drain(ch.open("exec", argv=["true"])))[0][0]["pid"]
        with pytest.raises(sandlot.InvalidArgumentError):
            await ch.call("proc.resize", pid=exec_pid, cols=80, rows=24)
        await shell.send_data(b"\r")
        _, out, _, end = await drain(shell)
        assert end["exit_code"] == 0
        with pytest.raises(sandlot.SandlotError) as caught:
            await ch.call("proc.resize", pid=pid, cols=80, rows=24)
        assert caught.value.code == "process_not_found"


async def test_ended_processes_are_kept_within_their_bounds() -> None:
    async with sandlot.AsyncSandbox.create() as sb:
        ch = sb._channel
        pids = []
        for i in range(70):  # more than the 64 ended processes kept
            events, out, _, _ = await drain(ch.open("exec", argv=["echo", str(i)]))
            pids.append(events[0]["pid"])
        listed = [x["pid"] for x in (await ch.call("proc.list"))["processes"]]
        assert listed == pids[-64:]  # the oldest went first
        with pytest.raises(sandlot.ProcessNotFoundError):
            await drain(ch.open("proc.attach", pid=pids[0]))
        _, out, _, end = await drain(ch.open("proc.attach", pid=pids[-1]))
        assert out == b"69\n" and end["exit_code"] == 0

        # Ended logs hold 64 MiB together: a second 40 MiB log pushes the first out.
        big = []
        for _ in range(2):
            events, out, _, _ = await drain(
                ch.open("exec", argv=["head", "-c", "40M", "/dev/zero"], buffer=64 << 20)
            )
            assert len(out) == 40 << 20
            big.append(events[0]["pid"])
        listed = [x["pid"] for x in (await ch.call("proc.list"))["processes"]]
        assert big[1] in listed and big[0] not in listed
