"""Host side of the channel: one asyncio connection to an agent, multiplexed by request id.

Each request gets a :class:`Request` with its own queue of incoming frames. Inbound DATA is
bounded by the credit window: the agent may only send ``WINDOW`` bytes ahead of what the
consumer has taken (:meth:`Request.consumed`). Outbound DATA (stdin, uploads) waits for the
agent's credit in :meth:`Request.send_data`. When the connection drops, every open request
fails with :class:`~sandlot.errors.SandboxClosedError`; a channel made with
:meth:`Channel.connect_with` and ``redial_for`` dials again instead of closing for good.

Everything the agent sends is untrusted (the sandbox is hostile). A frame is refused on its
header (a kind the agent does not send, a payload longer than its kind allows, a stream its
kind does not use) or on arrival: anything before the HELLO or a second HELLO, a request id
the host never opened, control payloads that are not JSON objects, DATA past the credit the
host gave, credit the host never used, more unread control frames than :data:`MAX_BACKLOG`.
A refused frame ends the channel for good with :class:`~sandlot.errors.ProtocolError` (its
``on_close`` callbacks see it: the manager then kills the sandbox). Frames for requests that
were cancelled or have answered are dropped. Every check is O(1) per DATA frame.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..agent import protocol as p
from ..errors import ProtocolError, SandboxClosedError, SandlotError, from_dict
from .base import ChannelLike, Frame, RequestLike

GRANT_BATCH = p.WINDOW // 4  # return credit in batches, not per frame
BUFFER_MIN = 64 * 1024  # an idle channel's read buffer
BUFFER_MAX = 4 * 1024 * 1024  # a streaming channel's: one read may take this much
LARGE_FRAME = 128 * 1024  # a DATA frame this big is read straight into its own buffer
# Outgoing data waits while the transport holds this much: asyncio (3.11) keeps it in one
# bytearray and moves the rest down after every partial send, so a deep buffer costs O(n^2).
WRITE_HIGH = 512 * 1024
VECTORED = 64 * 1024  # frames this large are sent without joining header and payload
SEND_BUFFER = 4 * 1024 * 1024  # the socket's own buffer: fewer, larger writes (as the agent)

Dial = Callable[[], Awaitable[socket.socket]]  # a new, connected socket to the agent
REDIAL_DELAY = (0.05, 2.0)  # first and largest pause between dial attempts, seconds
# Control frames received and not yet taken by their request's reader, per channel: an agent
# that sends events faster than the host reads them is cut off here (DATA is bounded by the
# credit window instead). Each frame also counts FRAME_COST for its bookkeeping.
MAX_BACKLOG = 64 * 1024 * 1024
FRAME_COST = 128

# What an agent may send: the longest payload for each (kind << 8 | stream) it may use. Any
# other kind or stream, or a longer payload, is a protocol violation (one lookup a frame).
_CONTROL = (p.HELLO, p.EVENT, p.END, p.ERROR)
_LIMITS = {
    **{kind << 8: p.MAX_CONTROL for kind in _CONTROL},
    **{p.DATA << 8 | s: p.MAX_DATA for s in (p.STDOUT, p.STDERR)},
    **{p.EOF << 8 | s: 0 for s in (p.STDOUT, p.STDERR)},
    p.GRANT << 8 | p.STDIN: p.CREDIT.size,
}


def _bad_header(length: int, kind: int, stream: int) -> str:
    """Why the agent may not send a frame with this header."""
    if not any(key >> 8 == kind for key in _LIMITS):
        return f"a frame of kind {kind}"
    if kind << 8 | stream not in _LIMITS:
        return f"a frame of kind {kind} on stream {stream}"
    return f"a {length}-byte frame of kind {kind}"


class Request(RequestLike):
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
        self._window = p.WINDOW  # bytes of DATA the agent may still send us
        self._backlog = 0  # what our control frames count in the channel's backlog
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
        if kind != p.DATA:
            cost = len(payload) + FRAME_COST
            self._backlog -= cost
            if self.channel._requests.get(self.rid) is self:
                self.channel._backlog -= cost
        if kind in (p.END, p.ERROR):
            self._finish()
            if kind == p.ERROR:
                raise error_from(json_object(payload, "error"))
        return kind, stream, payload

    def consumed(self, amount: int) -> None:
        """The caller has taken ``amount`` bytes of DATA: let the agent send more."""
        self._unacked += amount
        if self._unacked >= GRANT_BATCH and not self.done:
            self.channel._send(p.GRANT, self.rid, p.CREDIT.pack(self._unacked), p.STDOUT)
            self._window += self._unacked
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
            if not self.channel._writable.is_set():
                # The socket is behind: let it drain rather than pile data in the transport.
                await self.channel._writable.wait()
                continue
            size = min(len(view), p.MAX_DATA, self._send_credit)
            self._send_credit -= size
            # A view, not a copy: _send writes it out or the transport copies what it queues.
            self.channel._send(p.DATA, self.rid, view[:size], stream)  # type: ignore[arg-type]
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
        if self.channel._requests.pop(self.rid, None) is self:
            self.channel._backlog -= self._backlog


def json_object(payload: bytes, what: str = "message") -> dict[str, Any]:
    """A control payload from the agent: a JSON object, or ProtocolError."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays
        raise ProtocolError(f"the agent sent a malformed {what}: {exc}"[:300]) from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the agent sent a {what} that is not a JSON object")
    return value


def error_from(payload: dict[str, Any]) -> SandlotError:
    """The error an agent's ERROR frame describes; ProtocolError if it cannot be built (its
    details need not fit the class's arguments)."""
    try:
        return from_dict(payload)
    except Exception:
        return ProtocolError(f"the agent sent a malformed error: {payload!r:.200}")


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
        # A large DATA frame being read into a buffer of its own: (header, body, filled).
        self.large: tuple[tuple[int, int, int], memoryview, int] | None = None
        # Where large frames are read, kept from one to the next: a new buffer for each
        # would cost page faults per MiB (the server has big blocks mapped and unmapped).
        self.spare: bytearray | None = None

    def _resize(self, size: int) -> None:
        """A new buffer of ``size`` bytes holding the unparsed data at its front."""
        buffer = bytearray(size)
        pending = self.end - self.start
        buffer[:pending] = self.view[self.start : self.end]
        self.start, self.end = 0, pending
        self.buffer, self.view = buffer, memoryview(buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.channel._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        # asyncio's own transports expose the socket (uvloop's do not): large frames go out
        # with one sendmsg of header and payload, instead of a copy to join them first.
        self.channel._socket = sock if isinstance(sock, socket.socket) else None

    def pause_writing(self) -> None:
        self.channel._writable.clear()

    def resume_writing(self) -> None:
        self.channel._writable.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.large is not None:  # exactly the rest of the frame: no copy, no compaction
            _, body, filled = self.large
            return body[filled:]
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
        if self.large is not None:
            head, body, filled = self.large
            filled += nbytes
            if filled < len(body):
                self.large = head, body, filled
                return
            self.large = None
            if self.channel.closed is None:
                self.channel._on_frame(head[0], head[1], head[2], bytes(body))
            return
        self.end += nbytes
        view, offset, end = self.view, self.start, self.end
        channel = self.channel
        needed = 0  # size of the incomplete frame at ``offset``, once its header is in
        while end - offset >= p.HEADER_SIZE:
            if channel.closed is not None:  # a frame broke the protocol: read no further
                return
            length, kind, stream, rid = p.HEADER.unpack_from(view, offset)
            if length > _LIMITS.get(kind << 8 | stream, -1):
                channel._violation(_bad_header(length, kind, stream))
                return
            frame_end = offset + p.HEADER_SIZE + length
            if frame_end > end:
                if kind == p.DATA and length >= LARGE_FRAME:
                    # Read the rest of it into a buffer of its own, rather than growing
                    # and compacting ours around it.
                    if self.spare is None:
                        self.spare = bytearray(p.MAX_DATA)
                    body = memoryview(self.spare)[:length]
                    have = end - offset - p.HEADER_SIZE
                    body[:have] = view[offset + p.HEADER_SIZE : end]
                    self.large = (kind, stream, rid), body, have
                    offset = end
                else:
                    needed = p.HEADER_SIZE + length
                break
            channel._on_frame(kind, stream, rid, bytes(view[offset + p.HEADER_SIZE : frame_end]))
            offset = frame_end
        capacity = len(self.buffer)
        if offset == self.end:
            self.start = self.end = 0
            if nbytes < BUFFER_MIN // 2 < capacity:  # the stream is over: give memory back
                self._resize(BUFFER_MIN)
                self.spare = None
            elif nbytes == self.offered and capacity < BUFFER_MAX:  # reads fill it: grow
                self._resize(min(capacity * 2, BUFFER_MAX))
            return
        self.start = offset
        if needed > capacity // 2:  # a frame too large for the room we keep: make room
            self._resize(max(needed * 2, capacity))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel._lost(self, SandboxClosedError("the connection to the sandbox's agent closed"))
        # The channel, its transport, this protocol and the error hold each other: only the
        # cyclic gc's rare full pass frees them. Their read buffers (64 KiB to 4 MiB each)
        # need not wait for it (issue 16: 208 closed channels held ~100 MiB after a soak).
        self.buffer = bytearray()
        self.view = memoryview(self.buffer)
        self.start = self.end = self.offered = 0
        self.large = None
        self.spare = None


class Channel(ChannelLike):
    """An open connection to one agent."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._socket: socket.socket | None = None  # the transport's, for vectored sends
        self._protocol: _Protocol | None = None
        self._requests: dict[int, Request] = {}
        self._last_rid = 0  # the last request id given out: the agent may use no other
        self._greeted = False  # the agent's HELLO arrived on the current connection
        self._backlog = 0  # see MAX_BACKLOG
        self._hello: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self.closed: SandlotError | None = None
        self.hello: dict[str, Any] = {}
        self.on_close: list[Any] = []  # called with the error once the connection is gone
        self._dial: Dial | None = None  # set when a dropped connection is dialled again
        self._redial_for = 0.0
        self._redialing: asyncio.Task[None] | None = None
        self._held: list[bytes] = []  # frames sent while redialling, in order
        self._writable = asyncio.Event()  # cleared while the transport's buffer is full
        self._writable.set()

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

    @classmethod
    async def connect_with(
        cls, dial: Dial, *, timeout: float = 10.0, redial_for: float = 0.0
    ) -> Channel:
        """Connect through ``dial`` (any transport that ends in a connected socket: a
        local forward of an SSH channel, a socketpair bridge) and wait for the HELLO.

        With ``redial_for`` > 0, a dropped connection is dialled again for up to that many
        seconds: requests in flight at the drop fail with SandboxClosedError (their output
        is gone with the connection); requests opened meanwhile wait and go out once the
        agent has said hello again. Only :meth:`close` or running out of time ends it."""
        channel = cls()
        if redial_for > 0:
            channel._dial, channel._redial_for = dial, redial_for
        try:
            sock = await dial()
        except OSError as exc:
            raise SandboxClosedError(f"cannot reach the sandbox's agent: {exc}") from None
        return await channel._start(sock, timeout)

    async def _start(self, sock: socket.socket, timeout: float) -> Channel:
        await self._attach(sock)
        try:
            self.hello = await asyncio.wait_for(asyncio.shield(self._hello), timeout)
        except TimeoutError:
            self.close()
            raise SandboxClosedError(f"the agent did not answer within {timeout:g} s") from None
        return self

    async def _attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass  # capped by net.core.wmem_max, or not a socket that has one
        self._writable.set()
        self._greeted = False
        protocol = _Protocol(self)
        self._protocol = protocol
        await self._loop.create_connection(lambda: protocol, sock=sock)

    def _lost(self, protocol: _Protocol, error: SandlotError) -> None:
        if protocol is not self._protocol or self.closed is not None:
            return  # an old connection's late news, or already closed for good
        if self._redialing is not None:  # an attempt dropped before its hello: try again
            self._transport, self._protocol = None, None
            if not self._hello.done():
                self._hello.set_exception(error)
            return
        if self._dial is None or not self._hello.done():
            self._broken(error)
            return
        # Keep the channel: what was in flight is lost, what comes next waits for a redial.
        self._transport = None
        self._protocol = None
        self._writable.set()  # senders wake to find their request failed
        for request in list(self._requests.values()):
            request._fail(error)
        self._requests.clear()
        self._backlog = 0
        self._redialing = asyncio.ensure_future(self._redial(error))

    async def _redial(self, error: SandlotError) -> None:
        assert self._dial is not None
        deadline = self._loop.time() + self._redial_for
        delay, largest = REDIAL_DELAY
        last: BaseException = error
        while self.closed is None and self._loop.time() < deadline:
            self._hello = self._loop.create_future()
            try:
                left = max(deadline - self._loop.time(), 0.1)
                sock = await asyncio.wait_for(self._dial(), left)
                await self._attach(sock)
                left = max(deadline - self._loop.time(), 0.1)
                self.hello = await asyncio.wait_for(asyncio.shield(self._hello), left)
            except (OSError, TimeoutError, SandlotError) as exc:
                last = exc
                if self._transport is not None:
                    self._transport.abort()
                self._transport, self._protocol = None, None
                await asyncio.sleep(min(delay, max(deadline - self._loop.time(), 0)))
                delay = min(delay * 2, largest)
                continue
            self._redialing = None
            held, self._held = self._held, []
            if self._transport is not None and held:
                self._transport.write(b"".join(held))
            return
        self._redialing = None
        if self.closed is None:
            reason = f"lost the sandbox's agent and could not reconnect: {last}"
            self._broken(SandboxClosedError(reason))

    # -- frames -----------------------------------------------------------------------------

    def _send(self, kind: int, rid: int, payload: bytes = b"", stream: int = 0) -> None:
        if self.closed is not None:
            return
        if self._redialing is not None:
            self._held.append(p.pack(kind, rid, payload, stream) + payload)
            return
        transport = self._transport
        if transport is None:
            return
        header = p.pack(kind, rid, payload, stream)
        if (
            len(payload) >= VECTORED
            and self._socket is not None
            and transport.get_write_buffer_size() == 0
            and not transport.is_closing()
        ):
            # Nothing is queued, so writing to the socket ourselves keeps the order, as
            # transport.write would; what the socket does not take now is queued there.
            try:
                sent = self._socket.sendmsg([header, payload])
            except OSError:  # would block, or broken: the transport finds out and reports it
                sent = 0
            if sent >= len(header):
                rest = memoryview(payload)[sent - len(header) :]
                if rest:
                    transport.write(rest)
                return
            transport.write(header[sent:] + payload)
            return
        transport.write(header + payload)

    def _on_frame(self, kind: int, stream: int, rid: int, payload: bytes) -> None:
        """One frame whose header is in :data:`_LIMITS`; a violation ends the channel."""
        request = self._requests.get(rid)
        if request is None or request._answered or not self._greeted:
            if not self._greeted or kind == p.HELLO:
                self._on_hello(kind, rid, payload)
            elif rid == 0 or rid > self._last_rid:
                self._violation(f"a frame of kind {kind} for request {rid}, never opened")
            return  # a late frame for a request that was cancelled or has answered
        if kind == p.DATA:
            request._window -= len(payload)
            if request._window < 0:
                self._violation(f"request {rid}: more data than the window it was given")
                return
        elif kind == p.GRANT:
            if len(payload) != p.CREDIT.size:
                self._violation(f"request {rid}: a {len(payload)}-byte credit")
            elif request._send_credit + p.CREDIT.unpack(payload)[0] > p.WINDOW:
                self._violation(f"request {rid}: credit for data the host never sent")
            else:
                request._grant(p.CREDIT.unpack(payload)[0])
            return
        elif kind == p.HELLO:
            self._violation("a second hello")
            return
        else:  # EVENT, END, ERROR, EOF: queued until read (EVENT, END, ERROR checked now)
            if kind != p.EOF:
                try:
                    message = json_object(payload, "control frame")
                    if kind == p.ERROR:
                        from_dict(message)
                except ProtocolError as exc:
                    self._broken(exc)
                    return
                except Exception:  # details that do not fit the error's class
                    self._violation(f"request {rid}: a malformed error")
                    return
            cost = len(payload) + FRAME_COST
            if self._backlog + cost > MAX_BACKLOG:
                self._violation("more control frames than the host reads")
                return
            self._backlog += cost
            request._backlog += cost
        request._deliver((kind, stream, payload))

    def _on_hello(self, kind: int, rid: int, payload: bytes) -> None:
        if self._greeted:
            self._violation("a second hello")
            return
        if kind != p.HELLO or rid != 0:
            self._violation(f"a frame of kind {kind} before the hello")
            return
        try:
            hello = json_object(payload, "hello")
        except ProtocolError as exc:
            self._broken(exc)
            return
        if hello.get("version") != p.VERSION:
            self._broken(ProtocolError(f"unsupported agent: {hello!r:.200}"))
            return
        self._greeted = True
        if not self._hello.done():
            self._hello.set_result(hello)

    def _violation(self, what: str) -> None:
        self._broken(ProtocolError(f"the sandbox's agent broke the protocol: {what}"))

    def _broken(self, error: SandlotError) -> None:
        if self.closed is not None:
            return
        self.closed = error
        self._held.clear()
        self._writable.set()
        if self._redialing is not None and self._redialing is not asyncio.current_task():
            self._redialing.cancel()
        self._redialing = None
        if not self._hello.done():
            self._hello.set_exception(error)
            self._hello.exception()  # mark retrieved
        for request in list(self._requests.values()):
            request._fail(error)
        self._requests.clear()
        self._backlog = 0
        if self._transport is not None:
            self._transport.abort()
        for callback in self.on_close:
            callback(error)

    # -- requests ---------------------------------------------------------------------------

    def open(self, op: str, **args: Any) -> Request:
        """Start a request; its frames arrive on the returned :class:`Request`."""
        if self.closed is not None:
            raise self.closed
        self._last_rid = rid = self._last_rid + 1
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
                return json_object(payload, "answer")

    def close(self) -> None:
        self._broken(SandboxClosedError("the channel was closed"))

    def fail(self, error: SandlotError) -> None:
        """Close for good with ``error`` (e.g. a dial that learnt the agent is dead: waiting
        requests fail with it now, rather than after redialling in vain)."""
        self._broken(error)
