"""The client never hangs on a server that stops answering (issue 16).

A dedicated ``sandlot serve`` is SIGSTOPped mid-call: alive, its socket still accepting, but
silent. Every call must then end by itself (a command's timeout, a plain call's deadline, a
dead stream), and the CLI must end on its ``--timeout`` and on SIGTERM. The bounds asserted
on elapsed time are generous: the point is "ends", and a regression fails on the guard
(``asyncio.wait_for`` or a subprocess wait) instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot.errors import CodeTimeoutError, CommandTimeoutError, RemoteUnavailableError
from sandlot.sdk.deadline import GRACE

from .server import ServerProcess

GUARD = 90.0  # seconds before a call that should have ended counts as hung


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """This module's own server (it gets stopped), in place of the shared one."""
    process = ServerProcess(Path(tempfile.mkdtemp(prefix="sldl-", dir="/tmp"))).start()
    yield process
    process.stop()


@contextlib.contextmanager
def resumed_after(server: ServerProcess) -> Iterator[None]:
    """Whatever happens in the block, the server runs again afterwards."""
    try:
        yield
    finally:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGCONT)


def stop(server: ServerProcess) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


@contextlib.asynccontextmanager
async def fresh(client: sandlot.Client) -> AsyncIterator[sandlot.AsyncSandbox]:
    """A sandbox on the (running again) server, killed at the end, with the client closed."""
    sb = await sandlot.AsyncSandbox.create(client=client, timeout=120)
    try:
        yield sb
    finally:
        await sb.kill()
        await client.aclose()


@pytest.mark.timeout(150)
async def test_a_command_timeout_ends_the_call_when_the_server_stops(
    server: ServerProcess,
) -> None:
    async with fresh(sandlot.Client(url=server.url)) as sb:
        with resumed_after(server):
            # The server stops once the first output is in: the exit will never come.
            started = time.monotonic()
            with pytest.raises(CommandTimeoutError) as caught:
                await asyncio.wait_for(
                    sb.commands.run(
                        "echo before; sleep 600",
                        timeout=2,
                        on_stdout=lambda _text: stop(server),
                    ),
                    GUARD,
                )
            elapsed = time.monotonic() - started
        assert caught.value.stdout == "before\n"
        assert "command timed out after 2 s" in str(caught.value)
        assert elapsed < 2 + GRACE + 20


@pytest.mark.timeout(150)
async def test_a_cell_timeout_ends_the_call_when_the_server_stops(server: ServerProcess) -> None:
    async with fresh(sandlot.Client(url=server.url)) as sb:
        with resumed_after(server), pytest.raises(CodeTimeoutError) as caught:
            await asyncio.wait_for(
                sb.run_code(
                    "import time\nprint('before', flush=True)\ntime.sleep(600)",
                    timeout=2,
                    on_stdout=lambda _text: stop(server),
                ),
                GUARD,
            )
        execution = caught.value.execution
        assert execution is not None and execution.timed_out
        assert "".join(execution.logs.stdout) == "before\n"


@pytest.mark.timeout(150)
async def test_a_plain_call_ends_at_its_deadline(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDLOT_CALL_TIMEOUT", "2")  # read when the client is made
    client = sandlot.Client(url=server.url)
    assert client.call_timeout == 2.0
    async with fresh(client) as sb:
        with resumed_after(server):
            stop(server)
            started = time.monotonic()
            with pytest.raises(RemoteUnavailableError) as caught:
                await asyncio.wait_for(sb.files.exists("/workspace"), GUARD)
            elapsed = time.monotonic() - started
        assert "did not answer" in str(caught.value)
        assert elapsed < 2 + 20


@pytest.mark.timeout(150)
async def test_a_silent_stream_is_dead(server: ServerProcess) -> None:
    # A command with no timeout of its own: only the stream's silence can end the wait.
    async with fresh(sandlot.Client(url=server.url, stream_timeout=2, retry_for=2)) as sb:
        with resumed_after(server):
            started = time.monotonic()
            with pytest.raises(RemoteUnavailableError):
                await asyncio.wait_for(
                    sb.commands.run(
                        "echo before; sleep 600",
                        timeout=None,
                        on_stdout=lambda _text: stop(server),
                    ),
                    GUARD,
                )
            elapsed = time.monotonic() - started
        assert elapsed < 2 + 2 + 20


def _cli_run(server: ServerProcess, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "SANDLOT_URL": server.url}
    env.pop("SANDLOT_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "sandlot.cli", "run", *args, "--", "echo started; sleep 600"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ended(proc: subprocess.Popen[str], within: float) -> int | None:
    """The exit code, or None (after killing it) if it was still running."""
    try:
        return proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@pytest.mark.timeout(150)
def test_cli_run_ends_on_sigterm_when_the_server_stops(server: ServerProcess) -> None:
    proc = _cli_run(server)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with resumed_after(server):
            assert proc.stdout.readline() == "started\n"
            stop(server)
            proc.send_signal(signal.SIGTERM)
            code = _ended(proc, 30)
        assert code == 128 + signal.SIGTERM
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(150)
def test_cli_run_timeout_ends_when_the_server_stops(server: ServerProcess) -> None:
    proc = _cli_run(server, "--timeout", "3")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with resumed_after(server):
            assert proc.stdout.readline() == "started\n"
            stop(server)
            code = _ended(proc, 60)
        assert code == 124
        assert "command timed out after 3 s" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
