"""``/mcp`` on a real ``sandlot serve`` (loopback, two tenants' keys), driven by the ``mcp``
package's streamable HTTP client: the same tools as over stdio, every call naming its
sandbox, each tenant confined to its own sandboxes as on ``/v1``."""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp_driver import Driven, http_server, ok, refused, text, value
from remote.server import ServerProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="slmcp-", dir="/tmp"))
    process = ServerProcess(home)
    process.alice = process.keys("create", "--name", "alice")  # type: ignore[attr-defined]
    process.bob = process.keys("create", "--name", "bob")  # type: ignore[attr-defined]
    process.start()
    yield process
    process.stop()
    shutil.rmtree(home, ignore_errors=True)


def _tenant(server: ServerProcess, key: str) -> Iterator[Driven]:
    """An MCP client of /mcp with one tenant's key, closed at the end of the module."""
    driven = Driven(lambda: Client(http_server(server.url + "/mcp", key)))
    yield driven
    driven.close()


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Iterator[Driven]:
    yield from _tenant(server, server.alice)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def bob(server: ServerProcess) -> Iterator[Driven]:
    yield from _tenant(server, server.bob)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def sandbox(alice: Driven) -> Iterator[str]:
    sandbox_id = value(alice.call("create_sandbox", metadata={"owner": "alice"}), "sandbox_id")
    yield sandbox_id
    alice.call("close_sandbox", sandbox_id=sandbox_id)


def test_tools_are_listed(alice: Driven) -> None:
    tools = {tool.name: tool for tool in alice.tools()}
    assert {"create_sandbox", "run_code", "run_command", "read_output", "close_sandbox"} <= set(
        tools
    )
    assert all(tool.description for tool in tools.values())


def test_a_call_must_name_its_sandbox(alice: Driven) -> None:
    refused(alice.call("run_code", code="1"), "invalid_argument")


def test_state_is_kept_between_calls(alice: Driven, sandbox: str) -> None:
    ok(alice.call("run_code", code="total = 20", sandbox_id=sandbox))
    assert ok(alice.call("run_code", code="total * 2 + 2", sandbox_id=sandbox)) == "42"


def test_a_png_display_comes_back_as_an_image(alice: Driven, sandbox: str) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    code = (
        "import base64\n"
        "class Picture:\n"
        f"    def _repr_png_(self): return base64.b64decode({png!r})\n"
        "display(Picture())"
    )
    result = alice.call("run_code", code=code, sandbox_id=sandbox)
    images = [b for b in result.content if b.type == "image"]
    assert len(images) == 1 and images[0].data == png, text(result)


def test_a_background_command_is_read_later_and_killed(alice: Driven, sandbox: str) -> None:
    started = ok(
        alice.call(
            "run_command", command="echo ready; sleep 600", background=True, sandbox_id=sandbox
        )
    )
    pid = int(started.split()[2])
    shown = ok(alice.call("read_output", pid=pid, sandbox_id=sandbox, wait=10))
    assert "running" in shown and "ready" in shown
    assert int(value(alice.call("read_output", pid=pid, sandbox_id=sandbox), "next_offset")) == 6
    ok(alice.call("kill_command", pid=pid, sandbox_id=sandbox))
    ended = ok(alice.call("read_output", pid=pid, sandbox_id=sandbox, offset=6, wait=10))
    assert "ended, exit_code: 137" in ended


def test_files_round_trip(alice: Driven, sandbox: str) -> None:
    ok(alice.call("write_file", path="/workspace/x/y.txt", content="data\n", sandbox_id=sandbox))
    assert ok(alice.call("read_file", path="/workspace/x/y.txt", sandbox_id=sandbox)) == "data\n"
    assert "/workspace/x/y.txt" in ok(
        alice.call("list_files", path="/workspace/x", sandbox_id=sandbox)
    )


def test_expose_port_gives_a_url_under_the_server(
    alice: Driven, sandbox: str, server: ServerProcess
) -> None:
    url = ok(alice.call("expose_port", port=8000, sandbox_id=sandbox))
    assert url.startswith(server.url) and "/ports/8000" in url


def test_bad_arguments_are_tool_errors_and_the_server_answers_after(
    alice: Driven, sandbox: str
) -> None:
    refused(
        alice.call("run_command", command="true", timeout=-5, sandbox_id=sandbox),
        "invalid_argument",
    )
    refused(alice.call("read_file", path="../etc/passwd", sandbox_id=sandbox), "invalid_argument")
    refused(alice.call("read_output", pid=424242, sandbox_id=sandbox), "process_not_found")
    refused(alice.call("run_code", code="1", sandbox_id="sb-nothere"), "sandbox_not_found")
    assert ok(alice.call("run_code", code="total", sandbox_id=sandbox)) == "20"


def test_another_tenant_cannot_name_the_sandbox(bob: Driven, sandbox: str, alice: Driven) -> None:
    for tool, arguments in (
        ("run_code", {"code": "total"}),
        ("run_command", {"command": "cat /workspace/x/y.txt"}),
        ("read_file", {"path": "/workspace/x/y.txt"}),
        ("write_file", {"path": "/workspace/evil", "content": "x"}),
        ("list_files", {"path": "/workspace"}),
        ("expose_port", {"port": 8000}),
        ("close_sandbox", {}),
    ):
        refused(bob.call(tool, sandbox_id=sandbox, **arguments), "sandbox_not_found")
    # Bob's own sandbox works, and Alice's is untouched.
    own = value(bob.call("create_sandbox"), "sandbox_id")
    assert ok(bob.call("run_code", code="'bob'", sandbox_id=own)) == "'bob'"
    refused(alice.call("run_code", code="1", sandbox_id=own), "sandbox_not_found")
    ok(bob.call("close_sandbox", sandbox_id=own))
    assert ok(alice.call("run_code", code="total", sandbox_id=sandbox)) == "20"


def test_a_session_sandbox_is_detached_with_a_checkpoint(alice: Driven) -> None:
    made = alice.call("create_sandbox", session="new")
    sandbox_id, session_id = value(made, "sandbox_id"), value(made, "session_id")
    ok(alice.call("write_file", path="/workspace/kept.txt", content="v1", sandbox_id=sandbox_id))
    closed = ok(alice.call("close_sandbox", sandbox_id=sandbox_id))
    assert closed.startswith(f"detached {sandbox_id} from session {session_id}")
    again = value(alice.call("create_sandbox", session=session_id), "sandbox_id")
    assert ok(alice.call("read_file", path="/workspace/kept.txt", sandbox_id=again)) == "v1"
    ok(alice.call("close_sandbox", sandbox_id=again))


def test_without_a_key_the_endpoint_answers_401(server: ServerProcess) -> None:
    answer = httpx.post(server.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert answer.status_code == 401 and answer.json()["code"] == "unauthenticated"
