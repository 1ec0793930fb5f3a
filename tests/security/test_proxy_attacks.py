"""The egress allowlist proxy, attacked from inside a sandbox: strings meant to make it connect
somewhere its policy does not allow.

The sandbox's policy allows one loopback service, ``allowed.test`` (pinned to 127.0.0.1) on
port A, and the address rule that lets that name lead to loopback. Three more listeners on this
host's loopback are the prizes: 127.0.0.1 on another port B, ::1 on port C and 127.0.0.2 on
port A itself. The attacker writes raw HTTP and SOCKS5 to the proxy (``HTTP_PROXY``): userinfo
and authority confusion, CONNECT to an address or another port for the allowed name, a URI
that disagrees with ``Host``, trailing dots and upper case, IPv6 spellings of 127.0.0.1
(mapped, compatible, NAT64, 6to4), decimal, octal, hex and short IPv4 forms. Blocked: no prize
listener ever sees a connection; the proxy answers each attempt with a refusal, except the
ones that go, as they must, to the allowed service. Plain requests to the allowed service work
from the same sandbox, so the test is not blind. No name that a rule matches is looked up in
DNS (the policy pins it): all traffic stays on loopback.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(240)


@dataclass
class Listener:
    """A TCP listener on loopback that records every connection (and its first bytes) and
    answers as an HTTP server would."""

    host: str
    port: int = 0
    seen: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((self.host, self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            try:
                first = conn.recv(4096)
            except OSError:
                first = b""
            self.seen.append(first)
            body = f"reached {self.host}:{self.port}".encode()
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


@dataclass
class Target:
    allowed: Listener  # 127.0.0.1:A, what the policy allows
    secrets: list[Listener]  # 127.0.0.1:B, [::1]:C, 127.0.0.2:A

    @property
    def a(self) -> int:
        return self.allowed.port

    @property
    def b(self) -> int:
        return self.secrets[0].port

    @property
    def c(self) -> int:
        return self.secrets[1].port

    def policy(self) -> dict[str, Any]:
        return {
            "allow": [f"allowed.test:{self.a}", f"127.0.0.1:{self.a}"],
            "resolve": {"allowed.test": "127.0.0.1"},
        }


@pytest.fixture
def target() -> Iterator[Target]:
    allowed = Listener("127.0.0.1")
    secrets = [Listener("127.0.0.1"), Listener("::1")]
    try:
        secrets.append(Listener("127.0.0.2", allowed.port))
    except OSError:
        pass  # the port is taken on 127.0.0.2: that prize is left out of this run
    made = Target(allowed, secrets)
    yield made
    for listener in (allowed, *secrets):
        listener.close()


# Runs inside the sandbox: each attempt's bytes on a fresh connection to the proxy; after a
# 200 to CONNECT (or a SOCKS5 success) it sends a GET through the tunnel. Prints, per attempt,
# [label, answer, body] where answer is the HTTP status, "socks:<code>" or null.
SEND = r"""
import json, os, socket, sys
proxy = os.environ["HTTP_PROXY"].split("//", 1)[1].rstrip("/")
host, port = proxy.rsplit(":", 1)
out = []


def read_all(s, limit=65536):
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


for label, payload in json.load(open(sys.argv[1])):
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(payload.encode("latin-1"))
    answer, body = None, ""
    if payload.startswith("\x05"):
        reply = b""
        try:
            while len(reply) < 4:
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
        if len(reply) >= 4:
            answer = "socks:%d" % reply[3]
            if reply[3] == 0:
                s.sendall(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                body = read_all(s).decode("latin-1")
    elif payload.startswith("CONNECT "):
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
        except OSError:
            pass
        if head.startswith(b"HTTP/1."):
            answer = int(head.split(b" ", 2)[1])
            if answer == 200:
                s.sendall(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                body = read_all(s).decode("latin-1")
            else:
                body = head.decode("latin-1")
    else:
        data = read_all(s)
        if data.startswith(b"HTTP/1."):
            answer = int(data.split(b" ", 2)[1])
        body = data.decode("latin-1")
    s.close()
    out.append([label, answer, body[-300:]])
print(json.dumps(out))
"""


def _get(uri: str, host: str = "x") -> str:
    return f"GET {uri} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"


def _connect(authority: str, host: str | None = None) -> str:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {host or authority}\r\n\r\n"


def _socks(name: str | bytes, port: int) -> str:
    """A SOCKS5 greeting and CONNECT: a domain name (str), or a packed IPv4/IPv6 address."""
    if isinstance(name, str):
        addr = b"\x03" + bytes([len(name)]) + name.encode()
    else:
        addr = (b"\x01" if len(name) == 4 else b"\x04") + name
    return (b"\x05\x01\x00" + b"\x05\x01\x00" + addr + struct.pack("!H", port)).decode("latin-1")


def _run(
    make_sandbox: Any,
    target: Target,
    attempts: list[tuple[str, str]],
    reach_allowed: frozenset[str] = frozenset(),
) -> None:
    """Send the controls and ``attempts`` from one sandbox; assert no prize was reached, and
    that each attempt was refused unless it is in ``reach_allowed`` (those may only reach the
    allowed service)."""
    a = target.a
    controls = [
        ("control: absolute-form", _get(f"http://allowed.test:{a}/ok")),
        ("control: CONNECT", _connect(f"allowed.test:{a}")),
        ("control: SOCKS5", _socks("allowed.test", a)),
    ]
    sb = make_sandbox(network=target.policy())
    sb.files.write("/tmp/attempts.json", json.dumps(controls + attempts))
    sb.files.write("/tmp/send.py", SEND)
    result = sb.commands.run(["python3", "/tmp/send.py", "/tmp/attempts.json"], timeout=180)
    assert result.exit_code == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for label, answer, body in answers[: len(controls)]:
        assert answer in (200, "socks:0"), (label, answer, body)
        assert f"reached 127.0.0.1:{a}" in body, (label, body)
    for listener in target.secrets:
        assert listener.seen == [], f"{listener.host}:{listener.port} was reached: {answers}"
    through = []
    for label, answer, body in answers[len(controls) :]:
        if label in reach_allowed:
            ok = answer in (200, "socks:0") and f"reached 127.0.0.1:{a}" in body
        else:  # an explicit refusal: a 4xx, or a SOCKS5 failure code
            ok = answer in (400, 403) or (str(answer).startswith("socks:") and answer != "socks:0")
        if not ok:
            through.append((label, answer, body))
    assert not through, f"not refused: {through}"


@pytest.mark.attack("proxy: userinfo and authority confusion (allowed.test@127.0.0.1)")
def test_userinfo_and_authority_confusion(make_sandbox: Any, target: Target) -> None:
    a, b = target.a, target.b
    _run(
        make_sandbox,
        target,
        [
            ("userinfo with port", _get(f"http://allowed.test:{a}@127.0.0.1:{b}/")),
            ("userinfo", _get(f"http://allowed.test@127.0.0.1:{b}/")),
            ("userinfo, password", _get(f"http://allowed.test:x@127.0.0.1:{b}/")),
            ("backslash before @", _get(f"http://127.0.0.1:{b}\\@allowed.test:{a}/")),
            ("# before @", _get(f"http://127.0.0.1:{b}#@allowed.test:{a}/")),
            ("? before @", _get(f"http://127.0.0.1:{b}?@allowed.test:{a}/")),
            ("encoded @", _get(f"http://allowed.test:{a}%40127.0.0.1:{b}/")),
            ("two ports", _get(f"http://allowed.test:{a}:{b}/")),
            ("CONNECT userinfo", _connect(f"allowed.test:{a}@127.0.0.1:{b}")),
            ("CONNECT two ports", _connect(f"allowed.test:{a}:{b}")),
            ("port + 65536", _get(f"http://allowed.test:{b + 65536}/")),
            ("CONNECT port + 65536", _connect(f"127.0.0.1:{b + 65536}")),
            ("signed port", _get(f"http://allowed.test:+{b}/")),
            ("https absolute-form", _get(f"https://127.0.0.1:{b}/")),
            ("scheme-relative", _get(f"//127.0.0.1:{b}/")),
        ],
    )


@pytest.mark.attack("proxy: request URI vs Host header, CONNECT to an IP for an allowed name")
def test_uri_and_host_disagree(make_sandbox: Any, target: Target) -> None:
    a, b = target.a, target.b
    smuggled = _get(f"http://127.0.0.1:{b}/", host=f"127.0.0.1:{b}")
    _run(
        make_sandbox,
        target,
        [
            ("URI secret, Host allowed", _get(f"http://127.0.0.1:{b}/", f"allowed.test:{a}")),
            ("URI allowed, Host secret", _get(f"http://allowed.test:{a}/", f"127.0.0.1:{b}")),
            ("origin-form, Host secret", _get("/", f"127.0.0.1:{b}")),
            ("origin-form, Host allowed", _get("/", f"allowed.test:{a}")),
            ("two Host headers", _get(f"http://allowed.test:{a}/", f"x\r\nHost: 127.0.0.1:{b}")),
            ("pipelined second request", _get(f"http://allowed.test:{a}/") + smuggled),
            ("CONNECT IP, Host allowed", _connect(f"127.0.0.1:{b}", f"allowed.test:{a}")),
            ("CONNECT allowed, Host secret", _connect(f"allowed.test:{a}", f"127.0.0.1:{b}")),
            ("CONNECT allowed name, other port", _connect(f"allowed.test:{b}")),
            ("CONNECT allowed address, other port", _connect(f"127.0.0.1:{b}")),
            ("absolute-form allowed name, other port", _get(f"http://allowed.test:{b}/")),
            ("SOCKS5 IPv4 other port", _socks(socket.inet_aton("127.0.0.1"), b)),
            ("SOCKS5 name other port", _socks("allowed.test", b)),
            ("SOCKS5 IP as a name", _socks("127.0.0.1", b)),
        ],
        reach_allowed=frozenset(
            {
                "URI allowed, Host secret",
                "two Host headers",
                "pipelined second request",
                "CONNECT allowed, Host secret",
            }
        ),
    )


@pytest.mark.attack("proxy: trailing dots and upper case on names and addresses")
def test_trailing_dots_and_case(make_sandbox: Any, target: Target) -> None:
    a, b = target.a, target.b
    _run(
        make_sandbox,
        target,
        [
            ("trailing dot, other port", _get(f"http://allowed.test.:{b}/")),
            ("upper case, other port", _get(f"http://ALLOWED.TEST:{b}/")),
            ("CONNECT upper case, trailing dot", _connect(f"ALLOWED.Test.:{b}")),
            ("two trailing dots", _get(f"http://allowed.test..:{a}/")),
            ("address, trailing dot", _get(f"http://127.0.0.1.:{b}/")),
            ("localhost", _get(f"http://localhost:{b}/")),
            ("LOCALHOST.", _connect(f"LOCALHOST.:{b}")),
            ("allowed name as a suffix", _get(f"http://127.0.0.1.allowed.test:{a}/")),
            ("allowed name as a prefix", _connect(f"allowed.test.127.0.0.1.nip.io:{a}")),
            ("SOCKS5 upper case, trailing dot", _socks("ALLOWED.TEST.", b)),
        ],
        reach_allowed=frozenset(),
    )


@pytest.mark.attack("proxy: IPv6, decimal, octal, hex and short spellings of loopback")
def test_other_spellings_of_loopback(make_sandbox: Any, target: Target) -> None:
    a, b, c = target.a, target.b, target.c
    on_b = [
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "017700000001",
        "127.1",
        "127.0.1",
        "127.000.000.001",
        "0",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "[::]",
        "[::1]",
        "[::ffff:127.0.0.1%25lo]",
    ]
    on_c = ["[::1]", "[0::1]", "[0000:0000:0000:0000:0000:0000:0000:0001]", "[::1%25lo]"]
    on_a = ["127.0.0.2", "2130706434", "127.2", "[::ffff:127.0.0.2]", "[::ffff:7f00:2]"]
    attempts = []
    for hosts, port in ((on_b, b), (on_c, c), (on_a, a)):
        for host in hosts:
            attempts.append((f"GET {host}:{port}", _get(f"http://{host}:{port}/")))
            attempts.append((f"CONNECT {host}:{port}", _connect(f"{host}:{port}")))
    attempts += [
        ("SOCKS5 IPv6 mapped", _socks(socket.inet_pton(socket.AF_INET6, "::ffff:7f00:1"), b)),
        ("SOCKS5 IPv6 ::1", _socks(socket.inet_pton(socket.AF_INET6, "::1"), c)),
        ("SOCKS5 IPv4 127.0.0.2", _socks(socket.inet_aton("127.0.0.2"), a)),
        ("SOCKS5 decimal as a name", _socks("2130706433", b)),
    ]
    _run(make_sandbox, target, attempts)
