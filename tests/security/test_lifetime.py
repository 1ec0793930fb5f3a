"""Lifetimes: nothing of a sandbox outlives its kill, its deadline or its creator (issue 15,
hole 5).

The attacker's aim is to stay: processes that leave their command's process group and
session (``setsid``, a double fork), in a sandbox whose creator was SIGKILLed, or whose
lifetime ran out. The host is watched from outside: every process in the sandbox's PID
namespace (found through a process with a marker on its command line), and what
``sandlot ls`` says, which must never show a dead sandbox nor hide a live one.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from attacker import in_namespace, pid_namespace, processes_with, wait_for
from conftest import spec_for

pytestmark = pytest.mark.timeout(120)

BWRAP_ONLY = pytest.mark.parametrize("provider", ["bwrap"], indirect=True)

# Started inside the sandbox: a setsid'd shell loop and a double-forked daemon, both with the
# marker on their command lines; the command itself returns at once.
DAEMONS = r"""
import os, sys, time
marker = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        fd = os.open("/dev/null", os.O_RDWR)
        for n in (0, 1, 2):
            os.dup2(fd, n)
        os.execvp("sh", ["sh", "-c", "trap '' HUP TERM INT; while :; do sleep 1; done",
                         "daemon-" + marker])
    os._exit(0)
os.wait()
os.system("setsid sh -c 'trap \"\" HUP TERM INT; while :; do sleep 1; done' setsid-%s "
          "</dev/null >/dev/null 2>&1 &" % marker)
print("STARTED", flush=True)
"""

CREATOR = r"""
import json, sys, time
import sandlot
spec, daemons, marker = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
sb = sandlot.Sandbox.create(**spec)
r = sb.commands.run(["python3", "-c", daemons, marker], timeout=20)
assert "STARTED" in r.stdout, r
print(sb.id, flush=True)
time.sleep(600)
"""


def start_daemons(sb: Any, marker: str) -> str:
    """Start both daemons in ``sb``; the PID namespace they run in, seen from the host."""
    r = sb.commands.run(["python3", "-c", DAEMONS, marker], timeout=20)
    assert "STARTED" in r.stdout, r
    return namespace_of(marker)


def daemons(marker: str) -> list[int]:
    """The daemons' host pids (their own command lines only: the creator's holds the bare
    marker too)."""
    return sorted(set(processes_with("daemon-" + marker)) | set(processes_with("setsid-" + marker)))


def namespace_of(marker: str) -> str:
    found = wait_for(lambda: len(daemons(marker)) >= 2, 10)
    assert found, f"the host does not see both daemons: {daemons(marker)}"
    namespaces = {pid_namespace(p) for p in daemons(marker)}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    namespace = namespaces.pop()
    assert namespace is not None
    assert namespace != pid_namespace(os.getpid())
    return namespace


def survivors(namespace: str, marker: str) -> list[int]:
    """Live host processes of the sandbox: in its PID namespace, or with its marker."""
    return sorted(set(in_namespace(namespace)) | set(daemons(marker)))


def listed() -> set[str]:
    """The ids ``sandlot ls --json`` shows (the CLI, from another process)."""
    done = subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "ls", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {item["id"] for item in json.loads(done.stdout or "[]")}


class Watch:
    """Polls ``sandlot ls`` against the processes the host sees, and remembers every time
    it hid a live sandbox or showed a dead one."""

    def __init__(self, sandbox_id: str, namespace: str, marker: str) -> None:
        self.id, self.namespace, self.marker = sandbox_id, namespace, marker
        self.lies: list[str] = []

    def check(self) -> bool:
        """One look; True if the sandbox's processes are all gone."""
        before = survivors(self.namespace, self.marker)
        shown = self.id in listed()
        after = survivors(self.namespace, self.marker)
        if before and after and not shown:
            self.lies.append(f"ls hid a live sandbox (processes {after})")
        if not before and not after and shown:
            self.lies.append("ls showed a sandbox with no process left")
        return not after

    def until_gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.check():
                return True
            time.sleep(0.2)
        return self.check()


class Reaper:
    """What a test made on the host: creator processes and sandbox PID namespaces."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.creators: list[subprocess.Popen[str]] = []


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """After the test, whatever it found: SIGKILL the creators it started and every process
    left in the namespaces it made, so a failed attack leaves nothing running."""
    made = Reaper()
    yield made
    for creator in made.creators:
        if creator.poll() is None:
            creator.kill()
        creator.communicate(timeout=10)
    for namespace in made.namespaces:
        for pid in in_namespace(namespace):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def run_creator(
    spec: dict[str, Any], marker: str, reaper: Reaper
) -> tuple[subprocess.Popen[str], str]:
    """A separate Python process that creates a sandbox, starts the daemons in it, prints
    the sandbox's id and sleeps."""
    creator = subprocess.Popen(
        [sys.executable, "-c", CREATOR, json.dumps(spec), DAEMONS, marker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaper.creators.append(creator)
    assert creator.stdout is not None
    ready, _, _ = select.select([creator.stdout], [], [], 60)
    line = creator.stdout.readline().strip() if ready else ""
    if not line.startswith("sb-"):
        creator.kill()
        _, err = creator.communicate(timeout=10)
        raise AssertionError(f"the creator did not make its sandbox: {line!r} {err[-2000:]}")
    return creator, line


@BWRAP_ONLY
@pytest.mark.attack("outlive a SIGKILLed creator (setsid, double fork)", hole=5)
def test_creator_sigkill(provider: str, request: pytest.FixtureRequest, reaper: Reaper) -> None:
    """A creator process makes a bwrap sandbox (lifetime 2 minutes) in which the attacker
    has left a setsid'd loop and a double-forked daemon that ignore SIGHUP and SIGTERM; the
    creator is SIGKILLed. Blocked: within 10 s no process of the sandbox is left on the
    host, and ``sandlot ls`` never hid it while it lived nor showed it once gone."""
    marker = "sandlot-creator-" + secrets.token_hex(4)
    creator, sandbox_id = run_creator(spec_for(provider, request, timeout=120), marker, reaper)
    namespace = namespace_of(marker)
    reaper.namespaces.append(namespace)
    watch = Watch(sandbox_id, namespace, marker)
    assert sandbox_id in listed()  # the positive control: ls shows it while it lives
    creator.send_signal(signal.SIGKILL)
    creator.communicate(timeout=10)
    gone = watch.until_gone(10)
    assert gone, (
        f"alive 10 s after its creator's SIGKILL: {survivors(namespace, marker)}; {watch.lies}"
    )
    assert not watch.lies, watch.lies
    assert sandbox_id not in listed()


@pytest.mark.attack("outlive the lifetime after the creator's SIGKILL", hole=5)
def test_lifetime_holds_without_creator(
    provider: str, request: pytest.FixtureRequest, reaper: Reaper
) -> None:
    """As above, with a 4 s lifetime and on every provider: whatever happens to the creator
    must not matter to the deadline. Blocked: nothing left 10 s after the deadline, and ls
    honest all along."""
    marker = "sandlot-lifetime-" + secrets.token_hex(4)
    started = time.monotonic()
    creator, sandbox_id = run_creator(spec_for(provider, request, timeout=4), marker, reaper)
    namespace = namespace_of(marker)
    reaper.namespaces.append(namespace)
    watch = Watch(sandbox_id, namespace, marker)
    creator.send_signal(signal.SIGKILL)
    creator.communicate(timeout=10)
    gone = watch.until_gone(max(1.0, started + 4 + 10 - time.monotonic()))
    assert gone, f"alive 10 s past its lifetime: {survivors(namespace, marker)}; {watch.lies}"
    assert not watch.lies, watch.lies
    assert sandbox_id not in listed()


@pytest.mark.attack("outlive the lifetime with daemons (creator alive)", hole=5)
def test_lifetime_holds_with_daemons(make_sandbox: Any, reaper: Reaper) -> None:
    """A sandbox with a 3 s lifetime, its creator (this process) alive, in which the
    attacker left a setsid'd loop and a double-forked daemon. Blocked: 10 s after the
    deadline nothing is left, and ls does not show it."""
    marker = "sandlot-deadline-" + secrets.token_hex(4)
    started = time.monotonic()
    sb = make_sandbox(timeout=3)
    namespace = start_daemons(sb, marker)
    reaper.namespaces.append(namespace)
    watch = Watch(sb.id, namespace, marker)
    gone = watch.until_gone(max(1.0, started + 3 + 10 - time.monotonic()))
    assert gone, f"alive 10 s past its 3 s lifetime: {survivors(namespace, marker)}"
    assert not watch.lies, watch.lies


@pytest.mark.attack("outlive sb.kill() with daemons")
def test_kill_leaves_no_process(make_sandbox: Any, reaper: Reaper) -> None:
    """The attacker's setsid'd loop and double-forked daemon, then the host kills the
    sandbox. Blocked: within 5 s nothing is left, and ls does not show it."""
    marker = "sandlot-kill-" + secrets.token_hex(4)
    sb = make_sandbox()
    namespace = start_daemons(sb, marker)
    reaper.namespaces.append(namespace)
    sb.kill()
    gone = wait_for(lambda: not survivors(namespace, marker), 5)
    assert gone, f"alive after kill: {survivors(namespace, marker)}"
    assert sb.id not in listed()
