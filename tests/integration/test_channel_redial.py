"""A channel that dials again when its connection drops (SSH hosts, flaky links).

The agent is a real bwrap sandbox; the connection runs through a Unix-socket relay in the
test, which cuts every connection as a dropped SSH session would.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

import pytest

from sandlot.channel import Channel
from sandlot.errors import SandboxClosedError
from sandlot.manager import Manager
from sandlot.models import SandboxSpec


class Relay:
    """Forwards a Unix socket to the agent's; :meth:`cut` drops every open connection."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.path = tempfile.mktemp(prefix="relay-", suffix=".sock", dir="/tmp")
        self.writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.dials = 0
        self.dialling = asyncio.Event()  # set at every dial: the channel noticed the drop
        self.gate = asyncio.Event()  # dials wait for it
        self.gate.set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def dial(self) -> socket.socket:
        self.dials += 1
        self.dialling.set()
        await self.gate.wait()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.path)
        except OSError:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        self.server.close()
        self.cut()
        Path(self.path).unlink(missing_ok=True)


@pytest.fixture
async def relayed() -> object:
    manager = Manager(Path(tempfile.mkdtemp(prefix="sl-redial-", dir="/tmp")))
    live = await manager.create(SandboxSpec(timeout=120))
    relay = Relay(live.info.handle["socket"])
    await relay.start()
    yield relay
    await relay.stop()
    await manager.close()


async def _run(channel: Channel, cmd: str) -> bytes:
    request = channel.open("exec", cmd=cmd)
    out = b""
    while True:
        kind, _, payload = await request.receive()
        if kind == 5:  # DATA
            out += payload
            request.consumed(len(payload))
        elif kind == 3:  # END
            return out


async def test_a_dropped_connection_is_dialled_again(relayed: Relay) -> None:
    channel = await Channel.connect_with(relayed.dial, redial_for=30)
    assert await _run(channel, "echo before") == b"before\n"
    in_flight = asyncio.ensure_future(_run(channel, "sleep 30"))
    await asyncio.sleep(0.2)  # the command has started (no assertion rides on this)

    relayed.cut()
    with pytest.raises(SandboxClosedError):
        await in_flight  # its output went with the connection
    # The next request waits for the new connection, then goes through.
    assert await _run(channel, "echo after") == b"after\n"
    assert relayed.accepted >= 2
    assert channel.closed is None
    channel.close()


async def test_requests_opened_during_the_redial_wait_for_it(relayed: Relay) -> None:
    channel = await Channel.connect_with(relayed.dial, redial_for=30)
    relayed.gate.clear()
    relayed.dialling.clear()
    relayed.cut()
    await relayed.dialling.wait()  # the channel is redialling, held at the gate
    calls = [asyncio.ensure_future(channel.call("ping")) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert not any(call.done() for call in calls)  # they wait, rather than fail
    relayed.gate.set()
    assert await asyncio.gather(*calls) == [{}] * 5
    channel.close()


async def test_it_gives_up_after_redial_for(relayed: Relay) -> None:
    channel = await Channel.connect_with(relayed.dial, redial_for=0.5)
    closed: list[BaseException] = []
    channel.on_close.append(closed.append)
    relayed.server.close()  # nobody answers any more
    await relayed.server.wait_closed()
    Path(relayed.path).unlink()
    relayed.dialling.clear()
    relayed.cut()
    await relayed.dialling.wait()
    with pytest.raises(SandboxClosedError, match="could not reconnect"):
        await channel.call("ping")
    assert channel.closed is not None and len(closed) == 1


async def test_without_redial_a_drop_closes_the_channel(relayed: Relay) -> None:
    channel = await Channel.connect_with(relayed.dial)
    relayed.cut()
    with pytest.raises(SandboxClosedError):
        await channel.call("ping")
    assert channel.closed is not None


async def test_close_during_a_redial_ends_it(relayed: Relay) -> None:
    channel = await Channel.connect_with(relayed.dial, redial_for=30)
    relayed.server.close()
    Path(relayed.path).unlink()
    relayed.dialling.clear()
    relayed.cut()
    await relayed.dialling.wait()
    pending = asyncio.ensure_future(channel.call("ping"))
    await asyncio.sleep(0)
    channel.close()
    with pytest.raises(SandboxClosedError):
        await pending
