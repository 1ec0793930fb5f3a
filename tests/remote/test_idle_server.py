"""Idle timeouts through a real ``sandlot serve`` on loopback: a sandbox nobody calls is
stopped (its transcript says why), one whose client keeps calling is not, even when the calls
never reach its agent (the server tells it)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

import sandlot
from sandlot.manager.idle import agent_limit

from .server import ServerProcess
from .test_server import sse

pytestmark = pytest.mark.timeout(120)
BOUND = 30.0


def state_of(server: ServerProcess, sandbox_id: str) -> str:
    with urllib.request.urlopen(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=10) as answer:
        return str(json.load(answer)["state"])


def eventually(predicate: object, bound: float = BOUND) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_an_idle_sandbox_is_stopped_by_the_server(server: ServerProcess) -> None:
    sb = sandlot.Sandbox.create(idle_timeout=1)
    assert sb.info.idle_timeout == 1
    assert sb.commands.run("echo hi").stdout == "hi\n"
    # Asking for its state counts as use: look at the list instead, which names no sandbox.
    assert eventually(lambda: sb.id not in {i.id for i in sandlot.Sandbox.list()})
    # Gone from the list is stopped for a GET too, while its end is still being recorded.
    assert state_of(server, sb.id) == "stopped"

    def ended() -> list[dict[str, object]]:
        events = sse(f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false")
        sandbox = [e[2]["data"] for e in events if e[1] == "sandbox"]
        return [data for data in sandbox if data["event"] == "ended"]

    assert eventually(ended)
    assert ended()[0]["why"] == "idle"


def test_a_sandbox_in_use_through_the_server_is_kept(server: ServerProcess) -> None:
    used = sandlot.Sandbox.create(idle_timeout=1)
    watched = sandlot.Sandbox.create(idle_timeout=1)
    try:
        seconds = agent_limit(1) + 2  # past the agent's own limit too
        running = used.commands.run(f"sleep {seconds}; echo done", background=True)
        # ``watched`` gets only calls the server answers itself: its agent hears of them
        # only as the server's word that it is in use.
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            assert state_of(server, watched.id) == "running"
            time.sleep(0.3)
        assert running.wait().stdout == "done\n"
        assert watched.is_running()
        gone = {used.id, watched.id}
        assert eventually(lambda: not (gone & {i.id for i in sandlot.Sandbox.list()}))
    finally:
        used.kill()
        watched.kill()


def test_set_idle_timeout_through_the_server(server: ServerProcess) -> None:
    sb = sandlot.Sandbox.create(idle_timeout=None)
    try:
        sb.set_idle_timeout(1)
        assert eventually(lambda: sb.id not in {i.id for i in sandlot.Sandbox.list()})
    finally:
        sb.kill()


def test_a_durable_sessions_sandbox_is_checkpointed_then_stopped(server: ServerProcess) -> None:
    s = sandlot.Session.create()
    sb = s.sandbox(provider="bwrap", idle_timeout=1)
    sb.files.write("/workspace/notes.txt", "kept across the stop")
    assert eventually(lambda: s.refresh().sandbox_id is None and s.refresh().checkpoint == 1)
    events = [(e.kind, e.data) for e in s.events()]
    assert ("sandbox", {"event": "stopping", "sandbox": sb.id, "why": "idle"}) in events
    with s.sandbox(provider="bwrap") as again:
        assert again.files.read("/workspace/notes.txt") == "kept across the stop"
    s.delete()
