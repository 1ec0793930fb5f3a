"""Host side of the channel: one asyncio connection to an agent, multiplexed by request id.

Each request gets a :class:`Request` with its own queue of incoming frames. Inbound DATA is
bounded by the credit window: the agent may only send ``WINDOW`` bytes ahead of what the
consumer has taken (:meth:`Request.consumed`). Outbound DATA (stdin, uploads) waits for the
agent's credit in :meth:`Request.send_data`. When the connection drops, every open request
fails with :class:`~sandlot.errors.SandboxClosedError`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections import deque
from typing import Any

from ..agent import protocol as p
from ..errors import ProtocolError, SandboxClosedError, SandlotError, from_dict

GRANT_BATCH = p.WINDOW // 4  # return credit in batches, not per frame
BUFFER_MIN = 64 * 1024  # an idle channel's read buffer
BUFFER_MAX = 4 * 1024 * 1024  # a streaming channel's: one read may take this much

Frame = tuple[int, int, bytes]  # kind, stream, payload


class Request:
    """One in-flight request: receive its frames, return credit, send its data."""

    def __init__(self, channel: Channel, rid: int) -> None:
        self.channel = channel
        self.rid = rid
        self._frames: deque[Frame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: SandlotError | None = None
        self._unacked = 0
        self._send_credit = p.WINDOW
        self._credit_waiter: asyncio.Future[None] | None = None
        self._answered = False  # END or ERROR arrived (maybe not yet received)
        self.done = False

    # -- receiving --------------------------------------------------------------------------

    def _deliver(self, frame: Frame) -> None:
        self._frames.append(frame)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if frame[0] in (p.END, p.ERROR):
            # The agent is done with this request: stop any sender waiting for credit.
            self._answered = True
            if self._credit_waiter is not None and not self._credit_waiter.done():
                self._credit_waiter.set_result(None)

    def _fail(self, error: SandlotError) -> None:
        self._failure = error
        for waiter in (self._waiter, self._credit_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def receive(self) -> Frame:
        """The next frame for this request. ERROR frames are raised; END is returned."""
        while not self._frames:
            if self._failure is not None:
                raise self._failure
            self._waiter = self.channel._loop.create_future()
            await self._waiter
            self._waiter = None
        kind, stream, payload = self._frames.popleft()
        if kind in (p.END, p.ERROR):
            self._finish()
            if kind == p.ERROR:
                raise from_dict(_json(payload))
        return kind, stream, payload

    def consumed(self, amount: int) -> None:
        """The caller has taken ``amount`` bytes of DATA: let the agent send more."""
        self._unacked += amount
        if self._unacked >= GRANT_BATCH and not self.done:
            self.channel._send(p.GRANT, self.rid, p.CREDIT.pack(self._unacked), p.STDOUT)
            self._unacked = 0

    # -- sending ----------------------------------------------------------------------------

    def _grant(self, amount: int) -> None:
        self._send_credit += amount
        if self._credit_waiter is not None and not self._credit_waiter.done():
            self._credit_waiter.set_result(None)

    async def send_data(self, data: bytes, stream: int = p.STDIN) -> None:
        """Send bytes on a stream, waiting for the agent's credit as needed. Returns early
        if the agent has already answered (the answer, e.g. an error, is in :meth:`receive`)."""
        view = memoryview(data)
        while view:
            if self._answered or self.done:
                return
            while self._send_credit <= 0:
                if self._failure is not None:
                    raise self._failure
                if self._answered or self.done:
                    return
                self._credit_waiter = self.channel._loop.create_future()
                await self._credit_waiter
                self._credit_waiter = None
            if self._failure is not None:
                raise self._failure
            size = min(len(view), p.MAX_DATA, self._send_credit)
            self._send_credit -= size
            self.channel._send(p.DATA, self.rid, bytes(view[:size]), stream)
            view = view[size:]

    def send_eof(self, stream: int = p.STDIN) -> None:
        if not (self.done or self._answered):
            self.channel._send(p.EOF, self.rid, b"", stream)

    def cancel(self) -> None:
        if not self.done:
            self.channel._send(p.CANCEL, self.rid)
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.channel._requests.pop(self.rid, None)


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"agent sent malformed JSON: {exc}") from None


class _Protocol(asyncio.BufferedProtocol):
    """Reads straight into one buffer (no intermediate bytes objects) and cuts frames out of
    it; only a trailing partial frame is ever moved. The buffer starts small (a sandbox that
    sits idle costs 64 KiB here), doubles while reads fill it, up to 4 MiB for streaming, and
    shrinks back when the stream is over."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.buffer = bytearray(BUFFER_MIN)
        self.view = memoryview(self.buffer)
        self.start = 0  # first unparsed byte
        self.end = 0  # end of received data
        self.offered = 0  # size of the last buffer handed to the transport

    def _resize(self, size: int) -> None:
        """A new buffer of ``size`` bytes holding the unparsed data at its front."""
        buffer = bytearray(size)
        pending = self.end - self.start
        buffer[:pending] = self.view[self.start : self.end]
        self.start, self.end = 0, pending
        self.buffer, self.view = buffer, memoryview(buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.channel._transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        capacity = len(self.buffer)
        if capacity - self.end < capacity // 4:  # little room left at the end
            if self.start:  # compact in place: move the partial frame to the front
                pending = self.end - self.start
                self.view[:pending] = bytes(self.view[self.start : self.end])
                self.start, self.end = 0, pending
            if capacity - self.end < capacity // 4 and capacity < BUFFER_MAX:
                self._resize(min(capacity * 2, BUFFER_MAX))
        self.offered = len(self.buffer) - self.end
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        view, offset, end = self.view, self.start, self.end
        channel = self.channel
        needed = 0  # size of the incomplete frame at ``offset``, once its header is in
        while end - offset >= p.HEADER_SIZE:
            length, kind, stream, rid = p.HEADER.unpack_from(view, offset)
            if length > (p.MAX_DATA if kind == p.DATA else p.MAX_CONTROL):
                channel._broken(ProtocolError(f"oversized frame ({length} bytes)"))
                return
            frame_end = offset + p.HEADER_SIZE + length
            if frame_end > end:
                needed = p.HEADER_SIZE + length
                break
            channel._on_frame(kind, stream, rid, bytes(view[offset + p.HEADER_SIZE : frame_end]))
            offset = frame_end
        capacity = len(self.buffer)
        if offset == self.end:
            self.start = self.end = 0
            if nbytes < BUFFER_MIN // 2 < capacity:  # the stream is over: give memory back
                self._resize(BUFFER_MIN)
            elif nbytes == self.offered and capacity < BUFFER_MAX:  # reads fill it: grow
                self._resize(min(capacity * 2, BUFFER_MAX))
            return
        self.start = offset
        if needed > capacity // 2:  # a frame too large for the room we keep: make room
            self._resize(max(needed * 2, capacity))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel._broken(SandboxClosedError("the connection to the sandbox's agent closed"))


class Channel:
    """An open connection to one agent."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._requests: dict[int, Request] = {}
        self._ids = itertools.count(1)
        self._hello: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self.closed: SandlotError | None = None
        self.hello: dict[str, Any] = {}
        self.on_close: list[Any] = []  # called with the error once the connection is gone

    @classmethod
    async def connect_unix(cls, path: str, timeout: float = 10.0) -> Channel:
        """Connect to an agent's Unix socket and wait for its HELLO."""
        channel = cls()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await channel._loop.sock_connect(sock, path)
        except OSError as exc:
            sock.close()
            raise SandboxClosedError(f"cannot reach the sandbox's agent: {exc}") from None
        return await channel._start(sock, timeout)

    async def _start(self, sock: socket.socket, timeout: float) -> Channel:
        await self._loop.create_connection(lambda: _Protocol(self), sock=sock)
        try:
            self.hello = await asyncio.wait_for(asyncio.shield(self._hello), timeout)
        except TimeoutError:
            self.close()
            raise SandboxClosedError(f"the agent did not answer within {timeout:g} s") from None
        return self

    # -- frames -----------------------------------------------------------------------------

    def _send(self, kind: int, rid: int, payload: bytes = b"", stream: int = 0) -> None:
        if self._transport is None or self.closed is not None:
            return
        self._transport.write(p.pack(kind, rid, payload, stream) + payload)

    def _on_frame(self, kind: int, stream: int, rid: int, payload: bytes) -> None:
        if kind == p.HELLO:
            if not self._hello.done():
                hello = _json(payload)
                if not isinstance(hello, dict) or hello.get("version") != p.VERSION:
                    self._broken(ProtocolError(f"unsupported agent: {hello!r:.200}"))
                    return
                self._hello.set_result(hello)
            return
        request = self._requests.get(rid)
        if request is None:
            return  # a late frame for a request we gave up on
        if kind == p.GRANT:
            if len(payload) == p.CREDIT.size:
                request._grant(p.CREDIT.unpack(payload)[0])
            return
        request._deliver((kind, stream, payload))

    def _broken(self, error: SandlotError) -> None:
        if self.closed is not None:
            return
        self.closed = error
        if not self._hello.done():
            self._hello.set_exception(error)
            self._hello.exception()  # mark retrieved
        for request in list(self._requests.values()):
            request._fail(error)
        self._requests.clear()
        if self._transport is not None:
            self._transport.abort()
        for callback in self.on_close:
            callback(error)

    # -- requests ---------------------------------------------------------------------------

    def open(self, op: str, **args: Any) -> Request:
        """Start a request; its frames arrive on the returned :class:`Request`."""
        if self.closed is not None:
            raise self.closed
        rid = next(self._ids)
        request = Request(self, rid)
        self._requests[rid] = request
        args["op"] = op
        self._send(p.REQUEST, rid, json.dumps(args, separators=(",", ":")).encode())
        return request

    async def call(self, op: str, **args: Any) -> Any:
        """A request with a single JSON answer."""
        request = self.open(op, **args)
        while True:
            kind, _, payload = await request.receive()
            if kind == p.END:
                return _json(payload)

    def close(self) -> None:
        self._broken(SandboxClosedError("the channel was closed"))
