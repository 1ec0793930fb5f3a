"""Servers to run inside a sandbox for the exposed-port tests (stdlib only: the sandbox's
Python has nothing else), and a helper that waits for them through the exposed URL."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

# A WebSocket echo server (RFC 6455, unmasked server frames, text and binary, up to 64 KiB
# frames); enough for a real client library to talk to.
WS_ECHO = r"""
import base64, hashlib, socket, struct, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def serve(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    lines = data.split(b"\r\n")
    key = [l.split(b":", 1)[1].strip() for l in lines if l.lower().startswith(b"sec-websocket-key")]
    accept = base64.b64encode(hashlib.sha1(key[0] + GUID).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    f = conn.makefile("rb")
    while True:
        head = f.read(2)
        if len(head) < 2:
            return
        op, n = head[0] & 15, head[1] & 127
        if n == 126:
            n = struct.unpack("!H", f.read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", f.read(8))[0]
        mask = f.read(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
        if op == 8:
            conn.sendall(b"\x88\x00")
            return
        size = struct.pack("!B", n) if n < 126 else b"\x7e" + struct.pack("!H", n)
        conn.sendall(bytes([0x80 | op]) + size + payload)
s = socket.socket()
s.bind(("127.0.0.1", PORT))
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Echoes every byte back, each connection on its own thread.
TCP_ECHO = r"""
import socket, threading
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            c.shutdown(socket.SHUT_WR)
            return
        c.sendall(d)
s = socket.socket()
s.bind(("127.0.0.1", PORT))
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def server_script(source: str, port: int) -> str:
    return source.replace("PORT", str(port))


def wait_for_http(url: str, attempts: int = 200) -> bytes:
    """GET ``url`` until the server in the sandbox answers (it starts in the background)."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 502:
                raise
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered: {last}")
