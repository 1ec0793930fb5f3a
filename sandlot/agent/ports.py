"""Port forwarding: op "connect" opens a TCP connection to a port on the sandbox's own
loopback and carries it over the channel (host -> port on STDIN, port -> host on STDOUT).

The sandbox keeps its network off: the connection is made inside it, so only what listens
in the sandbox is reachable, and only on loopback. Both directions run under credit: the
host's data is granted back only once written to the socket, and the socket is read only
while the host has credit left, so a slow side stops the other instead of filling memory.
"""

import _socket
import posix
import select

from . import protocol as p
from .errors import AgentError

CHUNK = p.MAX_DATA  # one frame per read: fewer wake-ups on both ends
LOOPBACK = {"127.0.0.1": _socket.AF_INET, "localhost": _socket.AF_INET, "::1": _socket.AF_INET6}
EINPROGRESS = 115


class Tunnel:
    def __init__(self, agent, conn, rid, request):
        port = request.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise AgentError("invalid_argument", "port must be a number from 1 to 65535")
        host = request.get("host", "127.0.0.1")
        family = LOOPBACK.get(host)
        if family is None:
            raise AgentError("invalid_argument", "only the sandbox's loopback can be reached")
        self.agent, self.conn, self.rid, self.port = agent, conn, rid, port
        self.sock = _socket.socket(family, _socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        posix.set_inheritable(self.fd, False)
        self.credit = p.WINDOW  # bytes we may still send to the host
        self.pending = []  # host data not yet written to the socket
        self.connected = False
        self.mask = 0  # what the loop watches on the socket (changed only when it must be)
        self.read_done = False  # the port's side ended (EOF sent to the host)
        self.write_done = False  # the host's side ended (and all of it was written)
        self.host_eof = False
        self.received = 0
        self.sent = 0
        address = "::1" if family == _socket.AF_INET6 else "127.0.0.1"
        code = self.sock.connect_ex((address, port))
        conn.requests[rid] = self
        if code == 0:
            self._on_connected()
        elif code == EINPROGRESS:
            agent.loop.watch(self.fd, select.EPOLLOUT, self._on_connect)
        else:
            self._refuse(code)

    # -- connecting -------------------------------------------------------------------------

    def _on_connect(self, events):
        code = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if code:
            self._refuse(code)
            return
        self._on_connected()

    def _refuse(self, code):
        reason = posix.strerror(code).lower()
        self._close()
        self.conn.send_json(
            p.ERROR,
            self.rid,
            {
                "code": "port_error",
                "message": "nothing answers on port %d in the sandbox (%s)" % (self.port, reason),
                "port": self.port,
            },
        )

    def _on_connected(self):
        self.connected = True
        self.conn.send_json(p.EVENT, self.rid, {"event": "connected", "port": self.port})
        self._rewatch()

    def _rewatch(self):
        if self.sock is None:
            return
        mask = 0
        if not self.read_done and self.credit > 0:
            mask |= select.EPOLLIN
        if self.pending:
            mask |= select.EPOLLOUT
        if mask == self.mask:
            return  # an epoll_ctl per chunk would cost more than the copy
        self.mask = mask
        if mask:
            self.agent.loop.watch(self.fd, mask, self._on_events)
        else:
            self.agent.loop.unwatch(self.fd)

    # -- moving bytes -----------------------------------------------------------------------

    def _on_events(self, events):
        if events & (select.EPOLLOUT | select.EPOLLERR):
            self._flush()
        if self.sock is not None and events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._read()
        self._rewatch()

    def _read(self):
        if self.read_done or self.credit <= 0:
            return
        try:
            data = self.sock.recv(min(CHUNK, self.credit))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # reset: the port's side is over
        if not data:
            self.read_done = True
            self.conn.send(p.EOF, self.rid, b"", p.STDOUT)
            self._maybe_finish()
            return
        self.credit -= len(data)
        self.sent += len(data)
        self.conn.send(p.DATA, self.rid, data, p.STDOUT)

    def on_data(self, stream, data):
        if self.sock is None or self.write_done:
            return
        self.pending.append(memoryview(data))
        self._flush()
        self._rewatch()

    def _flush(self):
        while self.pending and self.sock is not None:
            chunk = self.pending[0]
            try:
                written = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # The port closed its reading side: drop what the host still sends.
                self.pending = []
                self.write_done = True
                self._maybe_finish()
                return
            self.received += written
            self.conn.send(p.GRANT, self.rid, p.CREDIT.pack(written), p.STDIN)
            if written == len(chunk):
                self.pending.pop(0)
            else:
                self.pending[0] = chunk[written:]
        if not self.pending and self.host_eof and not self.write_done:
            self.write_done = True
            try:
                self.sock.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            self._maybe_finish()

    def on_eof(self, stream):
        self.host_eof = True
        self._flush()
        self._rewatch()

    def on_grant(self, stream, amount):
        self.credit += amount
        self._rewatch()

    # -- end --------------------------------------------------------------------------------

    def _maybe_finish(self):
        if self.read_done and self.write_done and self.sock is not None:
            self._close()
            self.conn.send_json(p.END, self.rid, {"received": self.received, "sent": self.sent})

    def _close(self):
        if self.sock is not None:
            self.agent.loop.unwatch(self.fd)
            self.mask = 0
            self.sock.close()
            self.sock = None
        self.conn.requests.pop(self.rid, None)

    def cancel(self):
        self._close()

    def detach(self):
        self._close()
