"""A second, raw connection to an agent on this machine, over which it hands accepted
sockets to the host (``SCM_RIGHTS``).

The sandbox's egress and bridge connections are accepted by the agent inside the sandbox. When
the agent's socket is a Unix socket on this host (bwrap, docker, process), the agent passes
each accepted socket here instead of carrying its bytes over the channel: the host then
serves it as it would any socket, and the data no longer crosses the agent and the channel
(two processes and four copies fewer per byte). The socket stays in the sandbox's network
namespace, connected to the agent's loopback port; nothing of the host's enters the sandbox.

asyncio's transports cannot receive descriptors, so this connection is read with ``recvmsg``
by hand. It carries one ``listen`` request and its events, nothing else.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import socket
import stat
from collections import deque
from typing import Any

from ..agent import protocol as p
from ..errors import ProtocolError, SandboxClosedError, from_dict

MAX_FDS = 64  # descriptors taken per recvmsg; the agent sends one per frame


class Handoff:
    """``await Handoff.open(sock, name=..., env=..., takeover=...)``, then ``await next()``
    for each ``(event, socket or None)`` until the agent ends the request (None)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._fds: deque[int] = deque()
        self._events: asyncio.Queue[tuple[dict[str, Any], socket.socket | None] | None] = (
            asyncio.Queue()
        )
        self._closed = False
        self.taken_over = False  # the agent ended the request: another host serves it

    @classmethod
    async def open(cls, sock: socket.socket, **listen: Any) -> Handoff:
        sock.setblocking(False)
        handoff = cls(sock)
        payload = p.dumps({"op": "listen", "handoff": True, **listen})
        await handoff._loop.sock_sendall(sock, p.pack(p.REQUEST, 1, payload) + payload)
        handoff._loop.add_reader(sock.fileno(), handoff._readable)
        return handoff

    async def next(self) -> tuple[dict[str, Any], socket.socket | None] | None:
        """The next event of the listen request, with the socket it brought; None at its
        end (another host took the listener over, or the connection closed)."""
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)  # every later call sees the end too
        return item

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * 4))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            self._end()
            return
        self._buffer += data
        try:
            self._parse()
        except ProtocolError:
            self._end()

    def _parse(self) -> None:
        buf = self._buffer
        while len(buf) >= p.HEADER_SIZE:
            length, kind, _stream, _rid = p.HEADER.unpack_from(buf, 0)
            if length > p.MAX_CONTROL:
                raise ProtocolError("a frame on the hand-off connection is too large")
            end = p.HEADER_SIZE + length
            if len(buf) < end:
                return
            payload = bytes(buf[p.HEADER_SIZE : end])
            del buf[:end]
            if kind == p.HELLO:
                continue
            if kind in (p.END, p.ERROR):
                self.taken_over = kind == p.END
                if kind == p.ERROR:
                    error = from_dict(json.loads(payload))
                    self._events.put_nowait(({"event": "error", "error": error}, None))
                self._end()
                return
            if kind != p.EVENT:
                raise ProtocolError(f"unexpected frame kind {kind} on the hand-off connection")
            event = json.loads(payload)
            taken = None
            if event.get("fd"):
                if not self._fds:
                    raise ProtocolError("an accepted connection arrived without its socket")
                taken = _tcp_socket(self._fds.popleft())
                if taken is None:
                    continue  # not what an agent accepts: dropped (it is the sandbox's word)
            self._events.put_nowait((event, taken))

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())
        self._events.put_nowait(None)

    def close(self) -> None:
        self._end()


def _tcp_socket(fd: int) -> socket.socket | None:
    """The descriptor as a connected TCP socket, or None (closed) if it is anything else: it
    comes from inside the sandbox, and a file or a pipe must not be read as a client."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError("not a socket")
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


async def dial_unix(path: str) -> socket.socket:
    """A connected, non-blocking Unix socket to ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except OSError as exc:
        sock.close()
        raise SandboxClosedError(f"cannot reach the sandbox's agent: {exc}") from None
    return sock
