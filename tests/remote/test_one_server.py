"""One server per state folder (issue 18): a second ``sandlot serve`` on a folder that is
being served refuses at once, with one line naming the running server, before it touches a
sandbox or the store; the first server's sandboxes go on working. A SIGKILLed server leaves
no lock behind. A port that is taken is found before any sandbox is adopted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import sandlot
from sandlot.errors import ServerRunningError
from sandlot.manager import Manager

from .server import ServerProcess, free_port
from .test_server import sse


def serve(home: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDLOT_HOME": str(home)}
    env.pop("SANDLOT_URL", None)
    command = [sys.executable, "-m", "sandlot.cli", "serve", "--port", str(port)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(180)
def test_a_second_server_on_the_same_folder_is_refused() -> None:
    home = Path(tempfile.mkdtemp(prefix="slone-", dir="/tmp"))
    first = ServerProcess(home, args=()).start()
    client = sandlot.Client(url=first.url)
    sb = sandlot.Sandbox.create(client=client, timeout=150)
    try:
        assert sb.commands.run("echo before").stdout == "before\n"
        assert first.process is not None
        for port in (first.port, free_port()):  # its port, or a free one: the folder decides
            second = serve(home, port)
            assert second.returncode == 1
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert f"pid {first.process.pid}" in lines[0] and first.url in lines[0]
            assert "already served" in lines[0]

        # Nor may another process adopt the served sandboxes.
        async def adopt() -> None:
            manager = Manager(home, detached=True)
            try:
                with pytest.raises(ServerRunningError, match=f"pid {first.process.pid}"):
                    await manager.adopt(sb.id)
            finally:
                await manager.close()

        asyncio.run(adopt())

        # The first server's sandbox works as before, and nobody else wrote to its log.
        for i in range(3):
            assert sb.commands.run(f"echo after {i}").stdout == f"after {i}\n"
        events = sse(f"{first.url}/v1/sandboxes/{sb.id}/events?follow=false")
        assert not [e for e in events if e[1] == "sandbox" and e[2]["data"]["event"] == "adopted"]

        # Killed outright, the first server leaves no lock: its successor adopts the sandbox.
        first.stop(signal.SIGKILL)
        first.start()
        again = sandlot.Sandbox.connect(sb.id, client=client)
        assert again.commands.run("echo successor").stdout == "successor\n"
    finally:
        sb.kill()
        first.stop()


@pytest.mark.timeout(120)
def test_a_taken_port_fails_before_the_server_starts() -> None:
    other = ServerProcess(Path(tempfile.mkdtemp(prefix="slport-", dir="/tmp"))).start()
    try:
        home = Path(tempfile.mkdtemp(prefix="slport2-", dir="/tmp"))
        done = serve(home, other.port)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"cannot listen on http://127.0.0.1:{other.port}" in lines[0]
    finally:
        other.stop()
