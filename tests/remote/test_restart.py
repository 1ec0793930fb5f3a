"""SIGKILL the server (or stop it) while commands stream, start it again on the same state
folder: it adopts the sandboxes, re-attaches to every running command through its agent
(``proc.attach`` from the byte offset the log had recorded) and carries each execution's
record on, so the clients' streams resume (Last-Event-ID) and get the whole output exactly
once and the real exit codes, and the transcript is gapless and in order. Only a command
whose sandbox died meanwhile ends lost; output the agent no longer held is one ``gap`` event."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sandlot
from sandlot.manager import Manager

from .server import ServerProcess
from .test_server import http, sse

# 30 numbered lines over about 3 s, three of them on stderr too, then exit 7.
SCRIPT = (
    "for i in $(seq 1 30); do echo line $i; if [ $((i % 10)) = 0 ]; then echo err $i >&2; fi;"
    " sleep 0.1; done; exit 7"
)
STDOUT = "".join(f"line {i}\n" for i in range(1, 31))
STDERR = "err 10\nerr 20\nerr 30\n"


def _in_thread(results: dict[str, Any], name: str, call: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = call()
        except BaseException as exc:
            results[name] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def _kill_while_the_server_is_down(home: Path, sandbox_id: str) -> None:
    """Destroy a sandbox with the state folder's own manager, as an operator might."""

    async def kill() -> None:
        manager = Manager(home, detached=True)
        try:
            await manager.kill(sandbox_id)
        finally:
            await manager.close()

    asyncio.run(kill())


def _outputs(events: list[tuple[int, str, dict[str, Any]]]) -> dict[str, dict[str, str]]:
    """Each execution's stdout and stderr as its output events logged them, in order."""
    out: dict[str, dict[str, str]] = defaultdict(lambda: {"stdout": "", "stderr": ""})
    for _, kind, data in events:
        if kind in ("stdout", "stderr"):
            out[data["execution"]][kind] += data["text"]
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_restarted_server_comes_back_and_its_commands_lose_nothing(sig: int) -> None:
    """SIGKILL, or a graceful stop (SIGTERM: the commands are left running, not cancelled)."""
    home = Path(tempfile.mkdtemp(prefix="slrst-", dir="/tmp"))
    server = ServerProcess(home, args=()).start()
    client = sandlot.Client(url=server.url)
    sb = sandlot.Sandbox.create(client=client, timeout=120)
    doomed = sandlot.Sandbox.create(client=client, timeout=120)
    session = sandlot.Session.create(client=client)
    try:
        with session.sandbox(provider="bwrap", timeout=120) as durable:
            _lose_nothing(home, server, sig, client, sb, doomed, session, durable)
    finally:
        sb.kill()
        server.stop()


def _lose_nothing(
    home: Path,
    server: ServerProcess,
    sig: int,
    client: sandlot.Client,
    sb: sandlot.Sandbox,
    doomed: sandlot.Sandbox,
    session: sandlot.Session,
    durable: sandlot.Sandbox,
) -> None:
    sb.files.write("/workspace/kept.txt", "still here")
    seen: list[str] = []
    results: dict[str, Any] = {}
    background = sb.commands.run(SCRIPT, background=True)
    reader = sb.commands.run("read line; echo got $line", background=True)
    sleeper = sb.commands.run("sleep 300", background=True)
    lost = doomed.commands.run("while :; do echo x; sleep 0.2; done", background=True)
    threads = [
        _in_thread(results, "foreground",
                   lambda: sb.commands.run(SCRIPT, on_stdout=seen.append, timeout=100)),
        _in_thread(results, "durable", lambda: durable.commands.run(SCRIPT, timeout=100)),
    ]  # fmt: skip
    deadline = time.monotonic() + 20
    while "".join(seen).count("\n") < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "".join(seen).count("\n") >= 8
    server.stop(sig)  # mid-stream: about 20 lines of each still to come
    _kill_while_the_server_is_down(home, doomed.id)
    time.sleep(1.0)  # the commands print on into their agents' buffers meanwhile
    server.start()  # same folder, same port
    threads += [
        _in_thread(results, "background", background.wait),
        _in_thread(results, "lost", lost.wait),
    ]
    for thread in threads:
        thread.join(90)
        assert not thread.is_alive(), thread.name
    # (After the resumed streams: until one succeeds, the client's circuit breaker, which is
    # being reworked in this issue, refuses other calls for a few seconds.)
    reader.send_stdin("hi\n")  # to a re-attached command's stdin
    assert reader.wait().stdout == "got hi\n"

    # Every client got the whole output once and the real exit code.
    for name in ("foreground", "background", "durable"):
        result = results[name]
        assert isinstance(result, sandlot.CommandResult), (name, result)
        assert (result.stdout, result.stderr, result.exit_code) == (STDOUT, STDERR, 7), name
    assert "".join(seen) == STDOUT
    assert isinstance(results["lost"], sandlot.ExecutionLostError), results["lost"]
    assert "sandbox is gone" in str(results["lost"])

    # The transcripts: gapless, in order, each command's output whole and once.
    events = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false")
    ids = [e[0] for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    outputs = _outputs(events)
    assert [o for o in outputs.values() if o["stdout"] == STDOUT] == [
        {"stdout": STDOUT, "stderr": STDERR}
    ] * 2
    exits = [e[2]["data"] for e in events if e[1] == "exit"]
    assert sorted(x["exit_code"] for x in exits) == [0, 7, 7]  # the reader's, two scripts'
    assert "error" not in [e[1] for e in events]
    adopted = [e for e in events if e[1] == "sandbox" and e[2]["data"]["event"] == "adopted"]
    assert len(adopted) == 1
    logged = session.events()
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    assert "".join(e.text or "" for e in logged if e.kind == "stdout") == STDOUT
    assert [e.data["exit_code"] for e in logged if e.kind == "exit"] == [7]

    # Cancelling a re-attached command kills it (cancelling an attach alone only detaches).
    started = [e for e in events if e[1] == "started" and e[2]["data"]["pid"] == sleeper.pid]
    cancel = f"{server.url}/v1/sandboxes/{sb.id}/executions/{started[0][2]['execution']}/cancel"
    assert http("POST", cancel) == (200, {"cancelled": True})
    with pytest.raises(sandlot.SandlotError):
        sleeper.wait()
    alive = f"kill -0 {sleeper.pid} 2>/dev/null && echo alive || echo gone"
    deadline = time.monotonic() + 20
    while sb.commands.run(alive).stdout != "gone\n" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sb.commands.run(alive).stdout == "gone\n"

    # The re-attached run held the session's run lock, and let it go as it ended.
    assert durable.commands.run("echo next").stdout == "next\n"
    # The sandbox survived, with its files, and takes new work.
    again = sandlot.Sandbox.connect(sb.id, client=client)
    assert again.files.read("/workspace/kept.txt") == "still here"
    assert again.commands.run("echo after").stdout == "after\n"


# Waits for a file the test writes on the host while the server is down, then prints 3 MB:
# more than the agent's output log holds (2 MiB by default) with no reader attached.
FLOOD = (
    "echo before; while [ ! -e /workspace/go ]; do sleep 0.05; done;"
    " head -c 3000000 /dev/zero | tr '\\0' x; echo; echo done"
)


@pytest.mark.timeout(120)
def test_output_the_agent_no_longer_held_is_one_gap_event_and_the_rest_follows() -> None:
    home = Path(tempfile.mkdtemp(prefix="slrsg-", dir="/tmp"))
    server = ServerProcess(home, args=()).start()
    client = sandlot.Client(url=server.url)
    sb = sandlot.Sandbox.create(client=client, timeout=120)
    try:
        seen: list[str] = []
        handle = sb.commands.run(FLOOD, background=True, on_stdout=seen.append)
        deadline = time.monotonic() + 20
        while "before" not in "".join(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        (home / "sandboxes" / sb.id / "workspace" / "go").write_text("")
        time.sleep(2.0)  # the flood overruns the agent's log meanwhile
        server.start()
        result = handle.wait()
        assert result.exit_code == 0 and result.stdout.endswith("x\ndone\n")
        assert result.stdout.startswith("before\n")

        events = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false")
        ids = [e[0] for e in events]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        gaps = [e[2]["data"] for e in events if e[1] == "gap"]
        assert len(gaps) == 1 and gaps[0]["offset"] == len("before\n")
        logged = "".join(e[2]["text"] for e in events if e[1] == "stdout")
        # What was logged and what was lost add up to every byte the command printed.
        assert len(logged) + gaps[0]["bytes"] == len("before\n") + 3_000_000 + len("\ndone\n")
        assert logged == result.stdout
        assert [e[1] for e in events].index("gap") < [e[1] for e in events].index("exit")
    finally:
        sb.kill()
        server.stop()


# pip runs setup.py twice (metadata, wheel), 4 s each: an install to restart the server in.
SLOW_SETUP = (
    "import time\ntime.sleep(4)\nfrom setuptools import setup\n"
    "setup(name='slowpkg', version='1.0', py_modules=[])\n"
)


@pytest.mark.timeout(180)
def test_an_install_is_carried_on_too() -> None:
    """An install (``code.install``) is a process of the agent's, re-attached like a command
    (a code cell is not: it ends lost)."""
    home = Path(tempfile.mkdtemp(prefix="slrsi-", dir="/tmp"))
    server = ServerProcess(home, args=()).start()
    client = sandlot.Client(url=server.url)
    # The network is off: setuptools from the sandbox's Python, not a build environment.
    sb = sandlot.Sandbox.create(client=client, timeout=120, env={"PIP_NO_BUILD_ISOLATION": "0"})
    try:
        sb.files.write("/workspace/slow/setup.py", SLOW_SETUP)
        results: dict[str, Any] = {}
        thread = _in_thread(results, "install", lambda: sb.install(["/workspace/slow"]))
        events_url = f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false"

        def printed() -> str:
            return "".join(e[2]["text"] for e in sse(events_url) if e[1] == "stdout")

        deadline = time.monotonic() + 60
        while "(setup.py): started" not in printed() and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop(signal.SIGKILL)
        time.sleep(1.0)
        server.start()
        thread.join(120)
        assert not thread.is_alive()
        result = results["install"]
        assert result.exit_code == 0, result
        assert result.stdout.count("Processing ./slow\n") == 1
        assert result.stdout.endswith("Successfully installed slowpkg-1.0\n")
        events = sse(events_url)
        assert [e[0] for e in events] == list(range(events[0][0], events[0][0] + len(events)))
        assert printed() == result.stdout
        assert "error" not in [e[1] for e in events]
    finally:
        sb.kill()
        server.stop()
