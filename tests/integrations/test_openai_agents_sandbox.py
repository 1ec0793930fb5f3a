"""The OpenAI Agents SDK (openai-agents 0.24, unmodified) over sandlot
(sandlot.integrations.openai_agents): SandboxAgent runs driven by the SDK's own offline
scripted model (agents.testing.ScriptedModel) against real bwrap sandboxes, a resume from
serialized state in a new process, the SDK's tar snapshot path, PTY processes, and the SDK's
error forms for bad input. The SDK ships no conformance suite for sandbox clients."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from agents import Runner
from agents.items import ToolCallOutputItem
from agents.run import RunConfig
from agents.sandbox import LocalSnapshotSpec, Manifest, SandboxAgent, SandboxRunConfig
from agents.sandbox.capabilities import Filesystem, Shell
from agents.sandbox.entries import File
from agents.sandbox.errors import (
    InvalidManifestPathError,
    PtySessionNotFoundError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
)
from agents.sandbox.session import SandboxSession, SandboxSessionState
from agents.sandbox.snapshot import NoopSnapshot
from agents.testing import ScriptedModel, assistant_message, function_call
from openai.types.responses import ResponseCustomToolCall

import sandlot
from sandlot.integrations.openai_agents import (
    SandlotSandboxClient,
    SandlotSandboxClientOptions,
    SandlotSandboxSession,
    SandlotSandboxSessionState,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

HERE = Path(__file__).parent
NOTES = b"from the manifest\n"


def _patch_call(path: str, text: str, call_id: str) -> ResponseCustomToolCall:
    """The model's apply_patch call (a custom tool) that creates a file."""
    diff = "".join(f"+{line}\n" for line in text.splitlines())
    operation = {"type": "create_file", "path": path, "diff": diff}
    return ResponseCustomToolCall(
        type="custom_tool_call", name="apply_patch", input=json.dumps(operation), call_id=call_id
    )


def _outputs(result: Any) -> list[str]:
    return [str(item.output) for item in result.new_items if isinstance(item, ToolCallOutputItem)]


def _client_run_config(client: SandlotSandboxClient, snapshots: Path) -> RunConfig:
    """A run whose Runner creates (and at its end deletes) the session through ``client``,
    with the SDK's snapshots in ``snapshots``."""
    return RunConfig(
        sandbox=SandboxRunConfig(
            client=client,
            options=SandlotSandboxClientOptions(),
            snapshot=LocalSnapshotSpec(base_path=snapshots),
        ),
        tracing_disabled=True,
    )


def _agent(model: ScriptedModel) -> SandboxAgent[Any]:
    return SandboxAgent(
        name="sandlot",
        model=model,
        instructions="Work in the workspace.",
        default_manifest=Manifest(entries={"notes.md": File(content=NOTES)}),
        capabilities=[Shell(), Filesystem()],
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live() -> AsyncIterator[SandboxSession]:
    """One started durable session for the tests that call the session directly."""
    client = SandlotSandboxClient()
    session = await client.create(options=SandlotSandboxClientOptions())
    async with session:
        yield session
    await client.delete(session)


async def test_agent_runs_writes_reads_and_resumes_in_a_new_process(tmp_path: Path) -> None:
    client = SandlotSandboxClient()
    model = ScriptedModel(
        [
            [function_call("exec_command", {"cmd": "cat notes.md && pwd"}, call_id="call_1")],
            [_patch_call("made.txt", "written by the agent", "call_2")],
            [function_call("exec_command", {"cmd": "cat made.txt"}, call_id="call_3")],
            [assistant_message("Done.")],
        ]
    )
    agent = _agent(model)
    session = await client.create(manifest=agent.default_manifest)
    async with session:
        run_config = RunConfig(sandbox=SandboxRunConfig(session=session), tracing_disabled=True)
        result = await Runner.run(agent, "Look, write, read.", run_config=run_config)
        model.assert_complete()
        # the SDK's own read path, on the same session
        read_back = (await session.read(Path("made.txt"))).read()
    outputs = _outputs(result)
    assert result.final_output == "Done."
    assert "from the manifest" in outputs[0] and "/workspace" in outputs[0]
    assert "Process exited with code 0" in outputs[0]
    assert "made.txt" in outputs[1]
    assert "written by the agent" in outputs[2]
    assert read_back == b"written by the agent"  # V4A create: no final newline

    # The session's sandbox is gone (detached: checkpointed, destroyed); its state resumes
    # in another process, where a new sandbox gets the checkpoint.
    state = session.state
    assert isinstance(state, SandlotSandboxSessionState) and state.sandlot_session_id
    first_sandbox = state.sandbox_id
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(client.serialize_session_state(state)))
    done = subprocess.run(
        [sys.executable, str(HERE / "openai_agents_resume.py"), str(state_file)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["final_output"] == "Read it back."
    (resumed_output,) = answer["tool_outputs"]
    assert "written by the agent" in resumed_output
    assert "notes.md" in resumed_output  # the manifest's file came back with the checkpoint
    assert "Process exited with code 0" in resumed_output

    sandlot_session = await sandlot.AsyncSession.connect(state.sandlot_session_id)
    info = await sandlot_session.refresh()
    assert info.sandbox_id is None  # the resumed run released its sandbox too
    assert first_sandbox is not None
    await client.delete_workspace(state)
    with pytest.raises(sandlot.errors.NotFoundError):
        await sandlot.AsyncSession.connect(state.sandlot_session_id)


async def test_runner_owned_session_keeps_the_workspace_after_the_run(tmp_path: Path) -> None:
    """With client + options the Runner creates the session and, at the end, stops, shuts
    down and deletes it: the sandbox goes, the durable workspace stays (in the sandlot
    session's checkpoint; the SDK's snapshot holds a reference to it)."""
    client = SandlotSandboxClient()
    model = ScriptedModel(
        [
            [function_call("exec_command", {"cmd": "echo kept > kept.txt"}, call_id="c1")],
            [assistant_message("Saved.")],
        ]
    )
    run_config = _client_run_config(client, tmp_path)
    result = await Runner.run(_agent(model), "Save a file.", run_config=run_config)
    model.assert_complete()
    (snapshot_file,) = tmp_path.glob("*.tar")
    assert snapshot_file.read_bytes().startswith(b"SANDLOT_SESSION_CHECKPOINT_V1\n")
    payload = result.to_state().to_json()["sandbox"]
    assert payload["backend_id"] == "sandlot"
    state = client.deserialize_session_state(payload["session_state"])
    assert isinstance(state, SandlotSandboxSessionState) and state.sandlot_session_id
    sandlot_session = await sandlot.AsyncSession.connect(state.sandlot_session_id)
    assert (await sandlot_session.refresh()).sandbox_id is None
    async with sandlot_session.sandbox() as sb:
        assert await sb.files.read("/workspace/kept.txt") == "kept\n"
    await sandlot_session.delete()


async def test_plain_sandbox_round_trips_the_sdk_tar_snapshot(tmp_path: Path) -> None:
    """durable=False: the SDK persists a tar of /workspace into its snapshot at stop and
    hydrates a new sandbox from it on resume (the path every SDK backend shares)."""
    client = SandlotSandboxClient()
    session = await client.create(
        snapshot=LocalSnapshotSpec(base_path=tmp_path),
        manifest=Manifest(entries={"notes.md": File(content=NOTES)}),
        options=SandlotSandboxClientOptions(durable=False),
    )
    async with session:
        await session.write(Path("sub/data.bin"), io.BytesIO(bytes(range(256))))
        assert (await session.exec("ln -s notes.md link")).exit_code == 0
    await client.delete(session)
    state = session.state
    assert isinstance(state, SandlotSandboxSessionState) and state.sandlot_session_id is None
    old_sandbox = state.sandbox_id
    with tarfile.open(next(tmp_path.glob("*.tar"))) as tar:
        names = set(tar.getnames())
    assert {"./notes.md", "./sub/data.bin", "./link"} <= names

    payload = json.loads(json.dumps(client.serialize_session_state(state)))
    resumed = await client.resume(client.deserialize_session_state(payload))
    async with resumed:
        new_state = resumed.state
        assert isinstance(new_state, SandlotSandboxSessionState)
        assert new_state.sandbox_id != old_sandbox  # the old sandbox was killed
        assert (await resumed.read(Path("sub/data.bin"))).read() == bytes(range(256))
        link = await resumed.exec("readlink link && cat link")
        assert link.stdout == b"notes.md\n" + NOTES
    await client.delete(resumed)


async def test_pty_processes_stream_and_take_input(live: SandboxSession) -> None:
    # a background process: first output now, the rest and its exit on a later poll
    started = await live.pty_exec_start("echo start; read line; echo got $line", yield_time_s=0.3)
    assert started.process_id is not None and started.exit_code is None
    assert started.output == b"start\n"
    fed = await live.pty_write_stdin(session_id=started.process_id, chars="x\n", yield_time_s=0.5)
    ended = fed
    if fed.exit_code is None:  # a slow machine: poll until it ends
        ended = await live.pty_write_stdin(session_id=started.process_id, chars="")
    assert b"got x" in fed.output + (ended.output if ended is not fed else b"")
    assert ended.exit_code == 0 and ended.process_id is None

    # a terminal: a real tty, keystrokes, exit status
    term = await live.pty_exec_start("bash --norc -i", tty=True, yield_time_s=0.3)
    assert term.process_id is not None
    out = await live.pty_write_stdin(
        session_id=term.process_id, chars="tty; echo $((6*7))\r", yield_time_s=1
    )
    assert b"/dev/pts/" in out.output and b"42" in out.output
    last = await live.pty_write_stdin(session_id=term.process_id, chars="exit 3\r", yield_time_s=2)
    if last.exit_code is None:
        last = await live.pty_write_stdin(session_id=term.process_id, chars="")
    assert last.exit_code == 3

    # a time limit kills it; commands run meanwhile (it holds no session run lock)
    limited = await live.pty_exec_start("sleep 30", timeout=1, yield_time_s=0.25)
    assert limited.process_id is not None
    assert (await live.exec("echo meanwhile")).stdout == b"meanwhile\n"
    killed = await live.pty_write_stdin(session_id=limited.process_id, chars="")
    assert killed.exit_code is not None and killed.exit_code != 0

    # a non-tty process reads end of input on Ctrl-D
    cat = await live.pty_exec_start("cat", yield_time_s=0.25)
    assert cat.process_id is not None
    await live.pty_write_stdin(session_id=cat.process_id, chars="echoed\n", yield_time_s=0.25)
    closed = await live.pty_write_stdin(session_id=cat.process_id, chars="\x04", yield_time_s=2)
    assert closed.exit_code == 0


async def test_exec_results_and_bad_input_in_the_sdk_forms(live: SandboxSession) -> None:
    missing = await live.exec("no-such-program")
    assert missing.exit_code == 127
    failed = await live.exec("echo out; echo err >&2; exit 5")
    assert (failed.stdout, failed.stderr, failed.exit_code) == (b"out\n", b"err\n", 5)
    binary = await live.exec("printf '\\377\\000\\001'")
    assert binary.stdout == b"\xff\x00\x01"
    # a bounded read (view_image's) of a larger file: its first bytes
    assert (await live.exec("seq 1 1000 > big.txt")).exit_code == 0
    assert await live.read_bounded(Path("big.txt"), max_bytes=6) == b"1\n2\n3\n"
    assert await live.read_bounded(Path("big.txt"), max_bytes=10**6) == (
        "".join(f"{i}\n" for i in range(1, 1001)).encode()
    )
    with pytest.raises(WorkspaceReadNotFoundError):
        await live.read_bounded(Path("nope.txt"), max_bytes=10)
    with pytest.raises(WorkspaceReadNotFoundError):
        await live.read(Path("nope.txt"))
    with pytest.raises(InvalidManifestPathError):
        await live.read(Path("../etc/passwd"))
    # a symlink planted in the workspace that leads out of it is refused, not followed
    assert (await live.exec("ln -sf /etc/passwd escape")).exit_code == 0
    with pytest.raises(InvalidManifestPathError):
        await live.read(Path("escape"))
    with pytest.raises(PtySessionNotFoundError):
        await live.pty_write_stdin(session_id=1, chars="x")
    inner = live._inner
    assert isinstance(inner, SandlotSandboxSession)
    # a checkpoint reference of another session, and a tar that climbs out, are refused
    with pytest.raises(WorkspaceArchiveWriteError):
        await inner.hydrate_workspace(
            io.BytesIO(b'SANDLOT_SESSION_CHECKPOINT_V1\n{"session_id": "ses-000000000000"}')
        )
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        member = tarfile.TarInfo("../outside.txt")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    evil.seek(0)
    with pytest.raises(WorkspaceArchiveWriteError):
        await inner.hydrate_workspace(evil)
    foreign = SandboxSessionState(type="other", snapshot=NoopSnapshot(id="x"), manifest=Manifest())
    with pytest.raises(TypeError):
        await SandlotSandboxClient().resume(foreign)
    with pytest.raises(ValueError):
        await SandlotSandboxClient().create(
            options=SandlotSandboxClientOptions(durable=False, session_id="ses-000000000000")
        )


async def test_remote_server_runs_and_resumes(tmp_path: Path) -> None:
    """The same client against a real ``sandlot serve`` on loopback (sessions and sandboxes
    on the server, the key from sandlot.Client)."""
    from tests.remote.server import ServerProcess

    # a folder of its own under /tmp: the sandboxes' uids must reach its files
    home = Path(tempfile.mkdtemp(prefix="sloai-", dir="/tmp"))
    server = ServerProcess(home)
    key = server.keys("create", "--name", "oai")
    server.start()
    remote = sandlot.Client(url=server.url, api_key=key)
    try:
        client = SandlotSandboxClient(remote)
        model = ScriptedModel(
            [
                [_patch_call("remote.txt", "over the wire", "r1")],
                [function_call("exec_command", {"cmd": "cat remote.txt"}, call_id="r2")],
                [assistant_message("Remote done.")],
            ]
        )
        run_config = _client_run_config(client, tmp_path)
        result = await Runner.run(_agent(model), "Write remotely.", run_config=run_config)
        model.assert_complete()
        assert "over the wire" in _outputs(result)[1]
        payload = result.to_state().to_json()["sandbox"]["session_state"]
        resumed = await client.resume(client.deserialize_session_state(payload))
        async with resumed:
            assert (await resumed.read(Path("remote.txt"))).read() == b"over the wire"
        await client.delete(resumed)
        await client.delete_workspace(resumed.state)
    finally:
        await remote.aclose()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
