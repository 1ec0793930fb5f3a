"""Health that tells the truth: a server whose event writer is dead or stuck says so (503),
and one whose writer failed once and was restarted is healthy again, with the restart counted.

The server runs in this process (uvicorn on loopback, a real SQLite store), so that the test
can break its writer the way a bug would; no sandbox is needed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn

from sandlot.server import health
from sandlot.server.app import create_app
from sandlot.server.state import ServerSettings, ServerState
from sandlot.store.keys import LOCAL_TENANT
from sandlot.supervisor import Supervisor


class Server:
    def __init__(self, app: Any, client: aiohttp.ClientSession, url: str) -> None:
        self.app = app
        self.client = client
        self.url = url

    @property
    def state(self) -> ServerState:
        state: ServerState = self.app.state.sandlot
        return state

    async def health(self, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
        async with self.client.get(self.url + path) as answer:
            return answer.status, await answer.json()

    async def metrics(self) -> str:
        async with self.client.get(self.url + "/metrics") as answer:
            return await answer.text()

    async def note(self) -> None:
        """An event through the log, committed."""
        session = await self.state.hub.write(self.state.records.create_session, LOCAL_TENANT, {})
        self.state.hub.put_nowait(session.id, None, "note", b"{}")
        await asyncio.wait_for(self.state.hub.flushed(session.id), 10)


async def serve(home: Path) -> AsyncIterator[Server]:
    app = create_app(ServerSettings(home=home))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            assert not serving.done(), serving.exception()
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as client:
            yield Server(app, client, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)


def run(home: Path, scenario: Any) -> None:
    async def main() -> None:
        async for server in serve(home):
            await asyncio.wait_for(scenario(server), 60)

    asyncio.run(main())


def writer_loop() -> Any:
    (loop,) = [x for x in Supervisor.current().loops if x.name == "event-writer"]
    return loop


def test_a_healthy_server_says_ok(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        await server.note()
        for path in ("/healthz", "/readyz"):
            status, body = await server.health(path)
            assert status == 200 and body["status"] == "ok", body
            assert body["problems"] == [] and body["events_waiting"] == 0

    run(tmp_path, scenario)


def test_a_killed_writer_makes_the_server_unhealthy(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        loop = writer_loop()
        assert loop.task is not None
        loop.task.cancel()  # killed, as a stray cancel or a bug would
        await asyncio.gather(loop.task, return_exceptions=True)
        for path in ("/healthz", "/readyz"):
            status, body = await server.health(path)
            assert status == 503 and body["status"] == "unhealthy", body
            assert any("event-writer" in p or "event writer" in p for p in body["problems"])
        metrics = await server.metrics()
        assert 'sandlot_background_loops{name="event-writer",state="failed"} 1.0' in metrics

    run(tmp_path, scenario)


def test_a_writer_that_fails_is_restarted_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(server: Server) -> None:
        hub = server.state.hub
        drain = hub._drain
        failures = []

        async def failing_once() -> None:
            if not failures:
                failures.append(1)
                raise RuntimeError("a bug in the writer")
            await drain()

        monkeypatch.setattr(hub, "_drain", failing_once)
        await server.note()  # queued before the failure, committed after the restart
        assert failures and writer_loop().restarts == 1
        status, body = await server.health()
        assert status == 200 and body["status"] == "ok", body
        metrics = await server.metrics()
        assert 'sandlot_background_restarts{name="event-writer"} 1.0' in metrics

    run(tmp_path, scenario)


def test_a_stuck_writer_makes_the_server_unhealthy_until_it_drains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "WRITER_LAG", 0.3)
    monkeypatch.setattr(health, "DATABASE_BOUND", 0.5)

    async def scenario(server: Server) -> None:
        hub = server.state.hub
        session = await hub.write(server.state.records.create_session, LOCAL_TENANT, {})
        stuck = threading.Event()
        blocking = asyncio.ensure_future(hub.write(stuck.wait, 30))  # a write that hangs
        await asyncio.sleep(0.05)
        try:
            hub.put_nowait(session.id, None, "note", b"{}")  # queued behind it
            await asyncio.sleep(0.5)
            status, body = await server.health()
            assert status == 503, body
            assert any("not draining" in p for p in body["problems"]), body
            assert any("did not answer a write" in p for p in body["problems"]), body
            assert body["events_waiting"] == 1 and body["event_lag_seconds"] > 0.3
        finally:
            stuck.set()
        await blocking
        await asyncio.wait_for(hub.flushed(session.id), 10)
        status, body = await server.health()
        assert status == 200, body

    run(tmp_path, scenario)


def test_systemd_watchdog_is_fed_only_while_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real notification socket stands where systemd's would be (sd_notify's protocol is
    one datagram per message)."""
    address = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # fed every 0.1 s

    def received() -> list[str]:
        messages = []
        while True:
            try:
                messages.append(listener.recv(256).decode())
            except BlockingIOError:
                return messages

    async def scenario(server: Server) -> None:
        await asyncio.sleep(0.5)
        messages = received()
        assert messages[0] == "READY=1" and messages.count("WATCHDOG=1") >= 2, messages
        loop = writer_loop()
        assert loop.task is not None
        loop.task.cancel()
        await asyncio.gather(loop.task, return_exceptions=True)
        await asyncio.sleep(0.3)
        received()  # what was sent before the check saw it
        await asyncio.sleep(0.5)
        assert "WATCHDOG=1" not in received()  # systemd will restart it

    try:
        run(tmp_path / "home", scenario)
        assert "STOPPING=1" in received()
    finally:
        listener.close()
