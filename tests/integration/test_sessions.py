"""Durable sessions, embedded: real bwrap sandboxes, the local workspace store, the store's
SQLite database. Timed behaviour (leases, idle, delete_after, periodic checkpoints) is driven
by calling the reaper's pass directly, so no test waits on the reaper's interval."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import sandlot
from sandlot.manager.sessions import Sessions

from .egress_helpers import put_secret

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sessions(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sessions]:
    """This loop's sessions, whose background reaper passes only once (at its start): the
    tests call :meth:`Sessions.reap` themselves, when they mean to."""
    monkeypatch.setenv("SANDLOT_REAP_INTERVAL", "3600")
    found = await Sessions.local()
    yield found
    await found.close()


def kinds(events: list[sandlot.SessionEvent]) -> list[str]:
    return [e.kind if e.kind not in ("sandbox", "checkpoint") else f"{e.kind}:{e.data['event']}"
            for e in events]  # fmt: skip


async def test_workspace_and_transcript_outlive_sandboxes(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create(metadata={"user": "ana"})
    assert s.info.workspace == "local" and s.info.metadata == {"user": "ana"}
    async with s.sandbox(provider="bwrap") as sb:
        first = sb.id
        r = await sb.commands.run(
            "mkdir -p /workspace/d/e && echo x > /workspace/note && ln -s note /workspace/link"
            " && printf '\\x00\\xff' > /workspace/d/e/bin && chmod 700 /workspace/d && echo ok"
        )
        assert r.stdout == "ok\n"
    info = await s.refresh()
    assert info.sandbox_id is None and info.checkpoint == 1
    assert await sandlot.AsyncSandbox.list() == [] or first not in {
        i.id for i in await sandlot.AsyncSandbox.list()
    }
    again = await sandlot.AsyncSession.connect(s.id)
    async with again.sandbox() as sb:
        assert sb.id != first
        assert await sb.files.read("/workspace/note") == "x\n"
        r = await sb.commands.run(
            "readlink /workspace/link; stat -c %a /workspace/d; od -An -tx1 /workspace/d/e/bin"
        )
        assert r.stdout.split() == ["note", "700", "00", "ff"]
    events = await s.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # gapless, in order
    assert kinds(events)[:3] == ["session", "sandbox:attached", "started"]
    attached = [e.data["sandbox"] for e in events if e.kind == "sandbox" and
                e.data["event"] == "attached"]  # fmt: skip
    assert attached == [first, sb.id]
    out = "".join(e.text or "" for e in events if e.kind == "stdout")
    assert out.startswith("ok\n") and "note" in out
    later = await s.events(after=3)
    assert [e.seq for e in later] == [e.seq for e in events[3:]], [e.kind for e in later]


async def test_code_context_state_follows_the_session(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create()
    async with s.sandbox() as sb:
        ctx = await sb.create_code_context(name="main", persist=True)
        assert (await sb.run_code("x = 41", context=ctx)).error is None
    async with s.sandbox() as sb:
        ctx = await sb.create_code_context(name="main", persist=True)
        assert (await sb.run_code("x + 1", context=ctx)).text == "42"
    code = [e for e in await s.events() if e.kind == "started" and e.data["op"] == "code.run"]
    assert [e.data["code"] for e in code] == ["x = 41", "x + 1"]


async def test_resume_after_the_sandbox_was_killed_from_outside(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create()
    sb = await s.sandbox()
    await sb.files.write("/workspace/saved", "before the checkpoint")
    info = await s.checkpoint()
    assert info.number == 1 and info.changed == 1
    await sb.files.write("/workspace/lost", "after it")
    # Another process kills it with SIGKILL to the whole sandbox (not through the SDK).
    pid = sb.info.handle.get("pid")
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (await s.refresh()).sandbox_id is not None and time.monotonic() < deadline:
        await sessions.reap()
        await asyncio.sleep(0.1)
    assert (await s.refresh()).sandbox_id is None
    async with s.sandbox() as fresh:
        assert await fresh.files.read("/workspace/saved") == "before the checkpoint"
        # Its release (this process's manager saw it die) saved what it had, too.
        assert await fresh.files.read("/workspace/lost") == "after it"


async def test_run_lock_busy_and_forced_takeover(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create()
    other = await sandlot.AsyncSession.connect(s.id)
    first = await s.sandbox()
    with pytest.raises(sandlot.SessionBusyError, match="attached by"):
        await other.sandbox()  # a second sandbox while the first is held
    polite = await other.sandbox(reuse=True)  # the same computer, shared
    assert polite.id == first.id
    long_run = asyncio.ensure_future(first.commands.run("sleep 30", timeout=60))
    await asyncio.sleep(0.5)
    with pytest.raises(sandlot.SessionBusyError) as busy:
        await polite.commands.run("echo hi")
    assert busy.value.details["holder"] and busy.value.details["since"] <= time.time()
    rude = await other.sandbox(reuse=True, force=True)
    started = time.monotonic()
    assert (await rude.commands.run("echo mine")).stdout == "mine\n"
    with pytest.raises(sandlot.RunCancelledError):
        await long_run
    assert time.monotonic() - started < 10  # the takeover is bounded
    events = await s.events()
    cancelled = [e for e in events if e.kind == "cancelled"]
    assert len(cancelled) == 1
    errors = [e.data["code"] for e in events if e.kind == "error"]
    assert errors == ["run_cancelled"]
    for sb in (rude, polite):
        await other.detach(sb, stop=False)
    await s.detach(first)
    assert (await s.refresh()).sandbox_id is None


async def test_a_background_service_does_not_hold_the_lock(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create()
    async with s.sandbox() as sb:
        server = await sb.commands.run("sleep 30", background=True)
        assert (await sb.commands.run("echo still free")).stdout == "still free\n"
        await server.kill()


async def test_lease_expires_when_its_holder_is_killed(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create()
    script = (
        "import sys, time, sandlot\n"
        "s = sandlot.Session.connect(sys.argv[1])\n"
        "sb = s.sandbox(lease_ttl=1)\n"
        "sb.files.write('/workspace/work', 'done by the holder')\n"
        "print(sb.id, flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, s.id],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None
        sandbox_id = holder.stdout.readline().strip()
        assert sandbox_id.startswith("sb-")
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        # The sandbox outlives its holder (it is detached) until the lease runs out.
        assert sandbox_id in {i.id for i in await sandlot.AsyncSandbox.list()}
        await asyncio.sleep(1.2)
        done = await sessions.reap()
        assert (s.id, "lease expired") in done
    finally:
        holder.kill()
    assert sandbox_id not in {i.id for i in await sandlot.AsyncSandbox.list()}
    info = await s.refresh()
    assert info.sandbox_id is None and info.checkpoint == 1
    async with s.sandbox() as sb:
        assert await sb.files.read("/workspace/work") == "done by the holder"
    assert "lease" in {e.kind for e in await s.events()}


async def test_idle_timeout_stops_but_never_during_a_run(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create(idle_timeout=0.5)
    sb = await s.sandbox()
    await sb.files.write("/workspace/f", "kept")
    run = asyncio.ensure_future(sb.commands.run("sleep 1.5; echo finished"))
    await asyncio.sleep(0.8)
    assert await sessions.reap() == []  # a run holds the lock: not idle
    assert (await run).stdout == "finished\n"
    await asyncio.sleep(0.6)
    assert (s.id, "idle") in await sessions.reap()
    info = await s.refresh()
    assert info.sandbox_id is None and info.checkpoint == 1
    async with s.sandbox() as again:
        assert await again.files.read("/workspace/f") == "kept"


async def test_periodic_checkpoints_and_delete_after(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create(checkpoint_every=0.3, delete_after=3)
    async with s.sandbox() as sb:
        await sb.files.write("/workspace/f", "1")
        await asyncio.sleep(0.4)
        assert (s.id, "checkpoint") in await sessions.reap()
        saved: list[Any] = []
        for _ in range(100):  # the event goes through the log's writer: soon, not at once
            saved = [e for e in await s.events() if e.kind == "checkpoint"]
            if saved:
                break
            await asyncio.sleep(0.05)
        assert saved[-1].data["why"] == "periodic" and saved[-1].data["changed"] == 1
    await asyncio.sleep(max(0.0, s.info.delete_after.timestamp() - time.time()) + 0.1)  # type: ignore[union-attr]
    await sessions.reap()  # deletes it, unless the process's own reaper loop did just before
    with pytest.raises(sandlot.SessionNotFoundError):
        await sandlot.AsyncSession.connect(s.id)
    store = sessions.workspaces.store("local")
    assert await store.latest(s.id) is None


async def test_secret_values_are_masked_in_the_transcript(sessions: Sessions) -> None:
    put_secret("SESSION_TOKEN", "tok-3141592653")
    s = await sandlot.AsyncSession.create()
    async with s.sandbox(env={"TOKEN": {"secret": "SESSION_TOKEN"}}) as sb:
        r = await sb.commands.run("echo $TOKEN; echo $T2", env={"T2": {"secret": "SESSION_TOKEN"}})
        assert "tok-3141592653" not in r.stdout
    raw = b"".join(e.raw for e in await s.events())
    assert b"tok-3141592653" not in raw


async def test_bad_input_is_refused_at_the_boundary(sessions: Sessions) -> None:
    with pytest.raises(sandlot.InvalidArgumentError, match="workspace store"):
        await sandlot.AsyncSession.create(workspace_store="ftp://x/y")
    with pytest.raises(sandlot.InvalidArgumentError, match="idle_timeout"):
        await sandlot.AsyncSession.create(idle_timeout=-1)
    with pytest.raises(sandlot.InvalidArgumentError, match="metadata"):
        await sandlot.AsyncSession.create(metadata={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(sandlot.SessionNotFoundError):
        await sandlot.AsyncSession.connect("ses-000000000000")
    s = await sandlot.AsyncSession.create()
    with pytest.raises(sandlot.InvalidArgumentError, match="after"):
        await s.events(after=-1)
    with pytest.raises(sandlot.SessionError, match="another machine"):
        await s.sandbox(provider="ssh", host="127.0.0.1")
    with pytest.raises(sandlot.SessionError, match="no sandbox attached"):
        await s.checkpoint()
    async with sandlot.AsyncSandbox.create() as plain:
        with pytest.raises(sandlot.InvalidArgumentError, match="not attached"):
            await s.detach(plain)
    # The refusals changed nothing: the session still works.
    async with s.sandbox() as sb:
        assert (await sb.commands.run("echo fine")).stdout == "fine\n"


def test_sync_session_and_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sandlot.cli", *args],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    made = cli("sessions", "create", "--meta", "who=cli")
    assert made.returncode == 0, made.stderr
    sid = made.stdout.strip()
    run = cli("run", "--session", sid, "--", "echo kept > /workspace/k; echo one")
    assert (run.returncode, run.stdout) == (0, "one\n"), run.stderr
    s = sandlot.Session.connect(sid)
    with s.sandbox() as sb:
        assert sb.files.read("/workspace/k") == "kept\n"
    listed = json.loads(cli("sessions", "ls", "--json", "--meta", "who=cli").stdout)
    assert [x["id"] for x in listed] == [sid]
    shown = json.loads(cli("sessions", "show", sid).stdout)
    assert shown["checkpoint"] == 2 and shown["sandbox_id"] is None
    lines = cli("sessions", "events", sid, "--json").stdout.splitlines()
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, len(lines) + 1))
    missing = cli("sessions", "show", "ses-000000000000")
    assert missing.returncode == 2 and "no session" in missing.stderr
    assert cli("run", "--force", "--", "true").returncode == 2  # --force needs --session
    assert cli("sessions", "rm", sid).returncode == 0
    assert cli("sessions", "show", sid).returncode == 2


async def test_follow_a_run_from_another_caller(sessions: Sessions) -> None:
    s = await sandlot.AsyncSession.create()
    async with s.sandbox() as sb:
        run = asyncio.ensure_future(sb.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done"))
        await asyncio.sleep(0.3)  # it is under way: the follower missed its start
        watcher = await sandlot.AsyncSession.connect(s.id)
        started = [e for e in await watcher.events() if e.kind == "started"]
        seen = [e async for e in watcher.follow(started[-1].execution_id)]
        assert (seen[0].kind, seen[-1].kind) == ("started", "exit")
        assert "".join(e.text or "" for e in seen) == "1\n2\n3\n"
        await run


async def test_attach_takes_a_warm_sandbox_filled_by_another_manager(sessions: Sessions) -> None:
    """A pool this process's own manager filled serves the sessions' manager: the member
    carries no session data, and its maker lets go of it (else it would release it, folder
    and all, when the session stops it)."""
    from sandlot.manager import Manager
    from sandlot.manager.pool import _FILLERS
    from sandlot.models import SandboxSpec

    pools = Manager.current().pools
    spec = SandboxSpec(env={"POOL": "sessions-test"})
    await pools.set(spec, 2)
    try:
        s = await sandlot.AsyncSession.create()
        for round_ in range(3):
            sb = await s.sandbox(env={"POOL": "sessions-test"})
            assert sb.info.handle.get("pooled")
            # Its maker let go of it: only the sessions' manager may release it.
            assert all(sb.id not in f._owned for f in _FILLERS)
            before = await sb.commands.run("ls -A /workspace")
            assert before.stdout.split() == ([] if round_ == 0 else ["n"])
            await sb.files.write("/workspace/n", str(round_))
            await s.detach(sb)  # raised SessionError when the maker removed the folder first
        assert (await s.refresh()).checkpoint == 3
    finally:
        for status in pools.list():
            await pools.remove(status.key)
