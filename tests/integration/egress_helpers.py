"""Upstream servers for the egress tests (real HTTP servers on this host's loopback, IPv4 and
IPv6), clients to run inside a sandbox (stdlib Python only: the docker test image has no
curl), and a way to store a secret as a user would (the CLI, reading standard input)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream._Server

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.send_header("X-Internal", "must-not-pass-the-bridge")
        self.end_headers()
        self.wfile.write(body)

    def _record(self, body: bytes) -> None:
        self.server.owner.seen.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )

    def do_GET(self) -> None:
        self._record(b"")
        if self.path.startswith("/slow"):
            time.sleep(3)
        if self.path.startswith("/big/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"x" * (1 << 20)
            left = size
            while left:
                n = min(left, len(chunk))
                self.wfile.write(chunk[:n])
                left -= n
            return
        self._reply(200, b"hello from upstream " + self.path.encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self._record(body)
        if self.path.startswith("/slow"):
            time.sleep(3)
        self._reply(200, json.dumps({"got": body.decode()}).encode(), "application/json")


class Upstream:
    """A threaded HTTP server on ``host`` that records what reached it."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        owner: Upstream

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (Upstream._Server,), {"address_family": family})
        self.server = server_class((host, 0), _Handler)
        self.server.owner = self
        self.host = host
        self.port = self.server.server_address[1]
        self.seen: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Runs inside the sandbox: one HTTP request through the proxy variables (urllib honours
# them), printing the status and the body as JSON.
FETCH = r"""
import json, sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if sys.argv[3] else None
headers = json.loads(sys.argv[4])
request = urllib.request.Request(url, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=20) as answer:
        out = {"status": answer.status, "body": answer.read().decode(errors="replace"),
               "headers": dict(answer.headers)}
except urllib.error.HTTPError as error:
    out = {"status": error.code, "body": error.read().decode(errors="replace"),
           "headers": dict(error.headers)}
except Exception as error:
    out = {"status": None, "error": repr(error)}
print(json.dumps(out))
"""

# Runs inside the sandbox: a CONNECT tunnel through the proxy by hand, then a plain GET in it.
CONNECT = r"""
import os, socket, sys
proxy = os.environ["HTTPS_PROXY"].rsplit(":", 1)
target = sys.argv[1]
s = socket.create_connection((proxy[0].split("//")[1], int(proxy[1])), timeout=10)
s.sendall(b"CONNECT " + target.encode() + b" HTTP/1.1\r\nHost: " + target.encode() + b"\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    data = s.recv(4096)
    if not data:
        break
    head += data
status = head.split(b" ", 2)[1].decode() if head else "none"
print(status)
if status == "200":
    s.sendall(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        body += data
    print(body.split(b"\r\n\r\n", 1)[1].decode())
"""


def fetch(
    sb: Any, method: str, url: str, body: str | None = None, headers: dict[str, str] | None = None
) -> dict:
    """Run FETCH in the sandbox; its JSON answer."""
    sb.files.write("/tmp/fetch.py", FETCH)
    argv = ["python3", "/tmp/fetch.py", method, url, body or "", json.dumps(headers or {})]
    result = sb.commands.run(argv, timeout=60)
    assert result.exit_code == 0, result.stderr
    out: dict = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def put_secret(name: str, value: str) -> None:
    """Store a secret as a user does: ``sandlot secrets set NAME`` with the value on stdin
    (embedded, or the server's when ``SANDLOT_URL`` is set)."""
    done = subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "secrets", "set", name],
        input=value.encode(),
        capture_output=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
