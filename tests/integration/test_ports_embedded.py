"""Exposed ports in embedded mode: the pool, the store, and rebuilding after a restart."""

from __future__ import annotations

import asyncio
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from sandlot.errors import PortError
from sandlot.manager import Manager
from sandlot.models import SandboxSpec


def _home() -> Path:
    return Path(tempfile.mkdtemp(prefix="sl-ports-", dir="/tmp"))


def _port(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


async def _get(url: str) -> bytes:
    host, port = "127.0.0.1", _port(url)
    for _ in range(200):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        if answer.startswith(b"HTTP/1.0 200"):
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered")


async def _serve_http(manager: Manager, sandbox_id: str, port: int) -> None:
    live = await manager.connect(sandbox_id)
    request = live.channel.open(
        "exec", cmd=f"python3 -m http.server {port} --bind 127.0.0.1", background=True
    )
    await request.receive()  # started


async def test_ports_come_from_the_configured_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDLOT_PORT_RANGE", "31870-31871")
    manager = Manager(_home())
    try:
        live = await manager.create(SandboxSpec())
        first = await manager.expose(live.info.id, 8000, live.channel)
        second = await manager.expose(live.info.id, 8001, live.channel)
        assert {_port(first), _port(second)} == {31870, 31871}
        with pytest.raises(PortError, match="no free port left in 31870-31871"):
            await manager.expose(live.info.id, 8002, live.channel)
        # A kill gives them back.
        await manager.kill(live.info.id)
        other = await manager.create(SandboxSpec())
        assert _port(await manager.expose(other.info.id, 8000, other.channel)) == 31870
    finally:
        await manager.close()


async def test_a_port_taken_by_another_program_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDLOT_PORT_RANGE", "31880-31881")
    squatter = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 31880)
    manager = Manager(_home())
    try:
        live = await manager.create(SandboxSpec())
        assert _port(await manager.expose(live.info.id, 8000, live.channel)) == 31881
    finally:
        squatter.close()
        await manager.close()


async def test_exposed_ports_are_served_again_after_a_restart() -> None:
    home = _home()
    first = Manager(home, detached=True)  # a server: its sandboxes outlive it
    live = await first.create(SandboxSpec(timeout=120))
    sandbox_id = live.info.id
    await _serve_http(first, sandbox_id, 8000)
    url = await first.expose(sandbox_id, 8000, live.channel)
    assert (await _get(url)).startswith(b"HTTP/1.0 200")
    await first.close()  # the process "restarts": its listener is gone

    second = Manager(home, detached=True)
    try:
        await second.adopt(sandbox_id)  # rebuilt from the store, on the same port
        assert (await _get(url)).startswith(b"HTTP/1.0 200")
        assert second.store.ports(sandbox_id) == [(8000, _port(url))]
    finally:
        await second.kill(sandbox_id)
        await second.close()
    assert Manager(home).store.ports(sandbox_id) == []


async def test_the_agent_connects_to_its_own_loopback_only() -> None:
    """Whatever the host asks, the connect operation reaches nothing beyond the sandbox's
    loopback (and the sandbox has no other network anyway)."""
    from sandlot.channel.tunnel import open_tunnel
    from sandlot.errors import InvalidArgumentError

    manager = Manager(_home())
    try:
        live = await manager.create(SandboxSpec())
        for host in ("10.0.0.1", "0.0.0.0", "example.com", "::ffff:127.0.0.1", ""):
            request = live.channel.open("connect", port=80, host=host)
            with pytest.raises(InvalidArgumentError, match="loopback"):
                await request.receive()
        for port in (0, 70000, "80", True):
            request = live.channel.open("connect", port=port)
            with pytest.raises(InvalidArgumentError, match="port"):
                await request.receive()
        with pytest.raises(PortError, match="port 9"):
            await open_tunnel(live.channel, 9)  # nothing listens
    finally:
        await manager.close()
