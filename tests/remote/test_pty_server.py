"""Terminals through the server: the WebSocket API driven by a plain client (websockets),
reattaching by pid, the REST routes for processes, and the remote SDK's ``sb.pty`` and
``sb.commands.connect`` over them. Real ``sandlot serve`` on loopback, real bwrap sandboxes,
real pseudo-terminals in them."""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

import sandlot

from .proxy import CuttableProxy
from .server import ServerProcess
from .terminals import dial, start
from .test_server import http, sse

pytestmark = pytest.mark.timeout(180)
SHELL = "bash --norc --noprofile -i"


@pytest.fixture(scope="module")
def box(server: ServerProcess) -> Iterator[sandlot.Sandbox]:
    sb = sandlot.Sandbox.create(timeout=900, client=sandlot.Client(url=server.url))
    yield sb
    sb.kill()


def test_a_terminal_is_a_tty_and_follows_a_resize(
    server: ServerProcess, box: sandlot.Sandbox
) -> None:
    term = start(server.url, box.id, cmd=SHELL, cols=100, rows=30)
    term.type("tty; stty size; echo MARK$((1+1))\r")
    out = term.until("MARK2").decode()
    assert re.search(r"/dev/pts/\d+", out), out
    assert "30 100" in out
    term.control(type="resize", cols=123, rows=45)
    term.type("stty size; echo MARK$((2+1))\r")
    out = term.until("MARK3").decode()
    assert "45 123" in out.split("MARK2", 1)[1]
    assert term.controls[0]["type"] == "started" and term.controls[0]["pid"] > 0
    term.type("exit 3\r")
    assert term.exit()["exit_code"] == 3


def test_a_password_is_read_from_dev_tty_without_echo(
    server: ServerProcess, box: sandlot.Sandbox
) -> None:
    program = "import getpass; p = getpass.getpass('Password: '); print('GOT', p[::-1])"
    term = start(server.url, box.id, argv=["python3", "-c", program])
    term.until("Password: ")
    term.type("hunter2\r")
    out = term.until("GOT 2retnuh").decode()
    assert "hunter2" not in out  # the terminal did not echo it
    assert term.exit()["exit_code"] == 0


def test_ctrl_c_interrupts_the_foreground_job_not_the_shell(
    server: ServerProcess, box: sandlot.Sandbox
) -> None:
    term = start(server.url, box.id, cmd=SHELL)
    term.type("python3 -c \"print('REA' + 'DY', flush=True); import time; time.sleep(300)\"\r")
    term.until("READY")
    term.type(b"\x03")
    term.type("echo EXIT=$?\r")
    term.until("EXIT=130")  # the job was interrupted (sleep would have held it 300 s)
    term.type("exit 4\r")
    assert term.exit()["exit_code"] == 4


def test_a_signal_message_and_kill(server: ServerProcess, box: sandlot.Sandbox) -> None:
    term = start(server.url, box.id, cmd="echo UP; exec sleep 300")
    term.until("UP")
    term.control(type="signal", signal=15)
    ended = term.exit()
    assert ended["signal"] == 15
    term = start(server.url, box.id, cmd="echo UP; exec sleep 300")
    term.until("UP")
    term.control(type="kill")
    assert term.exit()["signal"] == 9


def test_the_session_log_notes_a_terminal_not_its_bytes_or_env(server: ServerProcess) -> None:
    with sandlot.Sandbox.create(client=sandlot.Client(url=server.url)) as sb:
        term = start(server.url, sb.id, cmd="echo SEEN-$((3*3)); exit 6", env={"TOKEN": "s3cret"})
        term.until("SEEN-9")
        assert term.exit()["exit_code"] == 6
        pid = term.controls[0]["pid"]
        events = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false")
    noted = [data for _, kind, data in events if kind == "pty"]
    assert noted[0]["data"]["event"] == "started" and noted[0]["data"]["pid"] == pid
    assert noted[1]["data"] == {"event": "exit", "pid": pid, "exit_code": 6, "signal": None,
                                "timed_out": False}  # fmt: skip
    assert "s3cret" not in json.dumps(events) and "SEEN-9" not in json.dumps(events)


def test_start_parameters_in_the_query(server: ServerProcess, box: sandlot.Sandbox) -> None:
    term = dial(server.url, box.id, cmd="stty size; tty; echo $FOO", cols=51, rows=17,
                env="FOO=bar-baz", cwd="/tmp")  # fmt: skip
    assert term.control_of("started")["pid"] > 0
    out = term.until("bar-baz").decode()
    assert "17 51" in out and "/dev/pts/" in out
    assert term.exit()["exit_code"] == 0


def test_a_program_that_cannot_start_says_so_and_exits_127(
    server: ServerProcess, box: sandlot.Sandbox
) -> None:
    term = dial(server.url, box.id)
    term.control(type="start", argv=["/no/such/program"])
    assert term.control_of("started")["pid"] is None
    assert term.exit()["exit_code"] == 127
    assert b"/no/such/program" in term.output


def test_a_bad_start_is_refused_clearly(server: ServerProcess, box: sandlot.Sandbox) -> None:
    with pytest.raises(InvalidStatus) as refused:
        dial(server.url, box.id, cols=0)
    assert refused.value.response.status_code == 422
    assert refused.value.response.headers["X-Sandlot-Error"] == "invalid_argument"
    term = dial(server.url, box.id)
    term.control(type="start", cmd="true", rows=10**6)
    assert term.control_of("error")["code"] == "invalid_argument"
    assert term.close_code() == 1008


def test_detach_and_reattach_by_pid_gets_every_byte_once(
    server: ServerProcess, box: sandlot.Sandbox
) -> None:
    term = start(server.url, box.id, cmd="read x; seq 1 3000; echo DONE$x; exec sleep 300")
    pid = term.controls[0]["pid"]
    term.type("7\r")
    term.close()  # detached: the process reads its line and prints on, into its buffer
    listed = http("GET", f"{server.url}/v1/sandboxes/{box.id}/processes")[1]
    mine = next(p for p in listed if p["pid"] == pid)
    assert mine["kind"] == "pty" and mine["running"]
    again = dial(server.url, box.id, f"/pty/{pid}", offset=0)
    attached = again.control_of("attached")
    assert attached["gap"] == 0 and attached["running"] is True
    full = again.until("DONE7")
    lines = [line for line in full.decode().split("\r\n") if line.isdigit()]
    assert lines == ["7"] + [str(i) for i in range(1, 3001)]  # the echo of what was typed
    middle = len(full) // 2
    third = dial(server.url, box.id, f"/processes/{pid}/attach", offset=middle)
    assert third.control_of("attached")["gap"] == 0
    assert full[middle:] == third.until(full[-20:])[: len(full) - middle]
    third.close()
    again.control(type="kill")
    assert again.exit()["signal"] == 9


def test_a_detached_terminal_runs_to_its_end_and_its_tail_is_kept(
    server: ServerProcess, box: sandlot.Sandbox
) -> None:
    """Far more output than the log holds, printed while nobody is attached: the server
    reads on for the connection that went, so the program never waits on its output."""
    term = start(server.url, box.id, cmd="head -c 30000000 /dev/zero; echo; echo END")
    pid = term.controls[0]["pid"]
    term.close()
    path = f"{server.url}/v1/sandboxes/{box.id}/processes"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        mine = next(p for p in http("GET", path)[1] if p["pid"] == pid)
        if not mine["running"]:
            break
        time.sleep(0.1)
    assert not mine["running"] and mine["exit_code"] == 0
    assert mine["end"] >= 30000000 and mine["start"] > 0  # the oldest bytes went
    again = dial(server.url, box.id, f"/pty/{pid}", offset=0)
    attached = again.control_of("attached")
    assert attached["gap"] == mine["start"] and attached["running"] is False
    assert again.exit()["exit_code"] == 0
    assert again.output.endswith(b"END\r\n")
    assert len(again.output) == mine["end"] - mine["start"]


def test_attaching_to_an_unknown_pid_is_refused(
    server: ServerProcess, box: sandlot.Sandbox
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        dial(server.url, box.id, "/pty/999999")
    assert refused.value.response.status_code == 404
    assert refused.value.response.headers["X-Sandlot-Error"] == "process_not_found"


def test_resize_through_rest(server: ServerProcess, box: sandlot.Sandbox) -> None:
    term = start(server.url, box.id, cmd=SHELL)
    pid = term.controls[0]["pid"]
    path = f"{server.url}/v1/sandboxes/{box.id}/processes/{pid}/resize"
    assert http("POST", path, {"cols": 90, "rows": 20}) == (200, {"resized": True})
    assert http("POST", path, {"cols": 0, "rows": 20})[0] == 422
    term.type("stty size; echo MARK$((4+4))\r")
    assert "20 90" in term.until("MARK8").decode()
    term.control(type="kill")
    term.exit()


# -- keys and tenants -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    home = Path(tempfile.mkdtemp(prefix="slpty-", dir="/tmp"))
    process = ServerProcess(home)
    keys = {name: process.keys("create", "--name", name) for name in ("alice", "bob")}
    process.start()
    yield process, keys
    process.stop()


def test_keys_and_tenants_hold_on_the_websocket(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = keyed
    alice = sandlot.Client(url=server.url, api_key=keys["alice"])
    with sandlot.Sandbox.create(client=alice) as sb:
        for key in (None, "sl_wrong"):
            with pytest.raises(InvalidStatus) as refused:
                dial(server.url, sb.id, key=key)
            assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as refused:
            dial(server.url, sb.id, key=keys["bob"])
        assert refused.value.response.status_code == 404
        assert refused.value.response.headers["X-Sandlot-Error"] == "sandbox_not_found"
        # A browser's way: the key as a subprotocol; the server picks sandlot.pty, never it.
        term = dial(
            server.url, sb.id, subprotocols=["sandlot.pty", f"sandlot.bearer.{keys['alice']}"]
        )
        assert term.ws.subprotocol == "sandlot.pty"
        term.control(type="start", cmd="echo OK$((2*3))")
        assert b"OK6" in term.until("OK6")
        term.exit()
        assert keys["alice"] not in server.log.read_text()
        with pytest.raises(InvalidStatus):
            dial(server.url, sb.id, subprotocols=["sandlot.pty", f"sandlot.bearer.{keys['bob']}"])


# -- the remote SDK -------------------------------------------------------------------------


def test_remote_sdk_pty(server: ServerProcess, box: sandlot.Sandbox) -> None:
    seen = bytearray()
    terminal = box.pty.create(cols=100, rows=30, cmd=SHELL, on_data=seen.extend)
    terminal.send_stdin("tty; stty size; echo MARK$((5+5))\r")
    deadline = time.monotonic() + 60
    while b"MARK10" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    terminal.resize(120, 40)
    terminal.send_stdin("stty size; exit 5\r")
    result = terminal.wait()
    assert result.exit_code == 5
    out = seen.decode()
    assert "/dev/pts/" in out and "30 100" in out and "40 120" in out


def test_remote_sdk_lists_and_connects_to_a_command(
    server: ServerProcess, box: sandlot.Sandbox
) -> None:
    handle = box.commands.run("echo one; echo two >&2; read x; echo got-$x", background=True)
    assert handle.pid is not None
    assert handle.pid in [p.pid for p in box.commands.list()]
    again = box.commands.connect(handle.pid)
    again.send_stdin("three\n")
    result = again.wait()
    assert result.exit_code == 0
    assert result.stdout == "one\ngot-three\n" and result.stderr == "two\n"
    assert again.gap == 0
    assert handle.wait().stdout == "one\ngot-three\n"


def test_a_terminal_cut_mid_output_reattaches_without_loss_or_duplicates(
    server: ServerProcess,
) -> None:
    script = (
        "import sys, time\n"
        "for i in range(4000):\n"
        "    sys.stdout.write(f'{i:06d}' + 'x' * 200 + '\\n'); sys.stdout.flush()\n"
        "    if i % 100 == 0: time.sleep(0.05)\n"
    )
    with CuttableProxy(int(server.url.rsplit(":", 1)[1])) as proxy:
        client = sandlot.Client(url=proxy.url)
        with sandlot.Sandbox.create(client=client) as sb:
            seen = bytearray()
            cuts = 0

            def cutter() -> None:
                nonlocal cuts
                for _ in range(3):
                    time.sleep(0.2)
                    cuts += proxy.cut()

            thread = threading.Thread(target=cutter)
            thread.start()
            terminal = sb.pty.create(cmd=["python3", "-c", script], on_data=seen.extend)
            result = terminal.wait()
            thread.join()
    expected = "".join(f"{i:06d}" + "x" * 200 + "\r\n" for i in range(4000)).encode()
    assert cuts >= 2, "the test did not manage to cut the terminal's connection"
    assert bytes(seen) == expected
    assert result.exit_code == 0
    assert proxy.connections > 2  # it did reattach
