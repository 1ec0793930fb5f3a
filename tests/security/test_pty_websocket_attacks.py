"""Attacks on the server's terminal WebSocket (``/v1/sandboxes/{id}/pty``, ``.../pty/{pid}``):
no key, a wrong key, another tenant's sandbox or process, messages too big, control messages
that are malformed or absurd. A real ``sandlot serve`` with API keys on loopback, driven by a
plain WebSocket client (the ``websockets`` package), as an attacker would."""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from remote.server import ServerProcess
from remote.terminals import Term, dial, start, ws_url
from websockets.exceptions import InvalidStatus

import sandlot

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.parametrize("provider", ["bwrap"], indirect=True),  # the server's default
]
SHELL = "bash --norc --noprofile -i"


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    home = Path(tempfile.mkdtemp(prefix="slptya-", dir="/tmp"))
    process = ServerProcess(home)
    keys = {name: process.keys("create", "--name", name) for name in ("alice", "bob")}
    process.start()
    yield process, keys
    process.stop()


@pytest.fixture(scope="module")
def victim(keyed: tuple[ServerProcess, dict[str, str]]) -> Iterator[sandlot.Sandbox]:
    server, keys = keyed
    sb = sandlot.Sandbox.create(timeout=900, client=sandlot.Client(server.url, keys["alice"]))
    yield sb
    sb.kill()


def refused(url: str, sandbox_id: str, path: str = "/pty", **how: Any) -> tuple[int, str]:
    """The status and error code a refused upgrade answered with."""
    with pytest.raises(InvalidStatus) as caught:
        dial(url, sandbox_id, path, **how).close()
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}").get("code", "")


def alive(term: Term, mark: int) -> None:
    """The terminal still answers."""
    term.type(f"echo ALIVE$(({mark}+1))\r")
    term.until(f"ALIVE{mark + 1}")


@pytest.mark.attack("open or reattach a sandbox's terminal without a key, or with a wrong one")
def test_no_key_no_terminal(
    provider: str, keyed: tuple[ServerProcess, dict[str, str]], victim: sandlot.Sandbox
) -> None:
    server, keys = keyed
    term = start(server.url, victim.id, key=keys["alice"], cmd=SHELL)
    pid = term.controls[0]["pid"]
    for path in ("/pty", f"/pty/{pid}", f"/processes/{pid}/attach"):
        assert refused(server.url, victim.id, path) == (401, "unauthenticated")
        for wrong in ("sl_nope", keys["alice"] + "x", ""):
            assert refused(server.url, victim.id, path, key=wrong)[0] == 401
            protocols = ["sandlot.pty", f"sandlot.bearer.{wrong}"]
            assert refused(server.url, victim.id, path, subprotocols=protocols)[0] == 401
    alive(term, 1)
    term.control(type="kill")
    term.exit()
    assert keys["alice"] not in server.log.read_text()
    # An empty bearer token once met the server's own "keys required?" cache entry: a 500.
    empty = urllib.request.Request(
        f"{server.url}/v1/sandboxes", headers={"Authorization": "Bearer "}
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(empty, timeout=30)
    assert answer.value.code == 401


@pytest.mark.attack("open, reattach or read another tenant's terminal (by sandbox id and pid)")
def test_another_tenants_terminal_is_not_found(
    provider: str, keyed: tuple[ServerProcess, dict[str, str]], victim: sandlot.Sandbox
) -> None:
    server, keys = keyed
    term = start(server.url, victim.id, key=keys["alice"], cmd=SHELL)
    pid = term.controls[0]["pid"]
    term.type("echo SECRET$((20+1))\r")
    term.until("SECRET21")
    bob = ["sandlot.pty", f"sandlot.bearer.{keys['bob']}"]
    for path in ("/pty", f"/pty/{pid}", f"/processes/{pid}/attach"):
        assert refused(server.url, victim.id, path, key=keys["bob"]) == (404, "sandbox_not_found")
        assert refused(server.url, victim.id, path, subprotocols=bob)[0] == 404
    with sandlot.Sandbox.create(client=sandlot.Client(server.url, keys["bob"])) as own:
        # Bob's own sandbox does not reach Alice's processes by pid either.
        status, code = refused(server.url, own.id, f"/pty/{pid}", key=keys["bob"])
        assert (status, code) == (404, "process_not_found")
        rest = f"{server.url}/v1/sandboxes/{victim.id}/processes"
        request = urllib.request.Request(rest, headers={"Authorization": f"Bearer {keys['bob']}"})
        with pytest.raises(urllib.error.HTTPError) as listing:
            urllib.request.urlopen(request, timeout=30)
        assert listing.value.code == 404
    alive(term, 2)
    term.control(type="kill")
    term.exit()


@pytest.mark.attack("send WebSocket messages too big for the server (input, control, start)")
def test_oversized_messages_close_the_socket_not_the_server(
    provider: str, keyed: tuple[ServerProcess, dict[str, str]], victim: sandlot.Sandbox
) -> None:
    server, keys = keyed
    for message in (b"x" * (2 << 20), json.dumps({"type": "resize", "pad": "y" * (200 << 10)})):
        term = start(server.url, victim.id, key=keys["alice"], cmd="cat")
        term.ws.send(message)
        assert term.close_code() == 1009
    term = dial(server.url, victim.id, key=keys["alice"])
    term.control(type="start", cmd="true", env={"BIG": "z" * (100 << 10)})
    assert term.close_code() == 1009
    term = start(server.url, victim.id, key=keys["alice"], cmd=SHELL)  # the server carries on
    alive(term, 3)
    term.control(type="kill")
    term.exit()


@pytest.mark.attack("absurd or malformed control messages: resize to 1e9, nested JSON, junk")
def test_bad_control_messages_are_refused_and_the_terminal_goes_on(
    provider: str, keyed: tuple[ServerProcess, dict[str, str]], victim: sandlot.Sandbox
) -> None:
    server, keys = keyed
    term = start(server.url, victim.id, key=keys["alice"], cmd=SHELL, cols=80, rows=24)
    bad: list[Any] = [
        {"type": "resize", "cols": 10**9, "rows": 10**9},
        {"type": "resize", "cols": -1, "rows": 24},
        {"type": "resize", "cols": 0, "rows": 0},
        {"type": "resize", "cols": "80", "rows": None},
        {"type": "resize", "cols": 80.5, "rows": 24},
        {"type": "resize"},
        {"type": "signal", "signal": 0},
        {"type": "signal", "signal": 10**6},
        {"type": "signal", "signal": "KILL"},
        {"type": "start", "cmd": "id"},  # only first
        {"type": "nope"},
        {"type": ["resize"]},
        [1, 2, 3],
        "resize",
    ]
    for message in bad:
        term.ws.send(json.dumps(message))
        error = term.control_of("error")
        term.controls.remove(error)
        assert error["code"] == "invalid_argument", (message, error)
    for raw in ("{not json", "[" * 30000 + "]" * 30000, "\u0000", ""):
        term.ws.send(raw)
        error = term.control_of("error")
        term.controls.remove(error)
        assert error["code"] == "invalid_argument", (raw[:20], error)
    term.type("stty size; echo SIZE$((7+7))\r")
    assert "24 80" in term.until("SIZE14").decode()  # no bad resize took
    alive(term, 4)
    term.control(type="kill")
    assert term.exit()["signal"] == 9


@pytest.mark.attack("start a terminal with a hostile start message (NUL, relative cwd, bad env)")
def test_hostile_start_messages_are_refused(
    provider: str, keyed: tuple[ServerProcess, dict[str, str]], victim: sandlot.Sandbox
) -> None:
    server, keys = keyed
    for start_message in (
        {"cmd": "id\u0000; reboot"},
        {"argv": ["", "x"]},
        {"cmd": "id", "argv": ["id"]},
        {"cwd": "../../etc"},
        {"env": {"BAD NAME": "x"}},
        {"env": {"X": "a\u0000b"}},
        {"env": {"X": {"secret": "../../key"}}},
        {"cols": 10001},
        {"buffer": 1 << 40},
        {"timeout": -1},
        {"extra": "field"},
    ):
        term = dial(server.url, victim.id, key=keys["alice"])
        term.control(type="start", **start_message)
        error = term.control_of("error")
        assert error["code"] == "invalid_argument", (start_message, error)
        assert term.close_code() == 1008
    term = dial(server.url, victim.id, key=keys["alice"])
    term.type(b"\x03 binary first")
    assert term.control_of("error")["code"] == "invalid_argument"
    assert term.close_code() == 1008


@pytest.mark.attack("a web page of another origin types into a terminal on a server without keys")
def test_a_web_page_cannot_open_a_terminal_on_a_keyless_server(provider: str) -> None:
    """A browser lets any page open a WebSocket to loopback, and no CORS rule applies: on a
    server without API keys (loopback only), a page the user visits could open a terminal in
    a sandbox whose id it learned. Blocked: an upgrade with a foreign ``Origin`` is refused
    with 403 unless a key authenticated it; the same page origin, and programs (which send no
    ``Origin``), still get in."""
    from websockets.sync.client import connect

    home = Path(tempfile.mkdtemp(prefix="slptyo-", dir="/tmp"))
    server = ServerProcess(home)
    server.start()
    try:
        sb = sandlot.Sandbox.create(timeout=300, client=sandlot.Client(server.url))
        url = ws_url(server.url, sb.id, cmd="id")
        host = server.url.split("//", 1)[1]
        for origin in ("http://evil.example", "null", f"http://{host}.evil.example"):
            with pytest.raises(InvalidStatus) as caught:
                connect(url, origin=origin, open_timeout=10).close()  # type: ignore[arg-type]
            assert caught.value.response.status_code == 403
        for origin in (f"http://{host}", None):  # the server's own page, and a program
            with connect(url, origin=origin, open_timeout=10) as ws:  # type: ignore[arg-type]
                assert json.loads(ws.recv(timeout=10))["type"] == "started"
        sb.kill()
    finally:
        server.stop()
