"""Attacks on ``/mcp``, the MCP endpoint of a real ``sandlot serve`` on loopback, written as
an attacker would send them: no key or a wrong one, another tenant's sandbox named in every
tool, bodies and arguments too big or too deep, paths that try to leave the sandbox, a flood
of requests, and a web page that drives a key-less local server from the user's browser
(the mcp package's Host and Origin checks). Every refusal is an answer (a 4xx, or a tool
error with sandlot's code), never a crashed server, and the server answers afterwards."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp_server.mcp_driver import Driven, http_server, ok, refused, value
from remote.server import ServerProcess

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.parametrize("provider", ["bwrap"], indirect=True),  # the server's default
]

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def rpc(
    server: ServerProcess, method: str, params: Any = None, key: str | None = None, **headers: str
) -> httpx.Response:
    """One raw JSON-RPC request to /mcp, as any HTTP client can send it."""
    sent = {**ACCEPT, **headers}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    body = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    return httpx.post(server.url + "/mcp", json=body, headers=sent, timeout=60)


def answers(server: ServerProcess, key: str | None) -> bool:
    """The endpoint still lists the tools."""
    answer = rpc(server, "tools/list", {}, key)
    return answer.status_code == 200 and "run_code" in answer.text


def _server(keys: tuple[str, ...]) -> ServerProcess:
    home = Path(tempfile.mkdtemp(prefix="slmcpa-", dir="/tmp"))
    process = ServerProcess(home)
    for name in keys:
        setattr(process, name, process.keys("create", "--name", name))
    return process.start()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = _server(("alice", "mallory"))
    yield process
    process.stop()
    shutil.rmtree(process.home, ignore_errors=True)


@pytest.fixture(scope="module")
def keyless() -> Iterator[ServerProcess]:
    """A server without API keys (allowed on loopback only): everyone is the local tenant."""
    process = _server(())
    yield process
    process.stop()
    shutil.rmtree(process.home, ignore_errors=True)


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Iterator[Driven]:
    driven = Driven(lambda: Client(http_server(server.url + "/mcp", server.alice)))  # type: ignore[attr-defined]
    yield driven
    driven.close()


@pytest.fixture(scope="module")
def victim(alice: Driven) -> Iterator[str]:
    sandbox_id = value(alice.call("create_sandbox"), "sandbox_id")
    ok(alice.call("write_file", path="/workspace/secret", content="s3cret", sandbox_id=sandbox_id))
    yield sandbox_id
    alice.call("close_sandbox", sandbox_id=sandbox_id)


@pytest.mark.attack("MCP: call the tools without a key, with a wrong key, a non-Bearer scheme")
def test_no_key_or_a_wrong_key(server: ServerProcess, victim: str, provider: str) -> None:
    call = {"name": "run_code", "arguments": {"code": "1", "sandbox_id": victim}}
    for headers in (
        {},
        {"Authorization": "Bearer sl_" + "0" * 40},
        {"Authorization": "Bearer x"},
        {"Authorization": f"Basic {server.alice}"},  # type: ignore[attr-defined]
        {"Authorization": server.alice},  # type: ignore[attr-defined]  # no scheme
        {"X-API-KEY": server.alice},  # type: ignore[attr-defined]  # E2B's header is not /mcp's
    ):
        answer = rpc(server, "tools/call", call, **headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.json()["code"] == "unauthenticated"
        assert "s3cret" not in answer.text


@pytest.mark.attack("MCP: name another tenant's sandbox in every tool (read, write, run, close)")
def test_another_tenants_sandbox(server: ServerProcess, victim: str, provider: str) -> None:
    mallory = Driven(lambda: Client(http_server(server.url + "/mcp", server.mallory)))  # type: ignore[attr-defined]
    try:
        for tool, arguments in (
            ("read_file", {"path": "/workspace/secret"}),
            ("run_command", {"command": "cat /workspace/secret"}),
            ("run_command", {"command": "sleep 1", "background": True}),
            ("read_output", {"pid": 1}),
            ("kill_command", {"pid": 1}),
            ("run_code", {"code": "open('/workspace/secret').read()"}),
            ("write_file", {"path": "/workspace/secret", "content": "owned"}),
            ("list_files", {"path": "/workspace"}),
            ("expose_port", {"port": 22}),
            ("close_sandbox", {}),
        ):
            result = mallory.call(tool, sandbox_id=victim, **arguments)
            assert "s3cret" not in str(result.content)
            refused(result, "sandbox_not_found")
        # A session of Alice's is not Mallory's either.
        refused(
            mallory.call("create_sandbox", session="ses-" + uuid.uuid4().hex), "session_not_found"
        )
    finally:
        mallory.close()


@pytest.mark.attack("MCP: a 100 MB write, a 3 MB file, a 5 MB command line, a 100,000-deep JSON")
def test_oversized_arguments(
    server: ServerProcess, alice: Driven, victim: str, provider: str
) -> None:
    key = server.alice  # type: ignore[attr-defined]
    huge = {
        "name": "write_file",
        "arguments": {"path": "/workspace/big", "content": "a" * (100 << 20), "sandbox_id": victim},
    }
    try:
        answer = rpc(server, "tools/call", huge, key)
        assert answer.status_code == 413
    except httpx.TransportError:
        pass  # refused before the body was read: the server closed the connection
    command = {
        "name": "run_command",
        "arguments": {"command": "echo " + "a" * (5 << 20), "sandbox_id": victim},
    }
    assert rpc(server, "tools/call", command, key).status_code == 413
    deep = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_code",'
        '"arguments":{"sandbox_id":"' + victim + '","code":' + "[" * 100000 + "]" * 100000 + "}}}"
    )
    answer = httpx.post(
        server.url + "/mcp",
        content=deep,
        headers={**ACCEPT, "Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert answer.status_code in (200, 400) and "Traceback" not in answer.text
    if answer.status_code == 200:
        assert answer.json().get("error") or answer.json()["result"]["isError"]
    # Within the transport's limit, the tools' own bounds answer with sandlot's codes.
    refused(
        alice.call("write_file", path="/workspace/big", content="a" * (3 << 20), sandbox_id=victim),
        "file_too_large",
    )
    refused(
        alice.call("run_command", command="echo " + "a" * (1 << 20), sandbox_id=victim),
        "invalid_argument",
    )
    refused(alice.call("run_code", code="#" * (1 << 20), sandbox_id=victim), "invalid_argument")
    refused(
        alice.call("create_sandbox", metadata={str(i): "x" for i in range(1000)}),
        "invalid_argument",
    )
    refused(
        alice.call("run_command", command="true", timeout=float("1e308"), sandbox_id=victim),
        "invalid_argument",
    )
    assert "big" not in ok(alice.call("list_files", path="/workspace", sandbox_id=victim))
    assert answers(server, key)


@pytest.mark.attack("MCP: paths that leave the sandbox (.., NUL, relative, 100,000 characters)")
def test_paths(alice: Driven, victim: str, provider: str) -> None:
    marker = f"mcp-escape-{uuid.uuid4().hex}"
    # ".." resolves inside the sandbox's own file system: the host's /tmp never sees it.
    ok(
        alice.call(
            "write_file",
            path=f"/workspace/../../../../tmp/{marker}",
            content="x",
            sandbox_id=victim,
        )
    )
    assert not os.path.exists(f"/tmp/{marker}")
    # The host's /etc/shadow is not the sandbox's to read, whatever the path says.
    shadow = alice.call("read_file", path="/workspace/../../etc/shadow", sandbox_id=victim)
    host_shadow = Path("/etc/shadow").read_text()
    assert shadow.is_error or host_shadow not in str(shadow.content)
    for path in (
        "/workspace/a\0/../../etc/passwd",
        "workspace/secret",
        "../etc/passwd",
        "",
        "/" + "a" * 100000,
    ):
        refused(alice.call("read_file", path=path, sandbox_id=victim), "invalid_argument")
        refused(
            alice.call("write_file", path=path, content="x", sandbox_id=victim), "invalid_argument"
        )
    refused(
        alice.call("run_command", command="true", cwd="/tmp\0x", sandbox_id=victim),
        "invalid_argument",
    )
    refused(alice.call("list_files", path="relative", sandbox_id=victim), "invalid_argument")


@pytest.mark.attack(
    "MCP: a flood of requests (wrong keys, junk, valid calls) to grow the server's memory"
)
def test_flood(server: ServerProcess, provider: str) -> None:
    key = server.alice  # type: ignore[attr-defined]
    assert server.process is not None

    def rss() -> int:
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    with httpx.Client(base_url=server.url, timeout=60) as http:

        def round_() -> None:
            for i in range(100):
                wrong = {**ACCEPT, "Authorization": f"Bearer sl_{uuid.uuid4().hex}"}
                assert (
                    http.post(
                        "/mcp",
                        json={"jsonrpc": "2.0", "id": i, "method": "tools/list"},
                        headers=wrong,
                    ).status_code
                    == 401
                )
                right = {**ACCEPT, "Authorization": f"Bearer {key}"}
                assert http.post("/mcp", content=b"\xff junk", headers=right).status_code in (
                    400,
                    200,
                )
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {
                        "name": "run_code",
                        "arguments": {"code": "1", "sandbox_id": "sb-" + uuid.uuid4().hex[:12]},
                    },
                }
                assert http.post("/mcp", json=body, headers=right).status_code == 200

        round_()  # warm: the first of each kind of request allocates what every later one reuses
        start = rss()
        for _ in range(4):
            round_()
        grown = rss() - start
    assert grown < 64 << 20, f"the server grew by {grown >> 20} MiB over 1,200 requests"
    assert answers(server, key)


@pytest.mark.attack(
    "MCP: a web page of another origin drives a key-less local server (DNS rebinding)"
)
def test_dns_rebinding_on_a_keyless_server(keyless: ServerProcess, provider: str) -> None:
    port = keyless.port
    listed = {"name": "run_command", "arguments": {"command": "echo pwned", "sandbox_id": "sb-x"}}
    for headers, status in (
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "https://127.0.0.1.evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Host": f"evil.example:{port}"}, 421),  # a rebound name: the browser sends its Host
        ({"Host": f"127.0.0.1.evil.example:{port}"}, 421),
    ):
        answer = rpc(keyless, "tools/call", listed, **headers)
        assert answer.status_code == status, (headers, answer.text)
        assert "pwned" not in answer.text
    # The local client itself (loopback Host, no Origin or a loopback one) is served.
    assert rpc(keyless, "tools/list", {}).status_code == 200
    assert rpc(keyless, "tools/list", {}, Origin=f"http://localhost:{port}").status_code == 200
    # A form post (no JSON content type), as a page can send without a preflight, is refused.
    form = httpx.post(
        keyless.url + "/mcp",
        content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        headers={"Content-Type": "text/plain", "Accept": ACCEPT["Accept"]},
    )
    assert form.status_code in (400, 415)
