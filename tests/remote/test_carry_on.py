"""Clients carry on through a server restart (issue 18): ``sandlot serve`` SIGKILLed and
started again on the same folder and port; a client in another process, which saw the
failures, is never locked out: calls made while the server was down complete once it is
back, and calls made after it is back (from that client, or a new one for the same URL) are
never refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import sandlot

from .server import ServerProcess

CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import sandlot

    url, sandbox_id = sys.argv[1], sys.argv[2]

    async def line() -> str:
        return (await asyncio.to_thread(sys.stdin.readline)).strip()

    async def main() -> None:
        client = sandlot.Client(url=url)
        sb = await sandlot.AsyncSandbox.connect(sandbox_id, client=client)
        print("ready", flush=True)
        assert await line() == "down"
        # Calls that may wait only briefly fail while the server is down (more failures
        # than the old shared breaker's threshold).
        failed = []
        for _ in range(3):
            quick = sandlot.Client(url=url, retry_for=0.5)
            try:
                await sandlot.AsyncSandbox.connect(sandbox_id, client=quick)
            except sandlot.RemoteUnavailableError as exc:
                failed.append(str(exc))
        # These wait for the server: a command (a POST that never reached it) and a read.
        waiting = [
            asyncio.ensure_future(sb.commands.run("echo waited")),
            asyncio.ensure_future(sb.files.read("/workspace/kept.txt")),
        ]
        await asyncio.sleep(0.5)  # under way, retrying
        print("waiting", flush=True)
        assert await line() == "up"
        back = time.monotonic()
        after = (await sb.commands.run("echo after")).stdout
        fresh = await sandlot.AsyncSandbox.connect(sandbox_id, client=sandlot.Client(url=url))
        fresh_out = (await fresh.commands.run("echo fresh")).stdout
        lag = time.monotonic() - back
        waited = await asyncio.gather(*waiting)
        print(json.dumps({
            "failed": failed, "after": after, "fresh": fresh_out, "lag": lag,
            "waited": [waited[0].stdout, waited[1]],
        }), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.timeout(180)
def test_a_client_in_another_process_carries_on_after_a_restart() -> None:
    home = Path(tempfile.mkdtemp(prefix="slcarry-", dir="/tmp"))
    server = ServerProcess(home, args=()).start()
    client = sandlot.Client(url=server.url)
    sb = sandlot.Sandbox.create(client=client, timeout=150)
    env = {**os.environ}
    env.pop("SANDLOT_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, server.url, sb.id],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        sb.files.write("/workspace/kept.txt", "still here")
        assert proc.stdout.readline() == "ready\n"
        server.stop(signal.SIGKILL)
        proc.stdin.write("down\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "waiting\n", proc.stderr.read()
        time.sleep(1.0)  # the waiting calls retry meanwhile
        server.start()  # same folder, same port; returns once /readyz answers
        proc.stdin.write("up\n")
        proc.stdin.flush()
        out = proc.stdout.readline()
        assert out, proc.stderr.read()
        report = json.loads(out)
        assert len(report["failed"]) == 3
        assert all("cannot reach" in reason for reason in report["failed"])
        assert report["after"] == "after\n"  # the client that saw the failures
        assert report["fresh"] == "fresh\n"  # a new client for the same URL
        assert report["waited"] == ["waited\n", "still here"]
        print(f"calls after the server was back took {report['lag'] * 1000:.0f} ms")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sb.kill()
        server.stop()
