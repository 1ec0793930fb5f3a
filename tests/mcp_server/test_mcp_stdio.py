"""``sandlot mcp`` over stdio, driven by the ``mcp`` package's own client as an MCP host
drives it: the tools and their descriptions, state across calls, images, background
commands, files, bad arguments, two connections apart, and nothing left after a disconnect.
One connection for the module (its default sandbox made on first use)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from mcp import Client
from mcp_driver import Driven, ok, refused, stdio_server, text, value

import sandlot

pytestmark = pytest.mark.timeout(180)

TOOLS = {
    "create_sandbox",
    "run_command",
    "read_output",
    "kill_command",
    "run_code",
    "read_file",
    "write_file",
    "list_files",
    "expose_port",
    "close_sandbox",
}


@pytest.fixture(scope="module")
def before() -> set[str]:
    """The sandboxes of this host before the module's connection made any."""
    return {info.id for info in sandlot.Sandbox.list()}


@pytest.fixture(scope="module")
def mcp(before: set[str]) -> Iterator[Driven]:
    driven = Driven(lambda: Client(stdio_server()))
    yield driven
    driven.close()


def test_tools_are_listed_with_descriptions_for_models(mcp: Driven) -> None:
    tools = {tool.name: tool for tool in mcp.tools()}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
    assert "64 KiB" in tools["run_command"].description
    assert "sandbox_id" in tools["run_code"].input_schema["properties"]
    assert tools["run_command"].input_schema["properties"]["timeout"]["maximum"] == 3600


def test_state_is_kept_between_calls_in_the_default_sandbox(mcp: Driven) -> None:
    ok(mcp.call("run_code", code="import math\nanswer = 41"))
    assert ok(mcp.call("run_code", code="answer + 1")) == "42"
    ok(mcp.call("run_command", command="echo kept > /workspace/note"))
    assert ok(mcp.call("read_file", path="/workspace/note")) == "kept\n"


def test_a_figure_comes_back_as_image_content(mcp: Driven) -> None:
    result = mcp.call(
        "run_code",
        code="import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
    )
    assert not result.is_error, text(result)
    images = [b for b in result.content if b.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG")


def test_a_cell_that_raises_is_an_error_result_with_its_traceback(mcp: Driven) -> None:
    result = mcp.call("run_code", code="def f():\n    return 1 / 0\nf()")
    assert result.is_error
    assert "ZeroDivisionError: division by zero" in text(result)
    assert "Traceback" in text(result) and "f()" in text(result)
    assert ok(mcp.call("run_code", code="answer")) == "41"  # the context lives on


def test_a_command_result_keeps_the_tail_and_says_what_was_cut(mcp: Driven) -> None:
    shown = ok(mcp.call("run_command", command="echo out; echo err >&2; exit 3"))
    assert shown.startswith("exit_code: 3")
    assert "--- stdout ---\nout" in shown and "--- stderr ---\nerr" in shown
    big = ok(mcp.call("run_command", command="head -c 100000 /dev/zero | tr '\\0' a; echo END"))
    assert big.rstrip().endswith("END")
    assert "first 34468 bytes left out" in big  # 100004 printed, 65536 kept


def test_a_background_command_is_read_later_from_an_offset(mcp: Driven) -> None:
    started = ok(
        mcp.call(
            "run_command",
            command="echo one; read line; echo two; exit 4",
            background=True,
        )
    )
    pid = int(started.split()[2])
    first = ok(mcp.call("read_output", pid=pid, offset=0))
    assert f"pid {pid}: running" in first and "one" in first
    offset = int(value(mcp.call("read_output", pid=pid, offset=0), "next_offset"))
    assert offset == 4
    # The command waits on its stdin: no new output until it is killed.
    again = ok(mcp.call("read_output", pid=pid, offset=offset, wait=0.2))
    assert "running" in again and "--- stdout" not in again
    killed = ok(mcp.call("kill_command", pid=pid, signal=15))
    assert f"sent signal 15 to pid {pid}" == killed
    ended = ok(mcp.call("read_output", pid=pid, offset=offset, wait=5))
    assert "ended, exit_code: 143" in ended
    assert ok(mcp.call("kill_command", pid=pid)) == f"pid {pid} had already ended"


def test_files_round_trip_text_and_binary(mcp: Driven) -> None:
    ok(mcp.call("write_file", path="/workspace/d/a.txt", content="héllo\n"))
    assert ok(mcp.call("read_file", path="/workspace/d/a.txt")) == "héllo\n"
    blob = bytes(range(256))
    encoded = base64.b64encode(blob).decode()
    ok(mcp.call("write_file", path="/workspace/d/b.bin", content=encoded, binary=True))
    refused(mcp.call("read_file", path="/workspace/d/b.bin"), "invalid_argument")
    assert ok(mcp.call("read_file", path="/workspace/d/b.bin", binary=True)) == encoded
    listing = ok(mcp.call("list_files", path="/workspace/d"))
    assert "file\t7\t/workspace/d/a.txt" in listing and "file\t256\t/workspace/d/b.bin" in listing


def test_bad_arguments_are_tool_errors_and_the_server_answers_after(mcp: Driven) -> None:
    refused(mcp.call("run_command", command="true", timeout=-1), "invalid_argument")
    refused(mcp.call("run_command", command="true", timeout=1e9), "invalid_argument")
    refused(mcp.call("read_file", path="relative.txt"), "invalid_argument")
    refused(mcp.call("run_code", code="1", sandbox_id="sb-doesnotexist"), "sandbox_not_found")
    refused(mcp.call("read_output", pid=99999), "process_not_found")
    refused(mcp.call("read_file", path="/workspace/missing"), "file_not_found")
    refused(mcp.call("expose_port", port=70000), "invalid_argument")
    refused(mcp.call("create_sandbox", lifetime=0), "invalid_argument")
    schema = mcp.call("run_command", command=["not", "a", "string"])
    assert schema.is_error  # the mcp package's own validation of the schema
    assert ok(mcp.call("run_code", code="answer")) == "41"


def test_a_second_sandbox_by_id_then_closed(mcp: Driven) -> None:
    made = mcp.call("create_sandbox", metadata={"who": "test"})
    sandbox_id = value(made, "sandbox_id")
    ok(mcp.call("run_code", code="answer = 'other'", sandbox_id=sandbox_id))
    assert ok(mcp.call("run_code", code="answer", sandbox_id=sandbox_id)) == "'other'"
    assert ok(mcp.call("run_code", code="answer")) == "41"  # the default is another one
    assert ok(mcp.call("close_sandbox", sandbox_id=sandbox_id)) == f"killed {sandbox_id}"
    refused(mcp.call("run_code", code="1", sandbox_id=sandbox_id), "sandbox_not_found")


def test_two_connections_have_separate_default_sandboxes(mcp: Driven) -> None:
    other = Driven(lambda: Client(stdio_server()))
    try:
        ok(other.call("run_code", code="mine = 1"))
        assert "NameError" in text(other.call("run_code", code="answer"))
        refused(other.call("read_file", path="/workspace/note"), "file_not_found")
        assert "NameError" in text(mcp.call("run_code", code="mine"))
    finally:
        other.close()


def test_nothing_outlives_the_connection(mcp: Driven, before: set[str]) -> None:
    """Last in the module: disconnect, and every sandbox the connections made is gone."""
    made = {info.id for info in sandlot.Sandbox.list()} - before
    assert made, "the connection made its default sandbox"
    mcp.close()
    left = {info.id for info in sandlot.Sandbox.list()} & made
    assert not left, f"still running after the disconnect: {left}"


def test_sigterm_ends_the_sandboxes_then_the_process() -> None:
    """An MCP host that stops its server with SIGTERM (no end of input first)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sandlot.cli", "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None

    def send(message: dict[str, object]) -> None:
        assert process.stdin is not None
        process.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())
        process.stdin.flush()

    try:
        hello = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        send({"id": 1, "method": "initialize", "params": hello})
        assert json.loads(process.stdout.readline())["id"] == 1
        send({"method": "notifications/initialized"})
        made = {"name": "create_sandbox", "arguments": {}}
        send({"id": 2, "method": "tools/call", "params": made})
        answer = json.loads(process.stdout.readline())
        sandbox_id = answer["result"]["content"][0]["text"].split()[1]
        assert sandbox_id in {info.id for info in sandlot.Sandbox.list()}
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM
        assert sandbox_id not in {info.id for info in sandlot.Sandbox.list()}
    finally:
        process.kill()
        process.wait()
