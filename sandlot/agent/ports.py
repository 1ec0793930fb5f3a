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


def op_connect(agent, conn, rid, request):
    """Open a TCP connection to a port on the sandbox's loopback and carry it."""
    port = request.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise AgentError("invalid_argument", "port must be a number from 1 to 65535")
    host = request.get("host", "127.0.0.1")
    family = LOOPBACK.get(host)
    if family is None:
        raise AgentError("invalid_argument", "only the sandbox's loopback can be reached")
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.setblocking(False)
    tunnel = Tunnel(agent, conn, rid, sock, port)
    address = "::1" if family == _socket.AF_INET6 else "127.0.0.1"
    code = sock.connect_ex((address, port))
    if code == 0:
        tunnel._on_connected()
    elif code == EINPROGRESS:
        agent.loop.watch(tunnel.fd, select.EPOLLOUT, tunnel._on_connect)
    else:
        tunnel._refuse(code)


class Tunnel:
    """One TCP connection inside the sandbox, carried over a request of the channel."""

    def __init__(self, agent, conn, rid, sock, port):
        self.agent, self.conn, self.rid, self.port = agent, conn, rid, port
        self.sock = sock
        self.fd = sock.fileno()
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
        conn.requests[rid] = self

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


# -- connections from inside the sandbox to the host (egress proxy, callback bridge) ---------

MAX_PENDING = 256  # accepted connections the host has not yet taken


class Listener:
    """A loopback port inside the sandbox whose connections the host serves.

    Op ``listen`` binds it (once per name; a later ``listen`` of the same name, e.g. from a
    host that connected again, takes it over and keeps the port), sets the environment
    variables the host asks for (``{port}`` in a value is the bound port) for every later
    command, and announces each accepted connection as an ``accept`` event. The host then
    takes it with op ``accepted`` and it is carried like a ``connect`` tunnel. Code in the
    sandbox can reach only this port: where the connection goes is decided on the host.
    """

    def __init__(self, agent, name):
        self.agent, self.name = agent, name
        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        posix.set_inheritable(self.fd, False)
        self.port = self.sock.getsockname()[1]
        self.conn = self.rid = None
        self.handoff = False  # the holder takes accepted sockets themselves (same host)
        self.pending = {}  # id -> accepted socket, until the host takes it
        self.next_id = 1
        self.standby = []  # (conn, rid, handoff) of hosts waiting to serve it after the holder

    @property
    def held(self):
        return self.conn is not None and not self.conn.closed

    def attach(self, conn, rid, handoff=False):
        if self.held:
            self.conn.send_json(p.END, self.rid, {"taken_over": True})
            self.conn.requests.pop(self.rid, None)
        self.conn, self.rid, self.handoff = conn, rid, handoff
        conn.requests[rid] = self
        self.agent.loop.watch(self.fd, select.EPOLLIN, self._on_accept)
        conn.send_json(p.EVENT, rid, {"event": "listening", "port": self.port})

    def _on_accept(self, events):
        while True:
            try:
                fd, _ = self.sock._accept()
            except OSError:  # nothing more to take (or a transient error: the next wake-up)
                return
            sock = _socket.socket(fileno=fd)
            posix.set_inheritable(fd, False)
            if len(self.pending) >= MAX_PENDING:
                sock.close()  # the host is not taking them: refuse rather than pile up
                continue
            ident = self.next_id
            self.next_id += 1
            if self.handoff:
                # A host on this machine takes the socket itself: the bytes then go between
                # it and the far end directly, not through this process and the channel.
                event = {"event": "accept", "id": ident, "fd": True}
                if self.conn.send_fd(self.rid, event, fd):
                    sock.close()
                    continue
            sock.setblocking(False)
            self.pending[ident] = sock
            self.conn.send_json(p.EVENT, self.rid, {"event": "accept", "id": ident})

    def take(self, ident):
        return self.pending.pop(ident, None)

    def _release(self):
        """The host went away: stop accepting (connections wait in the backlog for the
        next host) and drop the ones it never took."""
        self.agent.loop.unwatch(self.fd)
        if self.conn is not None:
            self.conn.requests.pop(self.rid, None)
        self.conn = self.rid = None
        for sock in self.pending.values():
            sock.close()
        self.pending.clear()
        while self.standby:
            conn, rid, handoff = self.standby.pop(0)
            if not conn.closed and conn.requests.get(rid) is not None:
                self.attach(conn, rid, handoff)
                return

    def wait(self, conn, rid, handoff=False):
        """Serve it once the current holder goes away (a second host connected)."""
        self.standby.append((conn, rid, handoff))
        conn.requests[rid] = _Standby(self, conn, rid)
        conn.send_json(p.EVENT, rid, {"event": "standby", "port": self.port})

    def on_data(self, stream, data):
        pass

    def on_eof(self, stream):
        pass

    def on_grant(self, stream, amount):
        pass

    def cancel(self):
        self._release()

    def detach(self):
        self._release()


class _Standby:
    def __init__(self, listener, conn, rid):
        self.listener, self.conn, self.rid = listener, conn, rid

    def on_data(self, stream, data):
        pass

    on_eof = on_grant = on_data

    def cancel(self):
        self.listener.standby = [
            e for e in self.listener.standby if (e[0], e[1]) != (self.conn, self.rid)
        ]
        self.conn.requests.pop(self.rid, None)

    detach = cancel


def op_listen(agent, conn, rid, request):
    name = request.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise AgentError("invalid_argument", "a listener needs a name")
    env = request.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise AgentError("invalid_argument", "env must map names to strings")
    listeners = agent.listeners
    listener = listeners.get(name)
    if listener is None:
        listener = listeners[name] = Listener(agent, name)
    for key, value in env.items():
        agent.base_env[key] = value.replace("{port}", str(listener.port))
    handoff = request.get("handoff") is True
    if listener.held and not request.get("takeover", True):
        listener.wait(conn, rid, handoff)
    else:
        listener.attach(conn, rid, handoff)


def op_accepted(agent, conn, rid, request):
    ident = request.get("id")
    name = request.get("name")
    listener = agent.listeners.get(name)
    sock = listener.take(ident) if listener is not None else None
    if sock is None:
        raise AgentError("not_found", "no accepted connection %r on %r" % (ident, name))
    tunnel = Tunnel(agent, conn, rid, sock, listener.port)
    tunnel._on_connected()
