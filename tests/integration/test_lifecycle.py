"""Lifecycle: lifetimes, reconnecting from another process, listing, killing, gc after a crash."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

import sandlot

from .helpers import (
    cgroup_folders,
    is_zombie_or_gone,
    pids_in_namespace,
    processes_mentioning,
    sandbox_folder,
    sandbox_pid_namespace,
    wait_until,
)
from .helpers import (
    cmdline as processes_cmdline,
)


def listed_ids(metadata: dict[str, str] | None = None) -> set[str]:
    return {info.id for info in sandlot.Sandbox.list(metadata)}


def run_python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter sharing this session's SANDLOT_HOME."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def assert_expired(box: sandlot.Sandbox, pid: int) -> None:
    """The sandbox ended by itself at its deadline and left nothing behind (its folder and
    cgroups are removed in the background: allow a moment)."""
    assert wait_until(lambda: is_zombie_or_gone(pid), 10), "bwrap still runs after its lifetime"
    assert wait_until(lambda: box.id not in listed_ids(), 5)
    assert wait_until(lambda: not sandbox_folder(box.id).exists(), 5)
    assert wait_until(lambda: not cgroup_folders(box.id), 5)
    with pytest.raises(sandlot.SandboxClosedError):
        box.commands.run("echo too late")


def test_id_info_and_kill(sb: sandlot.Sandbox) -> None:
    assert sb.id.startswith("sb-")
    assert sb.provider == "bwrap"
    assert sb.isolated is True
    assert sb.info.owner_pid == os.getpid()
    lifetime = (sb.info.expires_at - sb.info.created_at).total_seconds()
    assert lifetime == pytest.approx(4 * 3600, abs=1)  # the default hard lifetime
    assert sb.info.idle_timeout == 600  # and the default idle timeout (docs/lifetimes.md)
    assert sb.is_running() is True
    assert sb.id in listed_ids()
    pid = sb.info.handle["pid"]
    assert sb.kill() is True
    assert is_zombie_or_gone(pid)
    assert sb.is_running() is False
    assert sb.id not in listed_ids()
    # The host folder and the cgroups go too (removed in the background once the killed
    # processes are gone: allow a moment).
    assert wait_until(lambda: not sandbox_folder(sb.id).exists(), 5)
    assert wait_until(lambda: not cgroup_folders(sb.id), 5)
    assert sb.kill() is False  # already gone: no error
    with pytest.raises(sandlot.SandboxClosedError):
        sb.commands.run("echo too late")
    with pytest.raises(sandlot.SandboxClosedError):
        sb.files.read("/workspace/x")


def test_lifetime_timeout_destroys_the_sandbox() -> None:
    box = sandlot.Sandbox.create(timeout=1.5)
    pid = box.info.handle["pid"]
    assert box.commands.run("echo alive").stdout == "alive\n"
    assert_expired(box, pid)


def test_set_timeout_shortens_the_lifetime() -> None:
    box = sandlot.Sandbox.create(timeout=300)
    try:
        pid = box.info.handle["pid"]
        expires = box.set_timeout(1.0)
        remaining = (expires - datetime.now(UTC)).total_seconds()
        assert 0 < remaining <= 1.0
        assert box.info.expires_at == expires
        assert box.commands.run("echo still here").stdout == "still here\n"
        assert_expired(box, pid)
        assert box.kill() is False
    finally:
        box.kill()


def test_set_timeout_extends_the_lifetime() -> None:
    box = sandlot.Sandbox.create(timeout=1.5)
    try:
        box.set_timeout(60)
        time.sleep(2.5)
        assert box.commands.run("echo extended").stdout == "extended\n"
        assert box.id in listed_ids()
    finally:
        box.kill()


CONNECT_SCRIPT = """
import sys, sandlot
sb = sandlot.Sandbox.connect(sys.argv[1])
r = sb.commands.run("cat /workspace/marker.txt; echo; echo $((6 * 7))")
print(r.stdout, end="")
sb.files.write("/workspace/reply.txt", "from the second process")
sb.close()
"""


def test_connect_from_a_second_process(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/marker.txt", "from the first process")
    done = run_python(CONNECT_SCRIPT, sb.id)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the first process\n42\n"
    # The second process's exit does not take the sandbox with it.
    assert sb.files.read("/workspace/reply.txt") == "from the second process"
    assert sb.is_running()
    assert sb.commands.run("echo owner").stdout == "owner\n"


def test_connect_in_the_same_process(sb: sandlot.Sandbox) -> None:
    other = sandlot.Sandbox.connect(sb.id)
    assert other.id == sb.id
    other.files.write("/workspace/x", "via second channel")
    assert sb.files.read("/workspace/x") == "via second channel"
    other.close()  # dropping a connection leaves the sandbox running
    assert sb.commands.run("echo ok").stdout == "ok\n"
    assert sb.id in listed_ids()


KILL_SCRIPT = """
import sys, sandlot
print(sandlot.Sandbox.connect(sys.argv[1]).kill())
"""


def test_kill_from_a_second_process(sb: sandlot.Sandbox) -> None:
    pid = sb.info.handle["pid"]
    done = run_python(KILL_SCRIPT, sb.id)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"
    assert wait_until(lambda: is_zombie_or_gone(pid), 10)
    assert sb.id not in listed_ids()
    with pytest.raises(sandlot.SandboxClosedError):
        sb.commands.run("echo too late")
    assert wait_until(lambda: not cgroup_folders(sb.id), 5)


def test_list_filters_by_metadata() -> None:
    tag = uuid.uuid4().hex
    with (
        sandlot.Sandbox.create(metadata={"suite": tag, "role": "a"}) as a,
        sandlot.Sandbox.create(metadata={"suite": tag, "role": "b"}) as b,
    ):
        assert listed_ids({"suite": tag}) == {a.id, b.id}
        assert listed_ids({"suite": tag, "role": "a"}) == {a.id}
        assert listed_ids({"suite": tag, "role": "c"}) == set()
        assert listed_ids({"suite": "no-such-tag"}) == set()
        assert {a.id, b.id} <= listed_ids()
        infos = {i.id: i for i in sandlot.Sandbox.list({"suite": tag})}
        assert infos[a.id].metadata == {"suite": tag, "role": "a"}
        assert infos[a.id].provider == "bwrap"
        assert infos[a.id].state == "running"
        assert infos[a.id].created_at < infos[a.id].expires_at
        a.kill()
        assert listed_ids({"suite": tag}) == {b.id}
    assert listed_ids({"suite": tag}) == set()


CRASH_SCRIPT = """
import time, sandlot
sb = sandlot.Sandbox.create(metadata={"purpose": "gc-test"})
sb.commands.run(["sleep", "4711"], background=True)
sb.files.write("/workspace/left-behind.txt", "x")
print(sb.id, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(90)
def test_gc_after_the_owner_is_killed_with_sigkill() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert owner.stdout is not None
        sandbox_id = owner.stdout.readline().strip()
        assert sandbox_id.startswith("sb-"), sandbox_id
        info = next(i for i in sandlot.Sandbox.list() if i.id == sandbox_id)
        assert info.owner_pid == owner.pid
        folder = sandbox_folder(sandbox_id)
        namespace = sandbox_pid_namespace(info.handle["pid"])
        groups = [Path(g) for g in info.handle.get("cgroups", [])]
        # What the crash will leave behind exists now (else the checks below prove nothing).
        assert (folder / "workspace" / "left-behind.txt").exists()
        assert processes_mentioning(str(folder))
        assert len(pids_in_namespace(namespace)) >= 2  # the agent and `sleep 4711`
        assert groups, "this host has cgroups: the sandbox should have groups"
        assert all(g.is_dir() for g in groups)
        assert set(cgroup_folders(sandbox_id)) == set(groups)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)

    report = sandlot.Sandbox.gc()

    assert sandbox_id in report.removed
    assert processes_mentioning(str(folder)) == []
    assert pids_in_namespace(namespace) == []
    assert not any(g.exists() for g in groups)
    assert cgroup_folders(sandbox_id) == []
    assert not folder.exists()
    assert sandbox_id not in listed_ids()
    assert sandbox_id not in listed_ids({"purpose": "gc-test"})
    with pytest.raises(sandlot.SandboxNotFoundError):
        sandlot.Sandbox.connect(sandbox_id)
    # A second gc has nothing left to do for it.
    again = sandlot.Sandbox.gc()
    assert sandbox_id not in again.removed
    assert sandbox_id not in again.orphans


def test_gc_leaves_live_sandboxes_alone(sb: sandlot.Sandbox) -> None:
    report = sandlot.Sandbox.gc()
    assert sb.id not in report.removed
    assert sb.id not in report.orphans
    assert sb.commands.run("echo ok").stdout == "ok\n"
    # Also from another process, which does not own it.
    done = run_python("import sandlot; r = sandlot.Sandbox.gc(); print(r.removed, r.orphans)")
    assert done.returncode == 0, done.stderr
    assert sb.id not in done.stdout
    assert sb.commands.run("echo still ok").stdout == "still ok\n"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_twenty_sandboxes_at_once() -> None:
    tag = uuid.uuid4().hex
    count = 20
    results = await asyncio.gather(
        *(
            sandlot.AsyncSandbox.create(metadata={"batch": tag}, env={"N": str(i)})
            for i in range(count)
        ),
        return_exceptions=True,
    )
    boxes = [r for r in results if isinstance(r, sandlot.AsyncSandbox)]
    try:
        errors = [r for r in results if not isinstance(r, sandlot.AsyncSandbox)]
        assert not errors, errors
        assert len({b.id for b in boxes}) == count
        assert listed_ids({"batch": tag}) == {b.id for b in boxes}
        outputs = await asyncio.gather(
            *(b.commands.run('echo "$N" > /workspace/mine; ls /workspace; cat mine') for b in boxes)
        )
        assert [o.stdout for o in outputs] == [f"mine\n{i}\n" for i in range(count)]
    finally:
        killed = await asyncio.gather(*(b.kill() for b in boxes), return_exceptions=True)
    assert killed == [True] * count
    assert listed_ids({"batch": tag}) == set()
    assert wait_until(lambda: all(not sandbox_folder(b.id).exists() for b in boxes), 5)


def test_kill_while_a_command_runs(sb: sandlot.Sandbox) -> None:
    handle = sb.commands.run("sleep 600", background=True)
    started = time.monotonic()
    assert sb.kill() is True
    with pytest.raises(sandlot.SandboxClosedError):
        handle.wait()
    assert time.monotonic() - started < 5


def test_agent_death_is_a_clear_error_and_the_sandbox_is_released(sb: sandlot.Sandbox) -> None:
    bwrap_pid = sb.info.handle["pid"]
    namespace = sandbox_pid_namespace(bwrap_pid)
    handle = sb.commands.run("sleep 600", background=True)
    agents = [
        pid
        for pid in pids_in_namespace(namespace)
        if "agent" in processes_cmdline(pid) and "sleep" not in processes_cmdline(pid)
    ]
    assert agents, "no agent process found in the sandbox"
    for pid in agents:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # gone with one killed before it (its namespace's init)
            pass
    started = time.monotonic()
    with pytest.raises(sandlot.SandboxClosedError):
        handle.wait()
    with pytest.raises(sandlot.SandboxClosedError):
        sb.commands.run("echo hello")
    assert time.monotonic() - started < 5
    # The whole sandbox goes with its agent, and its record with it.
    assert wait_until(lambda: is_zombie_or_gone(bwrap_pid), 10)
    assert wait_until(lambda: not pids_in_namespace(namespace), 10)
    assert wait_until(lambda: sb.id not in listed_ids(), 10)
    assert wait_until(lambda: not cgroup_folders(sb.id), 10)


def test_connect_to_a_killed_sandbox(sb: sandlot.Sandbox) -> None:
    sb.kill()
    with pytest.raises(sandlot.SandboxNotFoundError):
        sandlot.Sandbox.connect(sb.id)


def test_reconnect_after_close_in_the_same_process(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/kept", "still here")
    sb.close()
    again = sandlot.Sandbox.connect(sb.id)
    assert again.files.read("/workspace/kept") == "still here"
    assert again.commands.run("echo ok").stdout == "ok\n"


def start_owner(script: str) -> tuple[subprocess.Popen[str], str]:
    """Start a Python process that creates a sandbox and prints its id; return both."""
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert owner.stdout is not None
    sandbox_id = owner.stdout.readline().strip()
    assert sandbox_id.startswith("sb-"), sandbox_id
    return owner, sandbox_id


@pytest.mark.timeout(90)
def test_a_new_manager_collects_at_start() -> None:
    """No explicit gc: the next process that creates a sandbox reaps the crashed one."""
    owner, sandbox_id = start_owner(CRASH_SCRIPT)
    folder = sandbox_folder(sandbox_id)
    assert folder.exists()
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)
    done = run_python("import sandlot; sandlot.Sandbox.create().kill()")
    assert done.returncode == 0, done.stderr
    assert not folder.exists()
    assert cgroup_folders(sandbox_id) == []
    assert processes_mentioning(str(folder)) == []
    assert sandbox_id not in listed_ids()


SWEEPING_PROCESS = """
import sys, time, sandlot
sb = sandlot.Sandbox.create()  # the first create starts the manager's sweeper
print("up", flush=True)
sys.stdin.readline()
"""


def test_a_running_manager_sweeps_on_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-lived process reaps a crashed owner's sandbox without being asked."""
    monkeypatch.setenv("SANDLOT_GC_INTERVAL", "0.2")
    sweeper = subprocess.Popen(
        [sys.executable, "-c", SWEEPING_PROCESS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert sweeper.stdout is not None and sweeper.stdin is not None
        assert sweeper.stdout.readline() == "up\n"
        owner, sandbox_id = start_owner(CRASH_SCRIPT)  # created after the sweeper's first gc
        folder = sandbox_folder(sandbox_id)
        assert folder.exists()
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert wait_until(lambda: not folder.exists(), 30), "the sweeper never collected it"
        assert sandbox_id not in listed_ids()
        assert processes_mentioning(str(folder)) == []
        sweeper.stdin.write("\n")
        sweeper.stdin.flush()
        assert sweeper.wait(30) == 0
    finally:
        sweeper.kill()
        sweeper.wait()


LONG_LIVED_OWNER = """
import time, sandlot
sb = sandlot.Sandbox.create(timeout=2)
print(sb.id, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(90)
def test_lifetime_holds_even_when_the_owner_is_frozen() -> None:
    """The agent's own deadline backs the owner's timer: a stopped owner cannot keep its
    sandbox alive past its lifetime."""
    owner, sandbox_id = start_owner(LONG_LIVED_OWNER)
    try:
        info = next(i for i in sandlot.Sandbox.list() if i.id == sandbox_id)
        pid = info.handle["pid"]
        namespace = sandbox_pid_namespace(pid)
        owner.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: not pids_in_namespace(namespace), 10), "outlived its lifetime"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    sandlot.Sandbox.gc()
    assert cgroup_folders(sandbox_id) == []
    assert not sandbox_folder(sandbox_id).exists()


def test_gc_looks_only_at_host_providers_this_state_folder_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bwrap user's gc neither imports nor asks the Docker provider (once a state folder
    has used docker, gc looks for its leftovers too: tests/docker covers that)."""
    home = Path(tempfile.mkdtemp(prefix="sl-used-", dir="/tmp"))  # no other test's marks
    monkeypatch.setenv("SANDLOT_HOME", str(home))
    script = (
        "import sys, sandlot\n"
        "sandlot.Sandbox.create().kill()\n"
        "sandlot.Sandbox.gc()\n"
        "print('sandlot.providers.docker' in sys.modules)\n"
    )
    done = run_python(script)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr
    assert (home / "providers-used" / "bwrap").exists()


def test_gc_drops_a_detached_create_that_never_finished() -> None:
    """A detached create records its sandbox before it starts it; if its process dies half-
    way (a pool refill at interpreter exit), the record has no handle and no owner to wait
    for. gc drops it after a grace (so what it started is then found as an orphan), and
    leaves a create that is merely under way alone."""
    from datetime import timedelta

    from sandlot.manager.manager import NO_OWNER, UNFINISHED_CREATE, new_id
    from sandlot.models import SandboxInfo
    from sandlot.store import Store, default_home

    now = datetime.now(UTC)
    stale, fresh = new_id(), new_id()
    store = Store(default_home())
    try:
        for sandbox_id, age in ((stale, UNFINISHED_CREATE + 5), (fresh, 0)):
            created = now - timedelta(seconds=age)
            info = SandboxInfo(
                id=sandbox_id, provider="bwrap", created_at=created,
                expires_at=created + timedelta(days=1), owner_pid=NO_OWNER,
            )  # fmt: skip
            store.insert(info, None)
        report = sandlot.Sandbox.gc()
        assert stale in report.removed and store.get(stale) is None
        assert fresh not in report.removed and store.get(fresh) is not None
    finally:
        store.delete(fresh)
        store.close()
