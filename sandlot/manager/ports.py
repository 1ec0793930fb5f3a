"""Exposed ports, embedded: a local port from a pool forwards TCP to a port in the sandbox.

Each exposed port is a listener on 127.0.0.1 (never beyond: the sandbox's service is the
caller's, not the network's) whose connections ride the agent's channel (op ``connect``),
so the sandbox's own network stays off. The pool is ``SANDLOT_PORT_RANGE`` (default
30000-30999). Which host port serves which sandbox port is in the store: a process that
connects to the sandbox later (after a restart) listens on the same ports again; a kill
releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable

from ..channel import Channel
from ..channel.tunnel import open_tunnel, splice
from ..errors import InvalidArgumentError, PortError, SandlotError
from ..store import Store

log = logging.getLogger("sandlot")
DEFAULT_RANGE = (30000, 30999)
HTTP_REQUEST = re.compile(rb"^[A-Z]{3,10} \S+ HTTP/1\.[01]\r?\n")
SNIFF_TIMEOUT = 1.0
READ_LIMIT = 1 << 20  # how long a refused connection waits to see whether it speaks HTTP

ChannelFor = Callable[[], Awaitable[Channel]]


def port_range() -> tuple[int, int]:
    raw = os.environ.get("SANDLOT_PORT_RANGE")
    if not raw:
        return DEFAULT_RANGE
    low, _, high = raw.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise InvalidArgumentError(f"SANDLOT_PORT_RANGE must be FIRST-LAST, got {raw!r}") from None
    if not 1024 <= first <= last <= 65535:
        raise InvalidArgumentError(f"SANDLOT_PORT_RANGE must lie within 1024-65535: {raw!r}")
    return first, last


def check_port(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InvalidArgumentError(f"port must be a number from 1 to 65535, got {port!r}")
    return port


class PortForwards:
    """The listeners of this process, by (sandbox id, sandbox port)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self._connections: set[asyncio.Task[None]] = set()

    async def expose(self, sandbox_id: str, port: int, channel_for: ChannelFor) -> int:
        """The host port forwarding to ``port`` (checked by the caller) in the sandbox,
        listening from now on."""
        key = (sandbox_id, port)
        recorded = self.store.host_port(sandbox_id, port)
        if key in self._servers and recorded is not None:
            return recorded
        if recorded is not None:
            # Recorded by an earlier process: listen there again, unless someone still does.
            with contextlib.suppress(OSError):
                await self._listen(key, recorded, channel_for)
            return recorded
        first, last = port_range()
        taken = self.store.taken_ports()
        for host_port in range(first, last + 1):
            if host_port in taken:
                continue
            try:
                sock = _bind(host_port)
            except OSError:
                continue  # another program has it
            if not self.store.claim_port(sandbox_id, port, host_port):
                sock.close()  # another sandlot process got there first
                continue
            await self._serve(key, sock, channel_for)
            return host_port
        raise PortError(
            f"no free port left in {first}-{last} to expose port {port} "
            "(widen SANDLOT_PORT_RANGE, or kill sandboxes you no longer need)"
        )

    async def rebuild(self, sandbox_id: str, channel_for: ChannelFor) -> None:
        """Listen again on every port recorded for the sandbox (after a restart)."""
        for port, host_port in self.store.ports(sandbox_id):
            if (sandbox_id, port) not in self._servers:
                try:
                    await self._listen((sandbox_id, port), host_port, channel_for)
                except OSError as exc:  # still served by a live process, or taken
                    log.debug("port %d of %s not rebuilt: %s", host_port, sandbox_id, exc)

    async def _listen(self, key: tuple[str, int], host_port: int, channel_for: ChannelFor) -> None:
        await self._serve(key, _bind(host_port), channel_for)

    async def _serve(
        self, key: tuple[str, int], sock: socket.socket, channel_for: ChannelFor
    ) -> None:
        port = key[1]

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await _forward(reader, writer, port, channel_for)
            except asyncio.CancelledError:  # closing down: end quietly (asyncio would log it)
                writer.close()
            finally:
                self._connections.discard(task)

        try:
            # A deep reader buffer: the client's bytes go on in frames of up to 1 MiB.
            self._servers[key] = await asyncio.start_server(on_client, sock=sock, limit=READ_LIMIT)
        except BaseException:
            sock.close()
            raise

    def close(self, sandbox_id: str) -> None:
        """Stop listening for this sandbox (it was killed; the store forgets its ports)."""
        for key in [k for k in self._servers if k[0] == sandbox_id]:
            self._servers.pop(key).close()

    async def close_all(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)


def _bind(host_port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # On Linux SO_REUSEADDR still refuses a port another socket listens on; it only
        # allows one whose old connections linger in TIME_WAIT (a restart's ports).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", host_port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EACCES:
            raise OSError(exc.errno, f"not allowed to listen on port {host_port}") from None
        raise
    sock.setblocking(False)
    return sock


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, channel_for: ChannelFor
) -> None:
    try:
        channel = await channel_for()
        request = await open_tunnel(channel, port)
    except SandlotError as exc:
        await _refuse(reader, writer, exc)
        return
    except Exception as exc:  # never leave a client hanging on an unexpected failure
        log.warning("exposed port %d: %s", port, exc)
        writer.close()
        return
    try:
        await splice(request, reader, writer)
    except SandlotError as exc:  # the sandbox went away mid-connection
        log.debug("exposed port %d: %s", port, exc)
        writer.close()


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: SandlotError
) -> None:
    """An HTTP client gets a clean 502 saying why; anything else sees the connection close."""
    try:
        first = await asyncio.wait_for(reader.readline(), SNIFF_TIMEOUT)
    except (TimeoutError, ConnectionError, OSError, ValueError):
        first = b""
    if HTTP_REQUEST.match(first):
        body = json.dumps(error.to_dict()).encode()
        head = (
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(head.encode() + body)
            await writer.drain()
    writer.close()
