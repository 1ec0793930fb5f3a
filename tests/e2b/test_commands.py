"""``sandbox.commands`` of the official ``e2b`` SDK, unmodified, against a real ``sandlot serve``:
foreground and background commands, exit codes, callbacks, stdin, kill, list, reattach, a
timeout, a client that goes away, a large output, and the async SDK."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import time
import urllib.request
from typing import Any

import pytest
from e2b import AsyncSandbox, CommandExitException, TimeoutException
from remote.server import ServerProcess

pytestmark = pytest.mark.timeout(180)


def running(sbx: Any) -> set[int]:
    return {p.pid for p in sbx.commands.list()}


def until(predicate: Any, what: str) -> None:
    """Wait for a state the server reaches on its own (bounded only against a hang)."""
    for _ in range(600):
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def test_foreground_output_and_exit_code(sbx: Any) -> None:
    result = sbx.commands.run("echo hi; echo oops >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "oops\n", 0)
    assert sbx.is_running()


def test_nonzero_exit_raises(sbx: Any) -> None:
    with pytest.raises(CommandExitException) as caught:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    assert caught.value.exit_code == 3
    assert (caught.value.stdout, caught.value.stderr) == ("out\n", "err\n")


def test_callbacks_envs_and_cwd(sbx: Any) -> None:
    out: list[str] = []
    err: list[str] = []
    result = sbx.commands.run(
        'echo "$GREETING from $(pwd)"; echo warn >&2',
        envs={"GREETING": "hello"},
        cwd="/tmp",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == result.stdout == "hello from /tmp\n"
    assert "".join(err) == "warn\n"


def test_background_wait_and_list(sbx: Any) -> None:
    handle = sbx.commands.run("read line; echo got $line", background=True, stdin=True)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert handle.pid in listed
    info = listed[handle.pid]
    assert (info.cmd, info.args) == ("/bin/bash", ["-l", "-c", "read line; echo got $line"])
    sbx.commands.send_stdin(handle.pid, "x\n")
    assert handle.wait().stdout == "got x\n"
    until(lambda: handle.pid not in running(sbx), "the ended command leaves the list")


def test_close_stdin_ends_input(sbx: Any) -> None:
    handle = sbx.commands.run("cat; echo done", background=True, stdin=True)
    handle.send_stdin("a\nb\n")
    handle.close_stdin()
    assert handle.wait().stdout == "a\nb\ndone\n"


def test_stream_input(sbx: Any) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(handle.pid, iter(["one\n", b"two\n", "three\n"]))
    sbx.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "one\ntwo\nthree\n"


def test_kill_and_kill_by_pid(sbx: Any) -> None:
    handle = sbx.commands.run("sleep 100", background=True)
    assert handle.kill() is True
    with pytest.raises(CommandExitException) as caught:
        handle.wait()
    assert caught.value.exit_code == -1
    assert sbx.commands.kill(handle.pid) is False  # ended: not found
    other = sbx.commands.run("sleep 100", background=True)
    assert sbx.commands.kill(other.pid) is True
    with pytest.raises(CommandExitException):
        other.wait()


def test_connect_reattaches(sbx: Any) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    again = sbx.commands.connect(handle.pid)
    assert again.pid == handle.pid
    sbx.commands.send_stdin(handle.pid, "ping\n")
    sbx.commands.close_stdin(handle.pid)
    assert again.wait().stdout == "ping\n"
    assert handle.wait().stdout == "ping\n"


def test_disconnect_leaves_the_process_running(sbx: Any) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True, timeout=0)
    handle.disconnect()
    assert handle.pid in running(sbx)
    again = sbx.commands.connect(handle.pid)
    sbx.commands.send_stdin(handle.pid, "still here\n")
    sbx.commands.close_stdin(handle.pid)
    assert again.wait().stdout == "still here\n"


def test_timeout_raises_and_kills(sbx: Any) -> None:
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 60 && echo late > /tmp/late", timeout=1)
    listed = [p for p in sbx.commands.list() if "sleep 60" in " ".join(p.args)]
    until(lambda: not [p for p in sbx.commands.list() if "sleep 60" in " ".join(p.args)],
          f"the timed-out command is killed ({listed})")  # fmt: skip


def test_a_timed_out_stream_ends_as_its_deadline(sbx: Any) -> None:
    """However the kill and the client's own deadline race, the stream says deadline (what
    envd's killed context says), never a plain exit the SDK would not call a timeout."""
    body = json.dumps({"process": {"cmd": "/bin/sleep", "args": ["30"]}}).encode()
    request = urllib.request.Request(
        sbx.connection_config.get_sandbox_url(sbx.sandbox_id, None) + "/process.Process/Start",
        struct.pack(">BI", 0, len(body)) + body,
        {**sbx.connection_config.sandbox_headers, "Content-Type": "application/connect+json",
         "Connect-Timeout-Ms": "300"},
    )  # fmt: skip
    with urllib.request.urlopen(request) as answer:
        raw = answer.read()
    envelopes, at = [], 0
    while at < len(raw):
        flags, length = struct.unpack_from(">BI", raw, at)
        envelopes.append((flags, json.loads(raw[at + 5 : at + 5 + length])))
        at += 5 + length
    assert "start" in envelopes[0][1]["event"]
    assert envelopes[-1][0] == 2 and envelopes[-1][1]["error"]["code"] == "deadline_exceeded"


def test_large_output_whole_and_in_order(sbx: Any) -> None:
    # ~6.9 MiB of numbered lines on stdout, some stderr between
    result = sbx.commands.run("seq 1 1000000; echo tail >&2", timeout=120)
    expected = "".join(f"{i}\n" for i in range(1, 1_000_001))
    assert len(result.stdout) == len(expected)
    assert hashlib.sha256(result.stdout.encode()).digest() == (
        hashlib.sha256(expected.encode()).digest()
    )
    assert result.stderr == "tail\n"


def test_the_transcript_records_e2b_commands(e2b_server: ServerProcess, sbx: Any) -> None:
    sbx.commands.run("echo recorded-$((6*7))")
    key = e2b_server.api_key  # type: ignore[attr-defined]
    request = urllib.request.Request(
        f"{e2b_server.url}/v1/sandboxes/{sbx.sandbox_id}/events?follow=false",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request) as answer:
        text = answer.read().decode()
    assert "recorded-$((6*7))" in text  # the started event's argv
    assert "recorded-42" in text  # its output


def test_async_sdk() -> None:
    async def flow() -> None:
        sandbox = await AsyncSandbox.create()
        try:
            result = await sandbox.commands.run("echo async")
            assert result.stdout == "async\n"
            seen: list[str] = []
            handle = await sandbox.commands.run(
                "cat", background=True, stdin=True, on_stdout=seen.append
            )
            await sandbox.commands.send_stdin(handle.pid, "one\n")
            await sandbox.commands.close_stdin(handle.pid)
            done = await handle.wait()
            assert done.stdout == "".join(seen) == "one\n"
            with pytest.raises(CommandExitException):
                await sandbox.commands.run("exit 5")
        finally:
            await sandbox.kill()

    asyncio.run(flow())
