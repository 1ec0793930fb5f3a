"""Durable sessions through a real ``sandlot serve`` (real bwrap sandboxes): attach, detach and
restore over HTTP, the transcript across sandboxes and a server restart, the run lock and a
forced takeover, lease expiry when the holder is SIGKILLed, tenants, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandlot

from .server import ServerProcess
from .test_server import http, sse


def _gapless(events: list[Any]) -> list[int]:
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    return seqs


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(120)
def test_attach_detach_and_attach_again_restores_the_workspace(server: ServerProcess) -> None:
    s = sandlot.Session.create(metadata={"test": "attach"})
    assert s.info.workspace == "local" and s.info.sandbox_id is None
    with s.sandbox(provider="bwrap") as sb:
        assert s.refresh().sandbox_id == sb.id
        assert sb.commands.run("echo x > /workspace/note; echo one").stdout == "one\n"
        first = sb.id
        lease = sb._inner._lease[1]
        # Every sandbox endpoint works on a session's sandbox.
        assert sandlot.Sandbox.connect(sb.id).files.read("/workspace/note") == "x\n"
    # Detached: checkpointed, destroyed, the session's sandbox cleared, the lease gone.
    info = s.refresh()
    assert info.sandbox_id is None and info.checkpoint == 1
    assert http("GET", f"{server.url}/v1/sandboxes/{first}")[1]["state"] == "stopped"
    status, body = http("POST", f"{server.url}/v1/sessions/{s.id}/leases/{lease}/heartbeat")
    assert status == 410 and body["code"] == "sandbox_closed"

    with s.sandbox(provider="bwrap") as sb:
        assert sb.id != first
        assert sb.files.read("/workspace/note") == "x\n"
        assert sb.commands.run("echo two").stdout == "two\n"
        checkpoint = s.checkpoint()
        assert checkpoint.number == 2 and checkpoint.files == 1
        second = sb.id

    events = s.events()
    _gapless(events)
    stdout = [e.text for e in events if e.kind == "stdout"]
    assert stdout == ["one\n", "two\n"]
    marks = [
        (e.kind, e.data["event"], e.data.get("sandbox"))
        for e in events
        if e.kind in ("sandbox", "session")
    ]
    assert marks == [
        ("session", "created", None),
        ("sandbox", "attached", first),
        ("sandbox", "ended", first),
        ("sandbox", "attached", second),
        ("sandbox", "ended", second),
    ]
    assert events[-1].kind == "sandbox"
    # after= and limit= page through it; the SSE stream has the same ids.
    assert [e.seq for e in s.events(after=3, limit=2)] == [4, 5]
    streamed = sse(f"{server.url}/v1/sessions/{s.id}/events?follow=false")
    assert [e[0] for e in streamed] == [e.seq for e in events]
    assert sse(f"{server.url}/v1/sessions/{s.id}/events?follow=false&after=4") == streamed[4:]

    assert [x.id for x in sandlot.Session.list(metadata={"test": "attach"})] == [s.id]
    s.delete()
    status, body = http("GET", f"{server.url}/v1/sessions/{s.id}")
    assert status == 404 and body["code"] == "session_not_found"


@pytest.mark.timeout(120)
def test_lock_contention_gives_409_naming_the_holder_and_force_takes_over(
    server: ServerProcess,
) -> None:
    s = sandlot.Session.create()
    one = s.sandbox(provider="bwrap", timeout=300)
    try:
        outcome: list[BaseException] = []
        seen: list[str] = []

        def long_run() -> None:
            try:
                one.commands.run(
                    "echo started; sleep 60; echo never", on_stdout=seen.append, timeout=90
                )
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=long_run)
        thread.start()
        _wait_for(lambda: "started\n" in "".join(seen), 20, "the long command")

        # Another caller, same sandbox (reuse), no force: 409 naming who holds the lock.
        other = sandlot.Client(url=server.url)
        theirs = sandlot.Session.connect(s.id, client=other)
        box = theirs.sandbox(provider="bwrap", timeout=300, reuse=True)
        assert box.id == one.id
        with pytest.raises(sandlot.SessionBusyError) as busy:
            box.commands.run("echo mine")
        assert busy.value.details["holder"] == "local"
        assert busy.value.details["since"] and "is busy" in busy.value.message
        status, body = http(
            "POST", f"{server.url}/v1/sandboxes/{one.id}/commands", {"cmd": "echo raw"}
        )
        assert status == 409 and body["code"] == "session_busy"
        assert body["details"]["holder"] == "local"

        # With force: the first run's stream ends with run_cancelled; the second runs.
        box2 = theirs.sandbox(provider="bwrap", timeout=300, reuse=True, force=True)
        started = time.monotonic()
        assert box2.commands.run("echo mine").stdout == "mine\n"
        thread.join(20)
        assert not thread.is_alive() and time.monotonic() - started < 15
        assert len(outcome) == 1 and isinstance(outcome[0], sandlot.RunCancelledError)
        assert "never" not in "".join(seen)
        assert s.refresh().lock_holder is None

        events = s.events()
        _gapless(events)
        cancelled = [i for i, e in enumerate(events) if e.kind == "cancelled"]
        ended = [
            i
            for i, e in enumerate(events)
            if e.kind == "error" and (e.data or {}).get("code") == "run_cancelled"
        ]
        assert len(cancelled) == 1 and len(ended) == 1 and cancelled[0] < ended[0]
        assert events[cancelled[0]].data["by"] == "local"
        theirs.detach(box2)  # others still hold it: it stays
        theirs.detach(box)
        assert s.refresh().sandbox_id == one.id
    finally:
        s.detach(one)
    assert s.refresh().sandbox_id is None
    s.delete()


@pytest.mark.timeout(180)
def test_the_transcript_goes_on_across_a_killed_and_restarted_server() -> None:
    home = Path(tempfile.mkdtemp(prefix="slsesr-", dir="/tmp"))
    server = ServerProcess(home, args=()).start()
    client = sandlot.Client(url=server.url)
    try:
        s = sandlot.Session.create(client=client)
        with s.sandbox(provider="bwrap", timeout=120) as sb:
            sb.commands.run("echo kept > /workspace/file; echo one")
            server.stop(signal.SIGKILL)
            time.sleep(0.5)
            server.start()  # same folder, same port: it adopts the session's sandbox
            assert sb.commands.run("echo two").stdout == "two\n"
            assert s.refresh().sandbox_id == sb.id
            first = sb.id
        with s.sandbox(provider="bwrap", timeout=120) as sb:
            assert sb.id != first
            assert sb.files.read("/workspace/file") == "kept\n"
            sb.commands.run("echo three")
        events = s.events()
        _gapless(events)
        assert len({e.seq for e in events}) == len(events)
        assert [e.text for e in events if e.kind == "stdout"] == ["one\n", "two\n", "three\n"]
        marks = [(e.data["event"], e.data.get("sandbox")) for e in events if e.kind == "sandbox"]
        assert marks[:2] == [("attached", first), ("adopted", first)]
        assert ("ended", first) in marks and marks[-1][0] == "ended"
        assert s.refresh().status == "active"  # the end of its sandbox did not end it
    finally:
        server.stop()


HOLDER = r"""
import sys, time, sandlot
s = sandlot.Session.connect(sys.argv[1])
sb = s.sandbox(provider="bwrap", lease_ttl=1.5, timeout=120)
sb.commands.run("echo saved > /workspace/work")
print(sb.id, flush=True)
time.sleep(600)
"""


@pytest.fixture
def reaping() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="slsesl-", dir="/tmp"))
    process = ServerProcess(home, env={"SANDLOT_REAP_INTERVAL": "0.2"}).start()
    yield process
    process.stop()


@pytest.mark.timeout(120)
def test_a_sigkilled_holders_lease_expires_and_the_workspace_is_saved(
    reaping: ServerProcess,
) -> None:
    client = sandlot.Client(url=reaping.url)
    s = sandlot.Session.create(client=client)
    env = {**os.environ, "SANDLOT_URL": reaping.url}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, s.id], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        sandbox_id = holder.stdout.readline().strip()
        assert sandbox_id.startswith("sb-"), sandbox_id
        time.sleep(2.5)  # longer than the lease: its heartbeats keep it
        assert s.refresh().sandbox_id == sandbox_id
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        _wait_for(lambda: s.refresh().sandbox_id is None, 20, "the lease to expire")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    state = http("GET", f"{reaping.url}/v1/sandboxes/{sandbox_id}")[1]["state"]
    assert state == "stopped"
    kinds = [(e.kind, (e.data or {}).get("event")) for e in s.events()]
    expired = kinds.index(("lease", "expired"))
    assert kinds.index(("checkpoint", "saved")) > expired
    assert kinds.index(("sandbox", "ended")) > expired
    assert s.refresh().checkpoint == 1
    with s.sandbox(provider="bwrap") as sb:
        assert sb.files.read("/workspace/work") == "saved\n"


@pytest.mark.timeout(120)
def test_another_tenant_cannot_see_the_session() -> None:
    home = Path(tempfile.mkdtemp(prefix="slsest-", dir="/tmp"))
    server = ServerProcess(home)
    alice_key = server.keys("create", "--name", "alice")
    bob_key = server.keys("create", "--name", "bob")
    server.start()
    try:
        alice = sandlot.Client(url=server.url, api_key=alice_key)
        bob = sandlot.Client(url=server.url, api_key=bob_key)
        s = sandlot.Session.create(metadata={"who": "alice"}, client=alice)
        with pytest.raises(sandlot.SessionNotFoundError):
            sandlot.Session.connect(s.id, client=bob)
        assert sandlot.Session.list(client=bob) == []
        assert [x.id for x in sandlot.Session.list(client=alice)] == [s.id]
        base = f"{server.url}/v1/sessions/{s.id}"
        for method, path, body in (
            ("GET", "", None),
            ("GET", "/events", None),
            ("DELETE", "", None),
            ("POST", "/sandboxes", {"provider": "bwrap"}),
            ("POST", "/checkpoint", None),
        ):
            status, answer = http(method, base + path, body, key=bob_key)
            assert status == 404 and answer["code"] == "session_not_found", (method, path)
        with s.sandbox(provider="bwrap") as sb:
            lease = sb._inner._lease[1]
            status, answer = http("POST", f"{base}/leases/{lease}/heartbeat", key=bob_key)
            assert status == 404
            status, answer = http("DELETE", f"{base}/leases/{lease}", key=bob_key)
            assert status == 404
            assert http("GET", f"{server.url}/v1/sandboxes/{sb.id}", key=bob_key)[0] == 404
            # The lease and lock holder is alice's key, by name.
            events = sandlot.Session.connect(s.id, client=alice).events()
            attached = [e for e in events if e.kind == "sandbox"][-1]
            assert attached.data["holder"].endswith("(alice)")
        s.delete()
    finally:
        server.stop()


def test_bad_input_answers_with_clear_errors(server: ServerProcess) -> None:
    url = f"{server.url}/v1/sessions"
    status, body = http("GET", f"{url}/ses-000000000000")
    assert status == 404 and body["code"] == "session_not_found"
    status, body = http("POST", url, {"workspace_store": "ftp://nope"})
    assert status == 422 and "workspace_store" in body["message"], body
    status, body = http("POST", url, {"idle_timeout": -1})
    assert status == 422 and "idle_timeout" in body["message"], body
    status, body = http("POST", url, {"delete_after": "2030-01-01T00:00:00"})
    assert status == 422 and "time zone" in body["message"], body
    status, body = http("POST", url, {"metadata": {"a": 1}})
    assert status == 422
    with pytest.raises(sandlot.InvalidArgumentError):
        sandlot.Session.create(workspace_store="nope")
    status, body = http("POST", url, {})
    assert status == 201
    session = body["id"]
    status, body = http("POST", f"{url}/{session}/sandboxes", {"lease_ttl": 0})
    assert status == 422 and "lease_ttl" in body["message"]
    status, body = http("POST", f"{url}/{session}/sandboxes", {"provider": "bwrap", "x": 1})
    assert status == 422
    status, body = http("POST", f"{url}/{session}/checkpoint")
    assert status == 409 and body["code"] == "session_error"
    status, body = http("POST", f"{url}/{session}/leases/ls-nope/heartbeat")
    assert status == 404
    status, body = http("GET", f"{url}/{session}/events?after=-1")
    assert status == 422
    assert http("DELETE", f"{url}/{session}")[0] == 204
    assert json.dumps(http("GET", f"{url}/{session}")[1]).count("session_not_found") == 1


@pytest.mark.timeout(60)
def test_the_transcript_follows_live_over_sse_and_keeps_bytes_exact(server: ServerProcess) -> None:
    s = sandlot.Session.create()
    with s.sandbox(provider="bwrap", timeout=120) as sb:
        request = urllib.request.Request(
            f"{server.url}/v1/sessions/{s.id}/events",
            headers={"Accept": "text/event-stream", "Last-Event-ID": "1"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            sb.commands.run("echo live")
            received = b""
            while b'"text":"live\\n"' not in received:
                chunk = answer.read1(65536)
                assert chunk, received
                received += chunk
        sb.commands.run(r"printf 'caf\xc3\xa9 \xff\n'")
    ids = [int(line[4:]) for line in received.decode().splitlines() if line.startswith("id: ")]
    assert ids[0] == 2 and ids == list(range(2, 2 + len(ids)))  # resumed after Last-Event-ID
    output = [e for e in s.events() if e.kind == "stdout"]
    assert output[0].text == "live\n"
    assert output[1].raw == b"caf\xc3\xa9 \xff\n" and output[1].text == "café \ufffd\n"
    s.delete()


@pytest.mark.timeout(60)
def test_a_forced_takeover_interrupts_a_cell_and_keeps_its_context(server: ServerProcess) -> None:
    s = sandlot.Session.create()
    one = s.sandbox(provider="bwrap", timeout=120)
    try:
        one.run_code("x = 41")
        outcome: list[BaseException] = []
        seen: list[str] = []

        def long_cell() -> None:
            try:
                one.run_code("import time\nprint('go', flush=True)\ntime.sleep(60)")
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=long_cell)
        thread.start()
        _wait_for(lambda: any(e.text == "go\n" for e in s.events()), 20, "the long cell")
        theirs = sandlot.Session.connect(s.id, client=sandlot.Client(url=server.url))
        two = theirs.sandbox(provider="bwrap", timeout=120, reuse=True, force=True)
        assert two.run_code("x + 1").text == "42"  # the context kept its state
        thread.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], sandlot.RunCancelledError)
        seen.extend(e.kind for e in s.events())
        assert seen.index("cancelled") < seen.index("error")
        theirs.detach(two)
    finally:
        s.detach(one)
    s.delete()
