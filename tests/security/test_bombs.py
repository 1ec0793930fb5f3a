"""Bombs: a command that tries to exhaust the host (processes, memory, output, disk,
threads) must exhaust only its own sandbox's share, and the host must stay responsive.

Each sandbox is made with small limits so that every bomb reaches its wall in seconds. The
host is watched from outside: the processes in the sandbox's PID namespace, this process's
resident memory, and how long a trivial host subprocess takes meanwhile.
"""

from __future__ import annotations

import secrets
import signal
import statistics
import subprocess
import threading
import time
from typing import Any

import pytest
from attacker import in_namespace, marker_process, pid_namespace, wait_for

import sandlot

pytestmark = pytest.mark.timeout(120)

PIDS = 64


class HostWatch:
    """Meanwhile on the host: latency of ``true``, the peak number of processes in a PID
    namespace, and this process's peak resident memory (kB)."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace
        self.latencies: list[float] = []
        self.peak_processes = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            subprocess.run(["true"], check=True, timeout=30)
            self.latencies.append(time.monotonic() - started)
            if self.namespace is not None:
                self.peak_processes = max(self.peak_processes, len(in_namespace(self.namespace)))
            self.peak_rss = max(self.peak_rss, rss_kb())
            self._stop.wait(0.05)

    def __enter__(self) -> HostWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # A bomb that hit its wall at once leaves few samples: watch the host a little
        # longer (its recovery counts too).
        deadline = time.monotonic() + 3
        while len(self.latencies) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(30)

    def assert_responsive(self) -> None:
        assert len(self.latencies) >= 5, self.latencies
        assert max(self.latencies) < 2.0, f"host stalled: {max(self.latencies):.2f} s"
        assert statistics.median(self.latencies) < 0.25, statistics.median(self.latencies)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def namespace(sb: Any) -> str:
    pid = marker_process(sb, "sandlot-bomb-" + secrets.token_hex(4))
    found = pid_namespace(pid)
    assert found is not None
    return found


@pytest.mark.attack("fork bomb past the process limit")
def test_fork_bomb(make_sandbox: Any) -> None:
    """``:(){ :|:& };:`` for 6 s in a sandbox limited to 64 processes. Contained: the
    sandbox never holds more than 64 processes, the host keeps spawning promptly, and the
    kill ends every one of them."""
    sb = make_sandbox(resources={"pids": PIDS})
    ns = namespace(sb)
    with HostWatch(ns) as watch:
        try:
            sb.commands.run(":(){ :|:& };:", timeout=3)
        except sandlot.CommandTimeoutError:
            pass
        time.sleep(3)  # its processes outlive the first shell: let them rage
    assert watch.peak_processes >= PIDS // 2, f"the bomb never got going ({watch.peak_processes})"
    assert watch.peak_processes <= PIDS, f"{watch.peak_processes} processes > limit {PIDS}"
    watch.assert_responsive()
    sb.kill()
    assert wait_for(lambda: not in_namespace(ns), 10), in_namespace(ns)


@pytest.mark.attack("thread bomb past the process limit")
def test_thread_bomb(make_sandbox: Any) -> None:
    """A command starts threads until it cannot (threads count against the process
    limit). Contained: it stops below 64, the sandbox still answers, the host is fine."""
    sb = make_sandbox(resources={"pids": PIDS})
    code = (
        "import threading, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 100000:\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "        n += 1\n"
        "except RuntimeError as exc:\n"
        "    print('STOPPED', n, exc, flush=True)\n"
        "time.sleep(2)  # hold them while the host is watched\n"
    )
    with HostWatch() as watch:
        r = sb.commands.run(["python3", "-c", code], timeout=60)
    assert "STOPPED" in r.stdout, (r.exit_code, r.stdout, r.stderr[-500:])
    assert int(r.stdout.split()[1]) < PIDS
    watch.assert_responsive()
    assert sb.commands.run("echo alive", timeout=20).stdout == "alive\n"


@pytest.mark.attack("memory bomb past the memory limit")
def test_memory_bomb(make_sandbox: Any) -> None:
    """A command allocates and touches 1 GB in a sandbox limited to 128 MB. Contained: it
    gets MemoryError or is killed, the sandbox survives, the host stays responsive."""
    sb = make_sandbox(resources={"memory_mb": 128})
    ok = sb.commands.run(["python3", "-c", "b = bytearray(32 << 20); print('SMALL OK')"])
    assert ok.stdout == "SMALL OK\n", ok  # the positive control: below the limit works
    code = (
        "chunks = []\n"
        "for i in range(1024):\n"
        "    chunks.append(bytearray(1 << 20))\n"
        "    chunks[-1][::4096] = b'x' * 256\n"
        "print('ALLOCATED', flush=True)\n"
    )
    with HostWatch() as watch:
        r = sb.commands.run(["python3", "-c", code], timeout=60)
    assert "ALLOCATED" not in r.stdout
    assert "MemoryError" in r.stderr or r.signal == signal.SIGKILL, r
    watch.assert_responsive()
    assert sb.commands.run("echo alive", timeout=20).stdout == "alive\n"


@pytest.mark.attack("output bomb (yes for 5 s) against the host's memory")
def test_output_bomb(make_sandbox: Any) -> None:
    """``yes`` for 5 s, with the result capped at 64 KiB. Contained: the result keeps 64 KiB
    at most, and this host process's resident memory grows by less than 100 MB."""
    sb = make_sandbox()
    sb.commands.run("true")  # warm the channel up before measuring
    before = rss_kb()
    with HostWatch() as watch:
        r = sb.commands.run("timeout 5 yes", max_output_bytes=64 << 10, timeout=30)
    assert r.exit_code == 124, r.exit_code  # timeout(1) ended it: it ran the whole time
    assert r.truncated is True
    assert len(r.stdout_bytes) <= 64 << 10
    assert watch.peak_rss - before < 100 << 10, f"host RSS grew {watch.peak_rss - before} kB"
    watch.assert_responsive()


@pytest.mark.attack("fill /tmp and /dev/shm past their caps")
def test_tmp_fill(make_sandbox: Any) -> None:
    """A command writes 64 MB into a 16 MB /tmp, and 128 MB into /dev/shm. Contained: both
    stop at their cap with ENOSPC, and the sandbox still works."""
    sb = make_sandbox(resources={"tmp_mb": 16})
    r = sb.commands.run(
        "head -c 64M /dev/zero > /tmp/fill; echo status=$?; stat -c %s /tmp/fill", timeout=60
    )
    assert "status=0" not in r.stdout
    assert "No space left" in r.stderr, r.stderr
    assert int(r.stdout.split()[-1]) <= 16 << 20
    r = sb.commands.run(
        "head -c 128M /dev/zero > /dev/shm/fill; echo status=$?; stat -c %s /dev/shm/fill",
        timeout=60,
    )
    assert "status=0" not in r.stdout
    assert int(r.stdout.split()[-1]) <= 64 << 20
    assert sb.commands.run("rm -f /tmp/fill /dev/shm/fill; echo alive").stdout == "alive\n"
