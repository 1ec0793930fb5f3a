"""A second, raw connection to an agent on this machine, over which it hands accepted
sockets to the host (``SCM_RIGHTS``).

The sandbox's egress and bridge connections are accepted by the agent inside the sandbox. When
the agent's socket is a Unix socket on this host (bwrap, docker, process), the agent passes
each accepted socket here instead of carrying its bytes over the channel: the host then
serves it as it would any socket, and the data no longer crosses the agent and the channel
(two processes and four copies fewer per byte). The socket stays in the sandbox's network
namespace, connected to the agent's loopback port; nothing of the host's enters the sandbox.

asyncio's transports cannot receive descriptors, so this connection is read with ``recvmsg``
by hand. It carries the agent's HELLO, then one ``listen`` request (id 1) and its events.

Everything on it comes from the sandbox, descriptors included, and is bounded here:

- one read takes at most one descriptor (the agent sends one per frame, each frame with
  its own ``sendmsg``); the kernel closes any more and sets ``MSG_CTRUNC``, which ends the
  hand-off;
- a descriptor belongs to the last frame that starts in the bytes read with it (the kernel
  never returns data past a message that carried descriptors): that frame must be an
  ``accept`` event with ``"fd": true``, or the descriptor is closed and the hand-off ends;
  a descriptor that arrives in the middle of a frame ends it too;
- at most :data:`MAX_PENDING` descriptors wait for the rest of their frame, and at most
  :data:`MAX_QUEUED` events wait for the consumer (then reading pauses);
- only connected TCP sockets are handed on; anything else is closed.

A hand-off ended for misbehaviour yields one ``{"event": "error", "error": ProtocolError}``
(no dial again) and closes every descriptor it still holds.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import stat
from collections import deque
from typing import Any

from ..agent import protocol as p
from ..errors import ProtocolError, SandboxClosedError
from .connection import error_from, json_object

READ_SIZE = 64 * 1024
FDS_PER_READ = 1  # the agent attaches one descriptor to one frame, one sendmsg each
# Room for exactly one descriptor (CMSG_SPACE would round up to room for two).
ANCILLARY = socket.CMSG_LEN(FDS_PER_READ * array.array("i").itemsize)
MAX_FRAME = 64 * 1024  # the events of a listen request are small JSON objects
MAX_PENDING = 2  # descriptors read before their frame is complete (an honest agent: <= 2)
MAX_QUEUED = 256  # events the consumer has not taken yet; more, and reading pauses
LISTEN_ID = 1

Item = tuple[dict[str, Any], socket.socket | None]


class Handoff:
    """``await Handoff.open(sock, name=..., env=..., takeover=...)``, then ``await next()``
    for each ``(event, socket or None)`` until the agent ends the request (None)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._received = 0  # bytes read so far: the stream offset of the buffer's end
        # Descriptors whose frame is not complete yet: (fd, first, end) of the bytes read
        # with each (stream offsets).
        self._fds: deque[tuple[int, int, int]] = deque()
        self._events: asyncio.Queue[Item | None] = asyncio.Queue()
        self._greeted = False
        self._reading = False
        self._closed = False
        self.taken_over = False  # the agent ended the request: another host serves it
        self.error: ProtocolError | None = None  # why the hand-off was ended, if it misbehaved

    @classmethod
    async def open(cls, sock: socket.socket, **listen: Any) -> Handoff:
        sock.setblocking(False)
        handoff = cls(sock)
        payload = p.dumps({"op": "listen", "handoff": True, **listen})
        await handoff._loop.sock_sendall(sock, p.pack(p.REQUEST, LISTEN_ID, payload) + payload)
        handoff._read(True)
        return handoff

    async def next(self) -> Item | None:
        """The next event of the listen request, with the socket it brought; None at its
        end (another host took the listener over, the connection closed, or it misbehaved)."""
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)  # every later call sees the end too
        elif not self._reading and self._events.qsize() < MAX_QUEUED // 2:
            self._read(True)
        return item

    def _read(self, on: bool) -> None:
        if self._closed or on == self._reading:
            return
        self._reading = on
        if on:
            self._loop.add_reader(self.sock.fileno(), self._readable)
        else:
            self._loop.remove_reader(self.sock.fileno())

    def _readable(self) -> None:
        try:
            data, ancillary, flags, _ = self.sock.recvmsg(READ_SIZE, ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary, flags = b"", [], 0
        first, self._received = self._received, self._received + len(data)
        try:
            for level, kind, raw in ancillary:  # take ownership of every descriptor first
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
                    self._fds.extend((fd, first, self._received) for fd in fds)
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError("the agent sent more descriptors than one frame carries")
            if len(self._fds) > MAX_PENDING:
                raise ProtocolError("the agent sent descriptors without their frames")
            if not data:
                self._end()
                return
            self._buffer += data
            self._parse()
        except ProtocolError as exc:
            self._end(exc)
            return
        if self._events.qsize() >= MAX_QUEUED:
            self._read(False)  # the consumer is behind: let the agent's side fill up

    def _parse(self) -> None:
        buf = self._buffer
        offset = 0
        try:
            while len(buf) - offset >= p.HEADER_SIZE and not self._closed:
                length, kind, stream, rid = p.HEADER.unpack_from(buf, offset)
                if length > MAX_FRAME:
                    raise ProtocolError(f"a {length}-byte frame on the hand-off connection")
                end = offset + p.HEADER_SIZE + length
                if len(buf) < end:
                    return
                start = self._received - len(buf) + offset  # stream offsets of the frame
                fd = self._fd_for(start, self._received - len(buf) + end)
                payload = bytes(buf[offset + p.HEADER_SIZE : end])
                offset = end
                self._on_frame(kind, stream, rid, payload, fd)
        finally:
            del buf[:offset]

    def _fd_for(self, start: int, end: int) -> int | None:
        """The descriptor the frame at [start, end) brought, if any: the one read with bytes
        that end inside it, if the frame starts within those bytes."""
        if not self._fds or self._fds[0][2] > end:
            return None
        fd, first, _ = self._fds.popleft()
        if self._fds and self._fds[0][2] <= end:
            os.close(fd)
            raise ProtocolError("two descriptors arrived with one frame")
        if first > start:
            os.close(fd)
            raise ProtocolError("a descriptor arrived in the middle of a frame")
        return fd

    def _on_frame(self, kind: int, stream: int, rid: int, payload: bytes, fd: int | None) -> None:
        try:
            event = self._check(kind, stream, rid, payload, fd is not None)
            if fd is not None and (event is None or event.get("fd") is not True):
                raise ProtocolError(f"a descriptor came with a frame of kind {kind}")
        except ProtocolError:
            if fd is not None:
                os.close(fd)
            raise
        if event is None:
            return
        taken = None
        if fd is not None:
            taken = _tcp_socket(fd)
            if taken is None:
                return  # not what an agent accepts: dropped (it is the sandbox's word)
        self._events.put_nowait((event, taken))

    def _check(
        self, kind: int, stream: int, rid: int, payload: bytes, has_fd: bool
    ) -> dict[str, Any] | None:
        """The event a frame brings (None for the hello and the end); ProtocolError for
        anything an agent does not send here."""
        if stream != 0:
            raise ProtocolError(f"stream {stream} on the hand-off connection")
        if not self._greeted:
            if kind != p.HELLO or rid != 0:
                raise ProtocolError("the hand-off connection did not start with a hello")
            json_object(payload, "hello")
            self._greeted = True
            return None
        if rid != LISTEN_ID:
            raise ProtocolError(f"a frame of kind {kind} for request {rid} on the hand-off")
        if kind in (p.END, p.ERROR):
            message = json_object(payload, "answer")
            self.taken_over = kind == p.END
            if kind == p.ERROR:
                self._events.put_nowait(({"event": "error", "error": error_from(message)}, None))
            self._end()
            return None
        if kind != p.EVENT:
            raise ProtocolError(f"unexpected frame kind {kind} on the hand-off connection")
        event = json_object(payload, "event")
        if event.get("fd") is True:
            if not has_fd:
                raise ProtocolError("an accepted connection arrived without its socket")
        elif event.get("event") == "accept" and not _is_id(event.get("id")):
            raise ProtocolError("an accepted connection without an id")
        return event

    def _end(self, error: ProtocolError | None = None) -> None:
        if self._closed:
            return
        self._read(False)
        self._closed = True
        self.sock.close()
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft()[0])
        if error is not None:  # what it queued is the misbehaving sandbox's too: dropped
            self.error = error
            self._drain()
            self._events.put_nowait(({"event": "error", "error": error}, None))
        self._events.put_nowait(None)

    def _drain(self) -> None:
        while not self._events.empty():
            item = self._events.get_nowait()
            if item is not None and item[1] is not None:
                item[1].close()

    def close(self) -> None:
        """End the hand-off; sockets handed over but not taken by :meth:`next` are closed."""
        self._end()
        self._drain()
        self._events.put_nowait(None)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tcp_socket(fd: int) -> socket.socket | None:
    """The descriptor as a connected TCP socket, or None (closed) if it is anything else: it
    comes from inside the sandbox, and a file, a pipe or a listening socket must not be
    read as a client."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError("not a socket")
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    try:
        if (
            sock.family not in (socket.AF_INET, socket.AF_INET6)
            or sock.type != socket.SOCK_STREAM
            or sock.proto not in (0, socket.IPPROTO_TCP)
        ):
            raise OSError("not a TCP socket")
        sock.getpeername()  # raises unless connected
    except OSError:
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
