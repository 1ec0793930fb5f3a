"""Limits: runaway programs stay inside their sandbox and the host stays healthy.

The heavy tests (fork bomb, 10 GB allocation, 1 GB flood) carry ``@pytest.mark.slow``; they
still run by default (deselect with ``-m "not slow"``).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import threading
import time

import pytest

import sandlot

from .helpers import (
    pids_in_namespace,
    reset_peak_rss,
    sandbox_pid_namespace,
    status_kb,
    wait_until,
)

DEFAULT_PIDS = sandlot.Resources().pids
RSS_BOUND_KB = 100 * 1024  # the host may grow by at most this much during a 1 GB flood


class HostMonitor:
    """Meanwhile on the host: how long a tiny subprocess takes, and how many processes
    the sandbox's PID namespace holds."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.latencies: list[float] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            subprocess.run(["true"], check=True)
            self.latencies.append(time.monotonic() - started)
            self.peak = max(self.peak, len(pids_in_namespace(self.namespace)))
            self._stop.wait(0.05)

    def __enter__(self) -> HostMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fork_bomb_is_contained_and_host_stays_responsive() -> None:
    box = sandlot.Sandbox.create()
    try:
        namespace = sandbox_pid_namespace(box.info.handle["pid"])
        with HostMonitor(namespace) as monitor:
            started = time.monotonic()
            try:
                box.commands.run(":(){ :|:& };:", timeout=5)
            except sandlot.CommandTimeoutError:
                pass
            # The bomb's processes outlive its first shell: let them rage for a while.
            time.sleep(max(0.0, 6 - (time.monotonic() - started)))
            during = len(pids_in_namespace(namespace))
        killing = time.monotonic()
        assert box.kill() is True
        kill_seconds = time.monotonic() - killing
    finally:
        box.kill()

    # It did explode (otherwise this test proves nothing) ...
    assert monitor.peak >= 50, f"the fork bomb never got going (peak {monitor.peak})"
    # ... but only up to the process limit.
    assert monitor.peak <= DEFAULT_PIDS, f"{monitor.peak} processes > limit {DEFAULT_PIDS}"
    assert during <= DEFAULT_PIDS
    # The host kept spawning processes promptly the whole time.
    assert len(monitor.latencies) >= 10
    assert max(monitor.latencies) < 2.0, max(monitor.latencies)
    assert statistics.median(monitor.latencies) < 0.25, statistics.median(monitor.latencies)
    # Killing the sandbox ends every one of them, quickly.
    assert kill_seconds < 15
    assert wait_until(lambda: not pids_in_namespace(namespace), 10), pids_in_namespace(namespace)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_allocating_10_gb_fails_inside(sb: sandlot.Sandbox) -> None:
    code = "b = bytearray(10 * 1024**3); b[::4096] = b'x' * len(b[::4096]); print('ALLOCATED')"
    r = sb.commands.run(["python3", "-c", code], timeout=90)
    assert r.exit_code != 0
    assert "ALLOCATED" not in r.stdout
    assert "MemoryError" in r.stderr or r.signal == signal.SIGKILL, r
    # The sandbox survives its command's failure.
    assert sb.commands.run("echo alive").stdout == "alive\n"


def test_memory_limit_kills_a_200_mb_allocation() -> None:
    with sandlot.Sandbox.create(resources={"memory_mb": 64}) as box:
        ok = box.commands.run(["python3", "-c", "b = bytearray(16 << 20); print('SMALL OK')"])
        assert (ok.exit_code, ok.stdout) == (0, "SMALL OK\n")  # the positive control
        r = box.commands.run(["python3", "-c", "b = bytearray(200 << 20); print('ALLOCATED')"])
        assert r.exit_code != 0
        assert "ALLOCATED" not in r.stdout
        assert "MemoryError" in r.stderr or r.signal == signal.SIGKILL, r
        assert box.commands.run("echo alive").stdout == "alive\n"


def test_endless_loop_stops_at_timeout_with_partial_output(sb: sandlot.Sandbox) -> None:
    loop = (
        "echo started; echo warning >&2; for i in 1 2 3; do echo tick $i; done; while :; do :; done"
    )
    started = time.monotonic()
    with pytest.raises(sandlot.CommandTimeoutError) as caught:
        sb.commands.run(loop, timeout=1.5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 10, elapsed
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, sandlot.CommandError)
    assert error.code == "command_timeout"
    assert error.stdout == "started\ntick 1\ntick 2\ntick 3\n"
    assert error.stderr == "warning\n"
    # The loop is gone, and the sandbox still answers.
    r = sb.commands.run("ps -eo args")
    assert "while :" not in r.stdout


def test_timeout_kills_the_whole_process_group(sb: sandlot.Sandbox) -> None:
    """A command that ignores SIGTERM and leaves a child behind still goes entirely."""
    cmd = "trap '' TERM; sleep 4243 & echo forked; while :; do :; done"
    with pytest.raises(TimeoutError) as caught:
        sb.commands.run(cmd, timeout=1)
    assert "forked" in caught.value.stdout  # type: ignore[attr-defined]
    ps = sb.commands.run("ps -eo args").stdout
    assert "sleep 4243" not in ps
    assert "while :" not in ps


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_1_gb_stdout_flood_keeps_host_memory_bounded(sb: sandlot.Sandbox) -> None:
    sb.commands.run("true")  # warm up the channel before measuring
    peak_resettable = reset_peak_rss()
    before = status_kb("VmRSS")
    sampled = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            sampled.append(status_kb("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seen = 0

    def count(text: str) -> None:
        nonlocal seen
        seen += len(text)

    try:
        r = sb.commands.run(
            "head -c 1G /dev/zero", on_stdout=count, max_output_bytes=1 << 20, timeout=150
        )
    finally:
        stop.set()
        sampler.join(5)
    peak = max(max(sampled), status_kb("VmHWM") if peak_resettable else 0)

    assert r.exit_code == 0
    assert seen == 1 << 30  # the callback saw every byte (NULs decode one char each)
    assert r.truncated is True
    assert r.stdout_bytes == b"\0" * (1 << 20)  # the result keeps only the capped tail
    assert peak - before < RSS_BOUND_KB, f"host RSS grew by {(peak - before) // 1024} MB"
    assert status_kb("VmRSS") - before < RSS_BOUND_KB


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_1_gb_flood_without_callback_keeps_only_the_default_tail(sb: sandlot.Sandbox) -> None:
    sb.commands.run("true")
    before = status_kb("VmRSS")
    r = sb.commands.run("head -c 1G /dev/zero", timeout=100)
    assert r.exit_code == 0
    assert r.truncated is True
    assert len(r.stdout_bytes) == 16 << 20  # MAX_OUTPUT_BYTES
    del r
    assert status_kb("VmRSS") - before < RSS_BOUND_KB


@pytest.mark.timeout(60)
async def test_slow_consumer_applies_backpressure() -> None:
    """A callback that stops consuming makes the producer wait; nobody buffers 1 GB."""
    release = asyncio.Event()
    received = 0

    async def stall(text: str) -> None:
        nonlocal received
        received += len(text)
        await release.wait()

    async with sandlot.AsyncSandbox.create() as box:
        before = status_kb("VmRSS")
        handle = await box.commands.run(
            "head -c 1G /dev/zero; echo done >&2", background=True, on_stdout=stall
        )
        await asyncio.sleep(2)
        # The stalled callback got one chunk; the rest waits in bounded windows and pipes.
        assert received <= 1 << 20
        assert not handle.done()
        assert status_kb("VmRSS") - before < RSS_BOUND_KB
        # Inside, the producer is blocked, not finished.
        r = await box.commands.run("ps -eo args")
        assert "head -c 1G" in r.stdout
        release.set()
        result = await handle.wait()
        assert result.exit_code == 0
        assert received == 1 << 30
