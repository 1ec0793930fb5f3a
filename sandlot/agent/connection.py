"""One host connection: frame parsing, request dispatch and non-blocking, ordered output."""

import _socket
import _struct
import posix
import select

from . import protocol as p
from .errors import AgentError, error_payload

READ_SIZE = 256 * 1024
LARGE_FRAME = 128 * 1024  # a DATA frame this big is read straight into its own buffer


class Connection:
    def __init__(self, agent, fd):
        self.agent = agent
        self.fd = fd
        self.requests = {}  # request id -> request object (command, upload, download)
        self._inbuf = bytearray()
        self._large = None  # [kind, stream, rid, body, filled] of a large frame being read
        self._out = []  # pending output chunks, in order
        self._writing = False
        self.closed = False
        posix.set_blocking(fd, False)
        agent.loop.watch(fd, select.EPOLLIN, self._on_events)

    # -- output -----------------------------------------------------------------------------

    def send(self, kind, rid, payload=b"", stream=0):
        if self.closed:
            return
        header = p.pack(kind, rid, payload, stream)
        if self._out:
            self._out.append(header)
            if payload:
                self._out.append(payload)
            return
        chunks = [header, payload] if payload else [header]
        try:
            sent = posix.writev(self.fd, chunks)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        for chunk in chunks:
            if sent >= len(chunk):
                sent -= len(chunk)
                continue
            self._out.append(memoryview(chunk)[sent:] if sent else chunk)
            sent = 0
        if self._out and not self._writing:
            self._writing = True
            self.agent.loop.watch(self.fd, select.EPOLLIN | select.EPOLLOUT, self._on_events)

    def send_json(self, kind, rid, obj):
        payload = p.dumps(obj)
        if len(payload) > p.MAX_CONTROL:  # the host would drop the whole connection
            payload = p.dumps(
                error_payload(AgentError("protocol_error", "the answer is too large to send"))
            )
            kind = p.ERROR
        self.send(kind, rid, payload)

    def send_error(self, rid, exc):
        self.send(p.ERROR, rid, p.dumps(error_payload(exc)))

    def send_fd(self, rid, obj, fd):
        """An EVENT carrying a descriptor (SCM_RIGHTS): the host takes the socket over.
        False if it cannot go now (output is queued, or the host is gone): the caller keeps
        the socket and uses the tunnel instead."""
        if self.closed or self._out:
            return False
        payload = p.dumps(obj)
        frame = p.pack(p.EVENT, rid, payload) + payload
        sock = _socket.socket(fileno=self.fd)
        try:
            sent = sock.sendmsg(
                [frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _struct.pack("i", fd))]
            )
        except OSError:  # would block, or the host is gone (its reader closes us)
            return False
        finally:
            sock.detach()
        if sent < len(frame):  # the descriptor went with the first byte; the rest follows
            self._out.append(memoryview(frame)[sent:])
            self._writing = True
            self.agent.loop.watch(self.fd, select.EPOLLIN | select.EPOLLOUT, self._on_events)
        return True

    def _flush(self):
        while self._out:
            try:
                sent = posix.writev(self.fd, self._out[:64])
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            while sent and self._out:
                head = self._out[0]
                if sent >= len(head):
                    sent -= len(head)
                    self._out.pop(0)
                else:
                    self._out[0] = memoryview(head)[sent:]
                    sent = 0
        self._writing = False
        self.agent.loop.watch(self.fd, select.EPOLLIN, self._on_events)

    # -- input ------------------------------------------------------------------------------

    def _on_events(self, events):
        if events & select.EPOLLOUT:
            self._flush()
        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            if self._large is not None:
                self._read_large()
                return
            try:
                data = posix.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self._inbuf += data
            self._parse()

    def _read_large(self):
        """The rest of a large frame, read into its own buffer: no appending, no moving."""
        large = self._large
        body, filled = large[3], large[4]
        try:
            count = posix.readv(self.fd, [memoryview(body)[filled:]])
        except BlockingIOError:
            return
        except OSError:
            count = 0
        if not count:
            self.close()
            return
        large[4] = filled + count
        if large[4] == len(body):
            self._large = None
            self._dispatch(large[0], large[1], large[2], body)

    def _parse(self):
        buf = self._inbuf
        offset = 0
        while len(buf) - offset >= p.HEADER_SIZE:
            length, kind, stream, rid = p.HEADER.unpack_from(buf, offset)
            end = offset + p.HEADER_SIZE + length
            if kind != p.DATA and length > p.MAX_CONTROL:
                self.close()
                return
            if len(buf) < end:
                if kind == p.DATA and length >= LARGE_FRAME and length <= p.MAX_DATA:
                    body = bytearray(length)
                    have = len(buf) - offset - p.HEADER_SIZE
                    body[:have] = buf[offset + p.HEADER_SIZE :]
                    self._large = [kind, stream, rid, body, have]
                    offset = len(buf)
                break
            payload = bytes(buf[offset + p.HEADER_SIZE : end])
            offset = end
            self._dispatch(kind, stream, rid, payload)
            if self.closed:
                return
        if offset:
            del buf[:offset]

    def _dispatch(self, kind, stream, rid, payload):
        if kind == p.REQUEST:
            try:
                request = p.loads(payload)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as exc:
                self.send_error(rid, AgentError("protocol_error", str(exc)))
                return
            if rid in self.requests:
                self.send_error(rid, AgentError("protocol_error", "request id %d in use" % rid))
                return
            self.agent.handle_request(self, rid, request)
            return
        target = self.requests.get(rid)
        if target is None:
            return  # late frame for a finished request
        if kind == p.DATA:
            target.on_data(stream, payload)
        elif kind == p.EOF:
            target.on_eof(stream)
        elif kind == p.GRANT:
            target.on_grant(stream, p.CREDIT.unpack(payload)[0])
        elif kind == p.CANCEL:
            target.cancel()

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.agent.loop.unwatch(self.fd)
        try:
            posix.close(self.fd)
        except OSError:
            pass
        self._out = []
        for request in list(self.requests.values()):
            request.detach()
        self.requests.clear()
        self.agent.connections.discard(self)
