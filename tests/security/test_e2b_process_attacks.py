"""Attacks on the E2B gateway's process service (envd's ``process.Process`` over Connect), in
raw HTTP as an attacker writes it: malformed envelopes, absurd sizes and values, a wrong or
missing access token, and pids and sandboxes that are not the caller's. A real ``sandlot
serve`` with two tenants' keys on loopback."""

from __future__ import annotations

import base64
import json
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from remote.server import ServerProcess

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.parametrize("provider", ["bwrap"], indirect=True),  # the server's default
]
STREAM = "application/connect+json"
SERVICE = "/process.Process/"


class Box:
    """A sandbox as its tenant holds it, from E2B's create call: its id and access token."""

    def __init__(self, server: ServerProcess, key: str) -> None:
        self.server = server
        self.key = key
        body = json.dumps({"templateID": "base", "timeout": 600}).encode()
        status, answer, _ = call(server, "POST", "/sandboxes", body, {"X-API-KEY": key})
        assert status == 201, answer
        created = json.loads(answer)
        self.id, self.token = created["sandboxID"], created["envdAccessToken"]

    def headers(self, **extra: str) -> dict[str, str]:
        return {"E2b-Sandbox-Id": self.id, "X-Access-Token": self.token, **extra}


def call(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    bearer: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, bytes, dict[str, str]]:
    every = {"Content-Type": content_type, **(headers or {})}
    if bearer:
        every["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(server.url + path, body, every, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def envelope(message: Any, flags: int = 0) -> bytes:
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    return struct.pack(">BI", flags, len(data)) + data


def messages(body: bytes) -> list[tuple[int, dict[str, Any]]]:
    """A stream's envelopes; each must be whole and carry a JSON object."""
    out, at = [], 0
    while at < len(body):
        flags, length = struct.unpack_from(">BI", body, at)
        at += 5
        assert at + length <= len(body), "a cut envelope"
        out.append((flags, json.loads(body[at : at + length])))
        at += length
    return out


def stream(box: Box, procedure: str, raw: bytes, **headers: str) -> tuple[int, list[Any]]:
    status, body, _ = call(
        box.server, "POST", SERVICE + procedure, raw, box.headers(**headers), content_type=STREAM
    )
    return status, messages(body)


def stream_error(box: Box, procedure: str, raw: bytes, **headers: str) -> str:
    """The code of the error a stream ended with (its last envelope)."""
    status, got = stream(box, procedure, raw, **headers)
    assert status == 200
    flags, last = got[-1]
    assert flags & 0x02, "the stream has its end"
    error = last.get("error") or {}
    assert "Traceback" not in json.dumps(last) and "/sandlot/" not in json.dumps(last)
    return str(error.get("code"))


def unary(box: Box, procedure: str, message: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    raw = message if isinstance(message, bytes) else json.dumps(message).encode()
    status, body, _ = call(box.server, "POST", SERVICE + procedure, raw, box.headers(**headers))
    return status, json.loads(body) if body else {}


def start(box: Box, cmd: str, **extra: Any) -> tuple[int, list[dict[str, Any]]]:
    """Run ``bash -c cmd`` to its end; the pid and the events."""
    request = {"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}, **extra}
    status, got = stream(box, "Start", envelope(request))
    assert status == 200
    events = [m.get("event", {}) for _, m in got]
    return events[0]["start"]["pid"], events


def background(box: Box, cmd: str) -> int:
    """Start ``cmd`` with stdin open, as ``background=True`` does, and leave it running:
    the first envelope read, then the connection dropped."""
    request = {"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}, "stdin": True}
    raw = envelope(request)
    every = {**box.headers(), "Content-Type": STREAM}
    http = urllib.request.Request(box.server.url + SERVICE + "Start", raw, every, method="POST")
    with urllib.request.urlopen(http, timeout=60) as answer:
        _, length = struct.unpack(">BI", answer.read(5))
        first = json.loads(answer.read(length))
    return int(first["event"]["start"]["pid"])


def alive(box: Box) -> None:
    """The sandbox and the service still work."""
    _, events = start(box, "echo ALIVE")
    assert events[1]["data"]["stdout"] == base64.b64encode(b"ALIVE\n").decode()
    assert events[2]["end"]["exitCode"] == 0 and events[3] == {}


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[ServerProcess, Box, Box]]:
    home = Path(tempfile.mkdtemp(prefix="sle2bp-", dir="/tmp"))
    server = ServerProcess(home)
    keys = [server.keys("create", "--name", name) for name in ("alice", "bob")]
    server.start()
    alice, bob = Box(server, keys[0]), Box(server, keys[1])
    yield server, alice, bob
    server.stop()


@pytest.mark.attack("malformed Connect envelopes to the E2B process service")
def test_malformed_envelopes(world: tuple[ServerProcess, Box, Box], provider: str) -> None:
    _, alice, _ = world
    good = json.dumps({"process": {"cmd": "/bin/true"}}).encode()
    assert stream_error(alice, "Start", struct.pack(">BI", 0, 100) + good) == "invalid_argument"
    assert stream_error(alice, "Start", struct.pack(">BI", 0, 2**32 - 1) + good) == (
        "resource_exhausted"
    )
    assert stream_error(alice, "Start", envelope(good, flags=1)) == "unimplemented"
    assert stream_error(alice, "Start", envelope(b"{not json")) == "invalid_argument"
    assert stream_error(alice, "Start", envelope(b"[1, 2]")) == "invalid_argument"
    assert stream_error(alice, "Start", envelope(b"\xff\xfe")) == "invalid_argument"
    assert stream_error(alice, "Start", b"\x00\x00") == "invalid_argument"
    assert stream_error(alice, "Start", envelope({"process": "rm -rf /"})) == "invalid_argument"
    assert stream_error(alice, "Start", envelope({"process": {"cmd": ["/bin/sh"]}})) == (
        "invalid_argument"
    )
    assert stream_error(alice, "Connect", envelope({"process": {"pid": "1; ls"}})) == (
        "invalid_argument"
    )
    deep = b"[" * 100_000 + b"]" * 100_000
    assert stream_error(alice, "Start", envelope(deep)) == "invalid_argument"
    status, body = unary(alice, "List", b"{oops")
    assert (status, body.get("code")) == (400, "invalid_argument")
    status, body = unary(alice, "SendInput", {"process": {"pid": 1}, "input": {"stdin": "%%"}})
    assert (status, body.get("code")) == (400, "invalid_argument")
    # A stream's client half with a cut envelope.
    cut = envelope({"start": {"process": {"pid": 1}}}) + b"\x00\x00\x00\x00\x10{"
    assert stream_error(alice, "StreamInput", cut) == "invalid_argument"
    alive(alice)


@pytest.mark.attack("start E2B commands with a huge command line, arguments or environment")
def test_huge_starts(world: tuple[ServerProcess, Box, Box], provider: str) -> None:
    _, alice, _ = world
    huge = "x" * (2 * 1024 * 1024)
    for request in (
        {"process": {"cmd": huge}},
        {"process": {"cmd": "/bin/echo", "args": [huge]}},
        {"process": {"cmd": "/bin/echo", "args": ["a"] * 300_000}},
        {"process": {"cmd": "/bin/echo", "envs": {"A": huge}}},
        {"process": {"cmd": "/bin/echo", "envs": {f"V{i}": "1" for i in range(10_000)}}},
        {"process": {"cmd": "/bin/echo", "envs": {"A": {"secret": "X"}}}},
        {"process": {"cmd": "/bin/echo"}, "tag": "t" * 100_000},
        {"process": {"cmd": "/bin/echo"}, "pty": {"size": {"cols": 10**9, "rows": 1}}},
    ):
        assert stream_error(alice, "Start", envelope(request)) == "invalid_argument"
    too_big = envelope({"process": {"cmd": "x" * (9 * 1024 * 1024)}})
    try:  # refused before it is read: the answer, or a reset while still sending
        assert stream_error(alice, "Start", too_big) == "resource_exhausted"
    except (urllib.error.URLError, ConnectionError):
        pass
    alive(alice)


@pytest.mark.attack("absurd Connect-Timeout-Ms and Keepalive-Ping-Interval headers")
def test_absurd_headers(world: tuple[ServerProcess, Box, Box], provider: str) -> None:
    _, alice, _ = world
    request = envelope({"process": {"cmd": "/bin/echo", "args": ["hi"]}})
    for value in ("-1", "1e9", "99999999999999999999", "abc", "0"):
        assert stream_error(alice, "Start", request, **{"Connect-Timeout-Ms": value}) == (
            "invalid_argument"
        )
    for value in ("nan", "-5", "1e309", "0", "x" * 1000):
        status, got = stream(alice, "Start", request, **{"Keepalive-Ping-Interval": value})
        assert status == 200 and got[-1][1] == {}  # clamped: the command ran to its end


@pytest.mark.attack("use another tenant's sandbox or process through the E2B process service")
def test_other_sandbox_and_tenant(world: tuple[ServerProcess, Box, Box], provider: str) -> None:
    server, alice, bob = world
    victim = background(alice, "cat")
    # Bob's own token does not open Alice's sandbox, whatever id he names.
    stolen = {"E2b-Sandbox-Id": alice.id, "X-Access-Token": bob.token}
    for procedure, message in (
        ("List", {}),
        ("SendSignal", {"process": {"pid": victim}, "signal": "SIGNAL_SIGKILL"}),
        ("SendInput", {"process": {"pid": victim}, "input": {"stdin": "eA=="}}),
        ("CloseStdin", {"process": {"pid": victim}}),
        ("Update", {"process": {"pid": victim}, "pty": {"size": {"cols": 5, "rows": 5}}}),
    ):
        raw = json.dumps(message).encode()
        status, body, _ = call(server, "POST", SERVICE + procedure, raw, stolen)
        assert status == 401, (procedure, body)
        assert json.loads(body)["code"] == "unauthenticated"
    raw = envelope({"process": {"cmd": "/bin/touch", "args": ["/tmp/pwned"]}})
    status, body, _ = call(server, "POST", SERVICE + "Start", raw, stolen, content_type=STREAM)
    assert messages(body)[-1][1]["error"]["code"] == "unauthenticated"
    raw = envelope({"process": {"pid": victim}})
    status, body, _ = call(server, "POST", SERVICE + "Connect", raw, stolen, content_type=STREAM)
    assert messages(body)[-1][1]["error"]["code"] == "unauthenticated"
    # Alice's pid in Bob's sandbox (his own token) is not a process of his.
    for procedure, message in (
        ("SendSignal", {"process": {"pid": victim}, "signal": "SIGNAL_SIGKILL"}),
        ("SendInput", {"process": {"pid": victim}, "input": {"stdin": "eA=="}}),
        ("CloseStdin", {"process": {"pid": victim}}),
    ):
        status, answer = unary(bob, procedure, message)
        assert (status, answer["code"]) == (404, "not_found"), procedure
    assert stream_error(bob, "Connect", envelope({"process": {"pid": victim}})) == "not_found"
    assert victim not in [p["pid"] for p in unary(bob, "List", {})[1]["processes"]]
    # Alice's process is untouched, and still takes her input.
    assert victim in [p["pid"] for p in unary(alice, "List", {})[1]["processes"]]
    assert unary(alice, "SendSignal", {"process": {"pid": victim}, "signal": 9})[0] == 200
    assert bob.id != alice.id and bob.token != alice.token
    _, events = start(bob, "test -e /tmp/pwned && echo PWNED; true")
    assert not any("data" in e for e in events)


@pytest.mark.attack("send E2B input or signals to processes that are not commands")
def test_input_and_signals_to_non_commands(
    world: tuple[ServerProcess, Box, Box], provider: str
) -> None:
    _, alice, _ = world
    for pid in (1, 2, 2**31 - 1):
        status, body = unary(alice, "SendInput", {"process": {"pid": pid}, "input": {"stdin": ""}})
        assert (status, body["code"]) == (404, "not_found")
        status, body = unary(alice, "SendSignal", {"process": {"pid": pid}, "signal": 9})
        assert (status, body["code"]) == (404, "not_found")
    bad: tuple[Any, ...] = (0, -1, 2**31, 2**64, 1.5, "x", None, [1])
    for value in bad:
        status, body = unary(alice, "SendSignal", {"process": {"pid": value}, "signal": 9})
        assert (status, body["code"]) == (400, "invalid_argument"), value
    status, body = unary(alice, "SendInput", {"process": {"tag": "nobody"}, "input": {}})
    assert status in (400, 404)


@pytest.mark.attack("send signals outside envd's Signal enum through the E2B process service")
def test_signals_outside_the_enum(world: tuple[ServerProcess, Box, Box], provider: str) -> None:
    _, alice, _ = world
    victim = background(alice, "cat")
    for signal in ("SIGNAL_SIGINT", "SIGNAL_UNSPECIFIED", 0, 2, 19, -9, 2**40, "9", None, [9]):
        message = {"process": {"pid": victim}, "signal": signal}
        status, body = unary(alice, "SendSignal", message)
        assert (status, body["code"]) == (400, "invalid_argument"), signal
    assert victim in [p["pid"] for p in unary(alice, "List", {})[1]["processes"]]
    message = {"process": {"pid": victim}, "signal": "SIGNAL_SIGTERM"}
    assert unary(alice, "SendSignal", message)[0] == 200


@pytest.mark.attack("call the E2B process service with no, a wrong or a forged access token")
def test_tokens(world: tuple[ServerProcess, Box, Box], provider: str) -> None:
    server, alice, _ = world
    raw = json.dumps({}).encode()
    for token in ("", "x", alice.token[:-1], alice.token + "A", "\u00e9" * 10):
        headers = {"E2b-Sandbox-Id": alice.id, "X-Access-Token": token}
        status, body, _ = call(server, "POST", SERVICE + "List", raw, headers)
        assert (status, json.loads(body)["code"]) == (401, "unauthenticated"), token
    status, _, _ = call(server, "GET", "/health", None, {"E2b-Sandbox-Id": alice.id})
    assert status == 401
    status, _, _ = call(server, "GET", "/health", None, alice.headers())
    assert status == 204
    # A sandbox id that is not one, with a token made for it elsewhere: nothing confirmed.
    fake = {"E2b-Sandbox-Id": "sb-" + "0" * 12, "X-Access-Token": alice.token}
    status, body, _ = call(server, "POST", SERVICE + "List", raw, fake)
    assert status == 401
    long_id = {"E2b-Sandbox-Id": "a" * 5000, "X-Access-Token": alice.token}
    status, body, _ = call(server, "POST", SERVICE + "List", raw, long_id)
    assert status in (401, 404)


@pytest.mark.attack("call the E2B process service without E2b-Sandbox-Id")
def test_no_sandbox_header(world: tuple[ServerProcess, Box, Box], provider: str) -> None:
    server, alice, _ = world
    headers = {"X-Access-Token": alice.token}
    raw = envelope({"process": {"cmd": "/bin/touch", "args": ["/tmp/nohdr"]}})
    status, body, _ = call(server, "POST", SERVICE + "Start", raw, headers, content_type=STREAM)
    assert status in (401, 404)  # sandlot's own API: no such route, or no key
    assert b"Traceback" not in body
    status, _, _ = call(server, "GET", "/health", None, headers, bearer=alice.key)
    assert status != 204
    _, events = start(alice, "test -e /tmp/nohdr && echo RAN; true")
    assert not any("data" in e for e in events)
