"""Issue 21, item 6 through a real ``sandlot serve``: contexts by name, the restore report,
event streams, ``Session.find_or_create``, and ``Client(call_timeout=)`` honoured by the
SDK's calls when the server stops answering (SIGSTOP: alive, silent).

The module has its own server, because the last test stops it."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sandlot
from sandlot.errors import CodeContextNotFoundError, InvalidArgumentError, RemoteUnavailableError
from sandlot.remote.client import close_sessions
from sandlot.sdk.sync import _portal

from .server import ServerProcess

pytestmark = pytest.mark.timeout(150)
GUARD = 60.0  # a call that should have ended by now counts as hung


@pytest.fixture(scope="module")
def own() -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tempfile.mkdtemp(prefix="slnm-", dir="/tmp"))).start()
    yield process
    if process.process is not None:
        os.kill(process.process.pid, signal.SIGCONT)
    process.stop()


@pytest.fixture(scope="module")
def client(own: ServerProcess) -> Iterator[sandlot.Client]:
    yield sandlot.Client(url=own.url)
    _portal.call(close_sessions())  # the SDK's loop's HTTP sessions (made again when needed)


@pytest.fixture(scope="module")
def box(client: sandlot.Client) -> Iterator[sandlot.Sandbox]:
    with sandlot.Sandbox.create(timeout=600, client=client) as sandbox:
        yield sandbox


def test_contexts_by_name(box: sandlot.Sandbox) -> None:
    ex = box.run_code("x = 1", context="anton")  # made on first use
    assert ex.error is None and ex.context.startswith("ctx-")
    assert box.run_code("x + 1", context="anton").text == "2"
    assert box.get_code_context("anton").id == ex.context
    with pytest.raises(InvalidArgumentError, match="named 'anton' exists"):
        box.create_code_context(name="anton")
    # the server's routes take the name where they take the id
    assert box.restart_code_context("anton", forget_state=True).id == ex.context
    assert box.interrupt_code("anton") is False
    box.remove_code_context("anton")
    with pytest.raises(CodeContextNotFoundError):
        box.interrupt_code("anton")


def test_the_restore_report_on_the_first_cell(box: sandlot.Sandbox) -> None:
    box.create_code_context(name="keep", persist=True)
    assert box.run_code("kept = 3", context="keep").restored == []
    box.restart_code_context("keep")
    after = box.run_code("kept", context="keep")
    assert after.text == "3" and after.restored is not None and "kept" in after.restored
    assert box.run_code("kept", context="keep").restored is None


def test_streams_and_breaking_out(box: sandlot.Sandbox) -> None:
    events = list(box.run_code_stream("print('a', flush=True)\nsandlot_progress('p')\n5"))
    assert [e.type for e in events] == ["stdout", "progress", "result", "end"]
    end = events[-1]
    assert isinstance(end, sandlot.EndEvent) and end.execution is not None
    assert end.execution.text == "5"

    code = "state = 'kept'\nimport time\nprint('go', flush=True)\ntime.sleep(60)\nstate = 'ran'"
    for _event in box.run_code_stream(code, context="breaker"):
        break
    assert box.get_code_context("breaker").busy is False
    assert box.run_code("state", context="breaker").text == "'kept'"


def test_find_or_create_through_the_server(client: sandlot.Client) -> None:
    tag = uuid.uuid4().hex[:12]
    made = sandlot.Session.find_or_create({"tag": tag, "user": "ana"}, client=client)
    try:
        assert made.info.metadata == {"tag": tag, "user": "ana"}
        assert sandlot.Session.find_or_create({"tag": tag}, client=client).id == made.id
        other = sandlot.Session.find_or_create({"tag": tag, "user": "bob"}, client=client)
        assert other.id != made.id
        other.delete()
    finally:
        made.delete()


def test_call_timeout_is_honoured_by_the_sdk(own: ServerProcess, box: sandlot.Sandbox) -> None:
    """Every plain call of the SDK ends in RemoteUnavailableError at the client's
    ``call_timeout`` (1 s here, not the default 60) when the server is silent."""
    assert own.process is not None

    async def main() -> list[tuple[str, RemoteUnavailableError]]:
        stalled = sandlot.Client(url=own.url, call_timeout=1)
        assert stalled.call_timeout == 1.0
        asb = await sandlot.AsyncSandbox.connect(box.id, client=stalled)
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "files.exists": lambda: asb.files.exists("/workspace"),
            "list contexts": asb.list_code_contexts,
            "context by name": lambda: asb.get_code_context("breaker"),
            "interrupt": lambda: asb.interrupt_code("breaker"),
            "sessions": lambda: sandlot.AsyncSession.find_or_create({"a": "b"}, client=stalled),
        }
        caught = []
        assert own.process is not None
        os.kill(own.process.pid, signal.SIGSTOP)
        try:
            for what, call in calls.items():
                try:
                    await asyncio.wait_for(call(), GUARD)
                except RemoteUnavailableError as exc:
                    caught.append((what, exc))
        finally:
            os.kill(own.process.pid, signal.SIGCONT)
        await close_sessions()  # this loop's HTTP sessions
        return caught

    caught = asyncio.run(main())
    assert [what for what, _ in caught] == [
        "files.exists",
        "list contexts",
        "context by name",
        "interrupt",
        "sessions",
    ]
    for _what, exc in caught:
        assert exc.code == "remote_unavailable"
        assert "within 1 s" in str(exc)
    # the server works again (a retried call: a pooled connection may have been dropped)
    assert any(c.name == "breaker" for c in box.list_code_contexts())
