"""SIGKILL the server in the middle of a streaming command, start it again: the sandbox is
still there, the log holds everything the client was sent, and the client's stream resumes
(and ends with the news that the server lost track of the command)."""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

import sandlot

from .server import ServerProcess
from .test_server import sse


@pytest.mark.timeout(120)
def test_a_killed_server_comes_back_with_its_sandboxes_and_logs() -> None:
    home = Path(tempfile.mkdtemp(prefix="slrst-", dir="/tmp"))
    server = ServerProcess(home, args=()).start()
    client = sandlot.Client(url=server.url)
    sb = sandlot.Sandbox.create(client=client, timeout=120)
    try:
        sb.files.write("/workspace/kept.txt", "still here")
        script = (
            "import time\nfor i in range(100000):\n    print(i, flush=True); time.sleep(0.01)\n"
        )
        seen: list[str] = []
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                sb.commands.run(["python3", "-c", script], on_stdout=seen.append, timeout=100)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 20
        while "".join(seen).count("\n") < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        time.sleep(1.0)
        server.start()  # same folder, same port
        thread.join(60)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], sandlot.ExecutionLostError)
        printed = "".join(seen)
        lines = printed.splitlines()
        assert len(lines) >= 50 and lines == [str(i) for i in range(len(lines))]

        # Everything the client was sent is in the transcript, exactly once, in order.
        events = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false")
        logged = "".join(e[2].get("text", "") for e in events if e[1] == "stdout")
        assert logged == printed
        kinds = [e[1] for e in events]
        assert kinds[-1] == "sandbox" and events[-1][2]["data"]["event"] == "adopted"
        assert "error" in kinds
        ids = [e[0] for e in events]
        assert ids == list(range(ids[0], ids[0] + len(ids)))

        # The sandbox survived, with its files, and takes new work.
        again = sandlot.Sandbox.connect(sb.id, client=client)
        assert again.files.read("/workspace/kept.txt") == "still here"
        assert again.commands.run("echo after").stdout == "after\n"
        assert [s.id for s in sandlot.Sandbox.list(client=client)] == [sb.id]
    finally:
        sb.kill()
        server.stop()
