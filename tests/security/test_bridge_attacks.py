"""The callback bridge, attacked from inside a sandbox: path strings meant to pass the route
check and land on an endpoint no route allows, with the host's credentials attached.

The upstream is a real HTTP server on this host's loopback that records every request line it
receives, byte for byte. The bridge allows ``GET /public/**`` and ``GET /runs/*``; the prize is
``/api/admin``, which servers that drop ``;`` parameters (Tomcat, Spring, Jetty), decode twice
(a proxy in front of the application) or fold Unicode would reach from ``/public/..;/admin``,
``/public/%252e%252e/admin`` and the like. The attacker writes raw request lines on a socket,
so no client library tidies the path first. Blocked: every attempt is refused by the bridge
(400, recorded as a ``path`` or ``malformed`` refusal) and the upstream receives none of them;
a plain request in the same sandbox reaches it, so the test is not blind.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(180)

CREDENTIAL = "Bearer host-credential-for-the-upstream"


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.raw_requestline.rstrip(b"\r\n"))
        body = b'{"upstream": "reached"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[bytes]


@pytest.fixture
def upstream() -> Iterator[_Server]:
    """A loopback upstream recording the request lines that reach it."""
    server = _Server(("127.0.0.1", 0), _Recorder)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# Runs inside the sandbox: each target on its own connection, as a raw request line; prints
# [[target, status, rule], ...] as JSON. Targets travel as latin-1 so control bytes survive.
SEND = r"""
import json, os, socket, sys
url = os.environ["SANDLOT_BRIDGE_URL"].split("//", 1)[1]
host, port = url.rsplit(":", 1)
token = os.environ["SANDLOT_BRIDGE_TOKEN"]
out = []
for target in json.load(open(sys.argv[1])):
    s = socket.create_connection((host, int(port)), timeout=10)
    head = "GET %s HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer %s\r\n" % (target, token)
    s.sendall((head + "Connection: close\r\n\r\n").encode("latin-1"))
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else None
    try:
        rule = json.loads(body).get("rule")
    except Exception:
        rule = None
    out.append([target, status, rule])
print(json.dumps(out))
"""


def _bridged(make_sandbox: Any, upstream: _Server) -> Any:
    return make_sandbox(
        bridge={
            "target": f"http://127.0.0.1:{upstream.server_address[1]}/api",
            "headers": {"Authorization": CREDENTIAL},
            "routes": [["GET", "/public/**"], ["GET", "/runs/*"]],
        }
    )


def _send(sb: Any, targets: list[str]) -> list[tuple[str, int | None, str | None]]:
    sb.files.write("/tmp/targets.json", json.dumps(targets))
    sb.files.write("/tmp/send.py", SEND)
    result = sb.commands.run(["python3", "/tmp/send.py", "/tmp/targets.json"], timeout=120)
    assert result.exit_code == 0, result.stderr
    return [tuple(row) for row in json.loads(result.stdout.strip().splitlines()[-1])]


def _attack(make_sandbox: Any, upstream: _Server, targets: list[str]) -> None:
    sb = _bridged(make_sandbox, upstream)
    answers = _send(sb, ["/public/ok", *targets])
    control, *refusals = answers
    assert control[1] == 200, control  # the bridge works from here: the attempts are real
    assert upstream.seen == [b"GET /api/public/ok HTTP/1.1"]
    passed = [(t, s, r) for t, s, r in refusals if s != 400 or r not in ("path", "malformed")]
    assert not passed, f"not refused as a bad path: {passed}"
    events = [e for e in sb.network_events() if e["kind"] == "bridge"]
    assert [(e["status"], e["rule"]) for e in events[1:]] == [(400, r) for _, _, r in refusals]
    assert CREDENTIAL not in json.dumps(events)


@pytest.mark.attack("bridge: ';' path parameters on dot segments (..;/, .%2e;)", hole=7)
def test_dot_segments_with_path_parameters(make_sandbox: Any, upstream: _Server) -> None:
    _attack(
        make_sandbox,
        upstream,
        [
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/public/..;jsessionid=abc/admin",
            "/public/.%2e;/admin",
            "/public/%2e.;x/admin",
            "/public/%2e%2e;/admin",
            "/public/.;/.;/..;/admin",
            "/public/x/..;/..;/admin",
            "/public/..%3b/admin",
            "/public/..%3Bx/admin",
            "/public/..%253b/admin",
            "/public/x;../admin",
            "/public/;/../admin",
            "/public/;x/admin",
            "/runs/..;/admin",
            "/runs/..;",
            "/public;/../admin",
        ],
    )


@pytest.mark.attack("bridge: dots percent-encoded once, twice, many times", hole=7)
def test_multiply_encoded_dot_segments(make_sandbox: Any, upstream: _Server) -> None:
    _attack(
        make_sandbox,
        upstream,
        [
            "/public/%2e%2e/admin",
            "/public/%2e%2E/admin",
            "/public/.%2e/admin",
            "/public/%2e/admin",
            "/public/%252e%252e/admin",
            "/public/%252E%252e/admin",
            "/public/.%252e/admin",
            "/public/%25252e%25252e/admin",
            "/public/%2525252e%2525252e/admin",
            "/public/%252525252e%252525252e/admin",
            "/runs/%252e%252e",
            "/public/..%20/admin",
            "/public/%20%2e%2e/admin",
            "/public/.../admin",
            "/public/..",
        ],
    )


@pytest.mark.attack("bridge: encoded '/' and '\\', backslashes, NUL and control bytes", hole=7)
def test_encoded_slashes_backslashes_and_controls(make_sandbox: Any, upstream: _Server) -> None:
    _attack(
        make_sandbox,
        upstream,
        [
            "/public/..%2fadmin",
            "/public/..%2Fadmin",
            "/public/%2e%2e%2fadmin",
            "/public/..%252fadmin",
            "/public/..%25252Fadmin",
            "/public/..\\admin",
            "/public/..%5cadmin",
            "/public/..%255cadmin",
            "/public/%5c..%5cadmin",
            "/public/..%00/admin",
            "/public/..%2500/admin",
            "/public/x%0d%0aX-Injected:%201/admin",
            "/public/..%09/admin",
            "/public/..\x01/admin",
            "/public/..\x7f/admin",
            "/public/x%3f/../admin",
            "/public/x%253f/../admin",
            "/public//../admin",
            "/public/x%23/../admin",
            "//127.0.0.1/api/admin",
            "http://127.0.0.1/api/admin",
        ],
    )


@pytest.mark.attack("bridge: Unicode and overlong UTF-8 spellings of '..' and '/'", hole=7)
def test_unicode_and_overlong_dots(make_sandbox: Any, upstream: _Server) -> None:
    _attack(
        make_sandbox,
        upstream,
        [
            "/public/%c0%ae%c0%ae/admin",  # overlong '.'
            "/public/%c0%af../admin",  # overlong '/'
            "/public/%e0%80%ae%e0%80%ae/admin",
            "/public/%e2%80%a5/admin",  # U+2025 TWO DOT LEADER (NFKC: '..')
            "/public/%ef%bc%8e%ef%bc%8e/admin",  # fullwidth full stops
            "/public/..%ef%bc%8fadmin",  # fullwidth solidus
            "/public/%u002e%u002e/admin",  # IIS-style %u escapes
            "/public/%25c0%25ae%25c0%25ae/admin",
        ],
    )


@pytest.mark.attack("bridge: what passes is forwarded exactly as checked")
def test_what_passes_is_what_was_checked(make_sandbox: Any, upstream: _Server) -> None:
    """Paths the bridge accepts reach the upstream in their canonical form (so a route check on
    them and the upstream's reading agree); the query goes as it was sent."""
    sb = _bridged(make_sandbox, upstream)
    answers = _send(sb, ["/public/a%2ejson", "/public/x;v=1", "/public/%2541?q=..;/%2e%2e"])
    assert [status for _, status, _ in answers] == [200, 200, 200]
    assert upstream.seen == [
        b"GET /api/public/a.json HTTP/1.1",
        b"GET /api/public/x;v=1 HTTP/1.1",
        b"GET /api/public/%2541?q=..;/%2e%2e HTTP/1.1",
    ]
