"""Warm pools, for real: bwrap sandboxes kept started, taken by ``Sandbox.create``, refilled.

Pools are set both in this process (the members' channels are held here: the in-process
take) and by the ``sandlot pool`` command in a subprocess (the members belong to nobody: the
take connects to them), and taken by this process and by concurrent subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import sandlot
from sandlot.errors import InvalidArgumentError
from sandlot.manager import Manager
from sandlot.models import SandboxSpec
from sandlot.providers import procinfo
from sandlot.sdk.sync import _portal

from .helpers import wait_until

CLI = [sys.executable, "-m", "sandlot.cli"]


def on_manager(action: Callable[[Manager], Awaitable[Any]]) -> Any:
    """``action(manager)`` on the sync SDK's event loop, with the manager it uses."""

    async def go() -> Any:
        return await action(Manager.current())

    return _portal.call(go())


def set_pool(size: int, **spec: Any) -> Any:
    return on_manager(lambda m: m.pools.set(SandboxSpec(**spec), size))


def pools() -> list[Any]:
    return on_manager(lambda m: _list(m))


async def _list(manager: Manager) -> list[Any]:
    return manager.pools.list()


def ready(**spec: Any) -> list[str]:
    key = _key(spec)
    return next((p.ready for p in pools() if p.key == key), [])


def _key(spec: dict[str, Any]) -> str:
    from sandlot.manager.manager import default_provider
    from sandlot.manager.pool import pool_key

    return pool_key(default_provider(SandboxSpec(**spec)))


def record(sandbox_id: str) -> Any:
    found = on_manager(lambda m: _get(m, sandbox_id))
    return found[0] if found else None


async def _get(manager: Manager, sandbox_id: str) -> Any:
    return manager.store.get(sandbox_id)


def running(info: Any) -> bool:
    return procinfo.is_running(info.handle.get("pid", -1), info.handle.get("started"))


def kill_whole(info: Any) -> None:
    """A member's death: bwrap and everything under it (killing bwrap's monitor alone leaves
    the sandbox running, and listed as alive)."""
    pid = info.handle["pid"]
    for each in [pid, *procinfo.descendants(pid)]:
        os.kill(each, signal.SIGKILL)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _no_pools_left() -> Iterator[None]:
    """Every pool removed (and its members killed) after each test: a later gc would
    otherwise keep refilling it."""
    yield

    async def remove_all(manager: Manager) -> None:
        for status in manager.pools.list():
            await manager.pools.remove(status.key)

    on_manager(remove_all)


def test_set_fills_the_pool_with_running_members() -> None:
    status = set_pool(2)
    assert status.size == 2 and len(status.ready) == 2 and status.filling == 0
    for sandbox_id in status.ready:
        info = record(sandbox_id)
        assert info is not None and running(info)
        assert info.owner_pid == 0  # nobody's: they outlive the process that made them
        assert info.metadata == {"sandlot.pool": status.key}
        assert (info.expires_at - datetime.now(UTC)).total_seconds() > 80000


def test_a_take_is_a_hit_indistinguishable_from_a_fresh_sandbox() -> None:
    assert cli("pool", "set", "--size", "2").returncode == 0  # members nobody holds
    members = ready()
    assert len(members) == 2
    with sandlot.Sandbox.create(metadata={"agent": "a1"}, timeout=60) as sb:
        assert sb.info.handle.get("pooled") is True
        assert sb.id in members and sb.id not in ready()
        assert sb.info.metadata == {"agent": "a1"}
        assert sb.info.owner_pid == os.getpid()
        stored = record(sb.id)
        assert stored.metadata == {"agent": "a1"} and stored.owner_pid == os.getpid()
        left = (sb.info.expires_at - datetime.now(UTC)).total_seconds()
        assert 50 < left <= 60
        assert sb.files.list("/workspace") == []
        r = sb.commands.run("echo hi; pwd; echo oops >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\n/workspace\n", "oops\n", 3)
        sb.files.write("/workspace/a.txt", "hello")
        assert sb.files.read("/workspace/a.txt") == "hello"
        sb.run_code("x = 41")
        assert sb.run_code("x + 1").text == "42"
        assert [i.id for i in sandlot.Sandbox.list({"agent": "a1"})] == [sb.id]
        pid = sb.info.handle["pid"]
        # The pool refills in the background, back to its size within seconds.
        assert wait_until(lambda: len(ready()) == 2, 10)
    assert wait_until(lambda: not procinfo.is_running(pid, stored.handle["started"]), 5)
    assert record(sb.id) is None


def test_a_take_is_much_faster_than_a_cold_create() -> None:
    set_pool(3)
    sandlot.Sandbox.create(timeout=30).kill()  # warm: the manager's first create runs gc
    assert wait_until(lambda: len(ready()) == 3, 10)

    def timed(**kwargs: Any) -> tuple[float, sandlot.Sandbox]:
        start = time.perf_counter()
        sb = sandlot.Sandbox.create(timeout=30, **kwargs)
        return time.perf_counter() - start, sb

    takes, colds = [], []
    for _ in range(3):
        seconds, sb = timed()
        assert sb.info.handle.get("pooled") is True
        takes.append(seconds)
        sb.kill()
        seconds, sb = timed(resources={"memory_mb": 300})  # no pool for this spec
        assert not sb.info.handle.get("pooled")
        colds.append(seconds)
        sb.kill()
        assert wait_until(lambda: len(ready()) == 3, 10)
    assert statistics.median(takes) < statistics.median(colds) / 2, (takes, colds)


def test_a_member_is_handed_out_once_and_killed_on_kill() -> None:
    set_pool(2)
    seen = set()
    for _ in range(4):
        sb = sandlot.Sandbox.create(timeout=30)
        assert sb.info.handle.get("pooled") is True
        assert sb.id not in seen
        seen.add(sb.id)
        info = record(sb.id)
        assert sb.kill() is True
        assert wait_until(lambda: not running(info), 5)  # noqa: B023
        assert record(sb.id) is None
        assert sb.id not in ready()
        assert wait_until(lambda: len(ready()) == 2, 10)
    assert not seen & set(ready())


def test_a_taken_member_gets_the_requested_lifetime() -> None:
    set_pool(1)
    sb = sandlot.Sandbox.create(timeout=1.5)
    assert sb.info.handle.get("pooled") is True
    info = record(sb.id)
    assert wait_until(lambda: not running(info), 8)
    assert wait_until(lambda: record(sb.id) is None, 5)


TAKER = textwrap.dedent(
    """
    import asyncio, json, sys
    import sandlot

    async def main():
        boxes = await asyncio.gather(
            *(sandlot.AsyncSandbox.create(timeout=60) for _ in range(int(sys.argv[1])))
        )
        print(json.dumps([[b.id, bool(b.info.handle.get("pooled"))] for b in boxes]), flush=True)
        sys.stdin.read()  # hold them until the test closes our stdin

    asyncio.run(main())
    """
)


def _takers(count: int, each: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", TAKER, str(each)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]


def test_concurrent_takes_in_two_processes_never_share_a_member() -> None:
    assert cli("pool", "set", "--size", "6").returncode == 0
    members = set(ready())
    takers = _takers(2, 3)
    try:
        taken = [json.loads(p.stdout.readline()) for p in takers]  # type: ignore[union-attr]
        ids = [sandbox_id for got in taken for sandbox_id, _ in got]
        hits = [sandbox_id for got in taken for sandbox_id, pooled in got if pooled]
        assert len(ids) == len(set(ids)) == 6
        assert hits and set(hits) <= members
        assert len(hits) >= 4  # both processes were served (refills may race the rest)
    finally:
        for p in takers:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(30)
    # Their owners have exited: their sandboxes ended with them; gc drops the records.
    infos = [record(i) for i in ids]
    assert wait_until(lambda: not any(running(i) for i in infos if i is not None), 10)
    sandlot.Sandbox.gc()
    assert all(record(i) is None for i in ids)


def test_a_taken_member_dies_with_its_owner_via_gc() -> None:
    assert cli("pool", "set", "--size", "1").returncode == 0
    (taker,) = _takers(1, 1)
    try:
        ((sandbox_id, pooled),) = json.loads(taker.stdout.readline())  # type: ignore[union-attr]
        assert pooled
        info = record(sandbox_id)
        assert info.owner_pid == taker.pid
    finally:
        taker.send_signal(signal.SIGKILL)
        taker.wait(10)
    report = sandlot.Sandbox.gc()
    assert sandbox_id in report.removed
    assert wait_until(lambda: not running(info), 5)


def test_remove_kills_the_members() -> None:
    status = set_pool(2)
    infos = [record(i) for i in status.ready]
    killed = on_manager(lambda m: m.pools.remove(status.key[:6]))
    assert sorted(killed) == sorted(status.ready)
    assert pools() == []
    assert wait_until(lambda: not any(running(i) for i in infos), 5)
    assert all(record(i.id) is None for i in infos)
    # No pool: a create is cold again.
    with sandlot.Sandbox.create(timeout=30) as sb:
        assert not sb.info.handle.get("pooled")


def test_a_smaller_size_kills_the_surplus() -> None:
    status = set_pool(3)
    smaller = set_pool(1)
    assert len(smaller.ready) == 1
    gone = [record(i) for i in status.ready if i not in smaller.ready]
    assert gone == [None, None]


def test_gc_removes_dead_members_and_refills() -> None:
    # Made by another process: nobody here notices the death but gc (a member made here is
    # released at once, by the manager that holds its process).
    assert cli("pool", "set", "--size", "2").returncode == 0
    victim = record(ready()[0])
    kill_whole(victim)
    assert wait_until(lambda: not running(victim), 5)
    report = sandlot.Sandbox.gc()
    # This gc, or the sweep of a manager of this process that ran first, removed it.
    assert victim.id in report.removed or record(victim.id) is None
    assert victim.id not in ready()
    assert wait_until(lambda: len(ready()) == 2, 10)


def test_a_dead_member_is_skipped_at_take() -> None:
    assert cli("pool", "set", "--size", "2").returncode == 0
    members = ready()
    oldest = record(members[0])  # the next to be taken
    kill_whole(oldest)
    assert wait_until(lambda: not running(oldest), 5)
    with sandlot.Sandbox.create(timeout=30) as sb:
        assert sb.info.handle.get("pooled") is True and sb.id == members[1]
        assert sb.commands.run("echo ok").stdout == "ok\n"
    assert record(oldest.id) is None


def test_specs_that_cannot_be_pooled_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="network policy"):
        set_pool(1, network={"allow": ["example.com"]})
    with pytest.raises(InvalidArgumentError, match="secret"):
        set_pool(1, env={"TOKEN": {"secret": "nope"}})
    with pytest.raises(InvalidArgumentError, match="size"):
        set_pool(-1)
    assert pools() == []


def test_a_pool_matches_its_spec_exactly() -> None:
    set_pool(1, resources={"memory_mb": 256}, env={"A": "1"})
    with sandlot.Sandbox.create(timeout=30, env={"A": "1"}) as sb:  # other memory: cold
        assert not sb.info.handle.get("pooled")
    with sandlot.Sandbox.create(timeout=30, env={"A": "1"}, resources={"memory_mb": 256}) as sb:
        assert sb.info.handle.get("pooled") is True
        assert sb.commands.run("echo $A").stdout == "1\n"


def test_cli_set_ls_rm() -> None:
    done = cli("pool", "set", "--size", "2", "--memory-mb", "256", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["size"] == 2 and row["ready"] == 2 and row["spec"]["resources"]["memory_mb"] == 256
    listed = cli("pool", "ls", "--json")
    assert [r["key"] for r in json.loads(listed.stdout)] == [row["key"]]
    table = cli("pool", "ls")
    assert row["key"] in table.stdout and "memory_mb=256" in table.stdout
    removed = cli("pool", "rm", row["key"][:8])
    assert removed.returncode == 0 and "2 sandboxes killed" in removed.stderr
    assert json.loads(cli("pool", "ls", "--json").stdout) == []
    assert all(record(i) is None for i in row["members"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "--size", "-1"], "--size must be 0 or more"),
        (["set", "--size", "1", "--provider", "nope"], "unknown provider 'nope'"),
        (["set", "--size", "1", "--provider", "ssh"], "local providers only"),
        (["set", "--size", "1", "--image", "debian"], "image"),
        (["set"], "--size"),
        (["rm"], "give pool keys"),
        (["rm", "ffff0000"], "no pool with key"),
    ],
)
def test_cli_bad_input(args: list[str], message: str) -> None:
    done = cli("pool", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
