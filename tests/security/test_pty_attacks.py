"""Attacks on terminals and on the agent's process logs (issue 18), as an attacker would try.

From inside: a command on a terminal types into it (TIOCSTI), looks for the agent's side of
the terminal or its socket among its descriptors, and steals another session's terminal;
a command off any terminal looks for one (the host's). From the host's side of the channel
(a caller feeding the agent absurd requests): huge log buffers, attaching to or resizing
processes that are not its commands (the sandbox's init, the agent, a code context's worker,
pids nobody has), and absurd terminal sizes. And a process flooding output with nobody
attached must not grow the agent's memory past its bound.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from attacker import PRELUDE, succeeded

import sandlot
from sandlot.agent import commands as agent_commands
from sandlot.providers import procinfo

pytestmark = pytest.mark.timeout(180)
BWRAP_ONLY = pytest.mark.parametrize("provider", ["bwrap"], indirect=True)


def attack_on_a_terminal(sb: Any, body: str) -> dict[str, Any]:
    """Run the attacker's ``body`` (after the prelude) on a new terminal; its report."""
    seen: list[bytes] = []
    handle = sb.pty.create(
        cmd=["python3", "-c", PRELUDE + textwrap.dedent(body)], on_data=seen.append
    )
    result = handle.wait()
    text = b"".join(seen).decode("utf-8", "replace")
    for line in reversed(text.splitlines()):
        if line.startswith("REPORT "):
            return json.loads(line[len("REPORT ") :])
    raise AssertionError(f"no report (exit {result.exit_code}): {text[-2000:]}")


@pytest.mark.attack("type into its own terminal (TIOCSTI, TIOCLINUX)")
def test_type_into_the_terminal(shared_sandbox: Any) -> None:
    """On a terminal the agent gave it, the attacker pushes bytes into the terminal's input
    (TIOCSTI: whatever reads the terminal next, a shell, runs them) and tries TIOCLINUX.
    Blocked: the sandbox's filter refuses both; the positive control (TIOCGWINSZ on the same
    descriptor) works."""
    r = attack_on_a_terminal(
        shared_sandbox,
        r"""
        import fcntl, termios
        attempt("control: TIOCGWINSZ", lambda: list(struct.unpack("HHHH",
                fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))))
        attempt("TIOCSTI", lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x") and "typed")
        attempt("TIOCLINUX", lambda: fcntl.ioctl(0, 0x541C, bytes([6])) and "done")
        report(tty=os.ttyname(0))
        """,
    )
    assert r["tty"].startswith("/dev/pts/")
    worked = succeeded(r)
    assert set(worked) == {"control: TIOCGWINSZ"}, f"terminal ioctls allowed: {worked}"
    assert worked["control: TIOCGWINSZ"][1][:2] == [24, 80]


@pytest.mark.attack("reach the agent through a terminal's descriptors")
def test_terminal_holds_nothing_of_the_agent(shared_sandbox: Any) -> None:
    """A command on a terminal lists its open descriptors, looking for the terminal's master
    side (to read other keystrokes or forge the screen) or the agent's channel socket.
    Blocked: it holds only its own terminal (0, 1, 2) and what Python itself opened."""
    r = attack_on_a_terminal(
        shared_sandbox,
        r"""
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                fds[name] = os.readlink("/proc/self/fd/" + name)
            except OSError:
                pass
        report(fds=fds, tty=os.ttyname(0))
        """,
    )
    fds = r["fds"]
    assert {fds["0"], fds["1"], fds["2"]} == {r["tty"]}
    leaked = {
        fd: target
        for fd, target in fds.items()
        if "ptmx" in target or target.startswith("socket:") or target.startswith("anon_inode")
    }
    assert not leaked, f"a terminal's command holds the agent's descriptors: {leaked}"


@pytest.mark.attack("steal a terminal (TIOCSCTTY) or find the host's (/dev/tty)")
def test_steal_a_terminal(shared_sandbox: Any) -> None:
    """A command off any terminal (its own session, as every command) opens /dev/tty, which
    would be the host's terminal if the sandbox shared one, and the terminal of a running
    shell, on which it tries TIOCSCTTY with force (take it from its session: that shell's
    keystrokes and job control). Blocked: /dev/tty has nothing behind it and the steal is
    refused; the control (opening that terminal) works, and the shell carries on."""
    seen: list[bytes] = []
    victim = shared_sandbox.pty.create(cmd="tty; read x; echo victim-$x", on_data=seen.append)
    while b"\r\n" not in b"".join(seen):
        time.sleep(0.02)
    path = b"".join(seen).split(b"\r\n")[0].decode()
    assert path.startswith("/dev/pts/")
    r = shared_sandbox.commands.run(
        [
            "python3",
            "-c",
            PRELUDE
            + textwrap.dedent(
                rf"""
            import fcntl, termios
            attempt("open /dev/tty", lambda: os.open("/dev/tty", os.O_RDWR) and "opened")
            def steal(force):
                def go():
                    fd = os.open({path!r}, os.O_RDWR | os.O_NOCTTY)
                    fcntl.ioctl(fd, termios.TIOCSCTTY, force)
                    return "stolen"
                return go
            attempt("control: open the victim", lambda: os.open({path!r}, os.O_RDWR) >= 0)
            attempt("TIOCSCTTY force", steal(1))
            attempt("TIOCSCTTY", steal(0))
            with open("/proc/%d/stat" % os.getppid()) as f:
                parent_tty = int(f.read().rsplit(")", 1)[1].split()[4])
            report(parent_tty=parent_tty)
            """
            ),
        ],
        timeout=30,
    )
    report = json.loads(r.stdout.split("REPORT ", 1)[1])
    worked = succeeded(report)
    assert set(worked) == {"control: open the victim"}, f"terminal stolen: {worked}"
    victim.send_stdin("ok\r")
    assert victim.wait().exit_code == 0
    assert b"victim-ok" in b"".join(seen)


# -- the host's side: requests no SDK would send ----------------------------------------------


@pytest.fixture
def channel_of():
    """Run a coroutine on the sandbox's raw channel, on the SDK's loop."""
    from sandlot.sdk.sync import _portal

    def run(sb: Any, make) -> Any:
        return _portal.call(make(sb._inner._channel))

    return run


async def _error_code(coro) -> str:
    try:
        await coro
    except sandlot.SandlotError as exc:
        return exc.code
    return "accepted"


async def _drain(request: Any) -> dict[str, Any]:
    from sandlot.agent import protocol as p

    while True:
        kind, _, payload = await asyncio.wait_for(request.receive(), 60)
        if kind == p.DATA:
            request.consumed(len(payload))
        elif kind == p.END:
            return json.loads(payload)


@BWRAP_ONLY
@pytest.mark.attack("make the agent keep huge logs (buffer of 1 TiB, negative, not a number)")
def test_huge_buffers(sandbox: Any, channel_of: Any) -> None:
    """The caller asks for logs far past the 64 MiB a process may keep, and for nonsense.
    Blocked: each refused as an invalid argument before anything starts; 64 MiB itself is
    allowed."""

    async def go(ch: Any) -> dict[str, str]:
        codes = {}
        for buffer in (2**40, 64 * 1024 * 1024 + 1, -1, 0, "64M", 1e9, [1], True):
            request = ch.open("exec", argv=["true"], buffer=buffer)
            codes[repr(buffer)] = await _error_code(_drain(request))
        allowed = await _drain(ch.open("exec", argv=["true"], buffer=64 * 1024 * 1024))
        codes["64 MiB"] = "accepted" if allowed["exit_code"] == 0 else "failed"
        return codes

    codes = channel_of(sandbox, go)
    assert codes.pop("64 MiB") == "accepted"
    assert set(codes.values()) == {"invalid_argument"}, codes
    assert len(sandbox.commands.list()) == 1  # the refused ones never started


@BWRAP_ONLY
@pytest.mark.attack("attach to, resize or read processes that are not commands")
def test_attach_to_what_is_not_a_command(sandbox: Any, channel_of: Any) -> None:
    """The caller attaches to the sandbox's init (pid 1), the agent itself, a code context's
    worker, its own pid's neighbours and pids nobody has, and resizes them as terminals.
    Blocked: no such process for each, nothing streamed."""
    sandbox.run_code("x = 1")  # a code context: its worker is the agent's child too
    done = sandbox.commands.run("true")

    async def go(ch: Any) -> dict[str, str]:
        info = await ch.call("info")
        targets = {"init": 1, "agent": info["pid"], "next": done.pid + 1000, "huge": 2**62}
        workers = [c["pid"] for c in (await ch.call("code.list"))["contexts"] if c.get("pid")]
        assert workers, "the code context's worker was not found"
        targets["code worker"] = workers[0]
        codes = {}
        for name, pid in targets.items():
            codes["attach " + name] = await _error_code(_drain(ch.open("proc.attach", pid=pid)))
            codes["resize " + name] = await _error_code(
                ch.call("proc.resize", pid=pid, cols=80, rows=24)
            )
        return codes

    codes = channel_of(sandbox, go)
    assert set(codes.values()) == {"process_not_found"}, codes


@BWRAP_ONLY
@pytest.mark.attack("absurd terminal sizes (0, 2**63, negative, 10001 columns)")
def test_absurd_terminal_sizes(sandbox: Any, channel_of: Any) -> None:
    """The caller opens and resizes a terminal with sizes no screen has. Blocked: refused,
    and the terminal keeps its size."""
    handle = sandbox.pty.create(cmd="read x; stty size", cols=81, rows=25)
    sizes = [(0, 24), (80, 0), (2**63, 24), (-1, 24), (10001, 24), (80, 10001), ("80", 24)]

    async def go(ch: Any) -> dict[str, str]:
        codes = {}
        for cols, rows in sizes:
            codes[f"resize {cols!r}x{rows!r}"] = await _error_code(
                ch.call("proc.resize", pid=handle.pid, cols=cols, rows=rows)
            )
            codes[f"open {cols!r}x{rows!r}"] = await _error_code(
                _drain(ch.open("pty", argv=["true"], cols=cols, rows=rows))
            )
        return codes

    codes = channel_of(sandbox, go)
    assert set(codes.values()) == {"invalid_argument"}, codes
    seen: list[bytes] = []
    again = sandbox.pty.connect(handle.pid, on_data=seen.append)
    handle.send_stdin("\r")
    assert again.wait().exit_code == 0
    assert b"25 81\r\n" in b"".join(seen)


def _agent_rss(sb: Any) -> int:
    """The agent's resident memory, in bytes, seen from the host."""
    for pid in procinfo.descendants(sb.info.handle["pid"]):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        program = cmdline.split(b"\0", 1)[0]
        if b"python" in program and b"agent.__main__" in cmdline:  # not bwrap, whose args say so
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise AssertionError("the agent's process was not found")


@BWRAP_ONLY
@pytest.mark.attack("flood output with nobody attached to grow the agent's memory")
def test_detached_flood_is_bounded(make_sandbox: Any, channel_of: Any) -> None:
    """Four processes with the largest logs (64 MiB each) write as fast as they can after
    their client went away, far past what the agent keeps. Contained: they never block (each
    writes hundreds of MiB), and the agent holds at most its total bound for all logs
    (128 MiB), its memory growing by no more than that and a margin."""
    sb = make_sandbox(resources={"memory_mb": 1024})
    sb.commands.run("true")
    before = _agent_rss(sb)
    other = sandlot.Sandbox.connect(sb.id)
    flood = 4

    async def start(ch: Any) -> list[int]:
        pids = []
        for _ in range(flood):
            request = ch.open("exec", argv=["cat", "/dev/zero"], buffer=64 * 1024 * 1024)
            _kind, _, payload = await request.receive()
            pids.append(json.loads(payload)["pid"])
        return pids

    pids = channel_of(other, start)
    other.close()  # nobody is attached any more
    want = 256 * 1024 * 1024
    deadline = time.monotonic() + 120
    while True:
        procs = {p.pid: p for p in sb.commands.list() if p.pid in pids}
        if all(p.end > want for p in procs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(p.running and p.attached == 0 for p in procs.values())
    assert all(p.end > want for p in procs.values()), "a detached process was blocked"
    held = sum(p.end - p.start for p in procs.values())
    assert held <= agent_commands.TOTAL_BYTES
    grown = _agent_rss(sb) - before
    assert grown < agent_commands.TOTAL_BYTES + 64 * 1024 * 1024, f"the agent grew {grown}"
