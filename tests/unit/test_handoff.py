"""The host's side of a socket hand-off takes only connected TCP sockets: a descriptor comes
from inside the sandbox, and a file, a pipe, a Unix socket or a listening socket must not be
served as a client. (The hand-off's framing and its descriptor bounds are fuzzed and attacked
in test_channel_fuzz.py.)"""

from __future__ import annotations

import os
import socket

from sandlot.channel.handoff import _tcp_socket


def _is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_a_tcp_socket_is_taken() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    taken = _tcp_socket(os.dup(client.fileno()))
    assert taken is not None and taken.type == socket.SOCK_STREAM
    assert not taken.getblocking()
    taken.close()
    client.close()
    server.close()


def test_anything_else_is_closed_and_refused() -> None:
    r, w = os.pipe()
    assert _tcp_socket(r) is None and _is_closed(r)
    os.close(w)
    a, b = socket.socketpair()
    fd = a.detach()
    assert _tcp_socket(fd) is None and _is_closed(fd)
    b.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = udp.detach()
    assert _tcp_socket(fd) is None and _is_closed(fd)
    with open(__file__, "rb") as handle:
        fd = os.dup(handle.fileno())
    assert _tcp_socket(fd) is None and _is_closed(fd)
    listening = socket.create_server(("127.0.0.1", 0))
    fd = listening.detach()
    assert _tcp_socket(fd) is None and _is_closed(fd)
    unconnected = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fd = unconnected.detach()
    assert _tcp_socket(fd) is None and _is_closed(fd)
