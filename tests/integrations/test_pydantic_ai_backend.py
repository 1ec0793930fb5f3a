"""pydantic-ai's own workspace conformance suite (``WorkspaceBackendSuite``, unmodified) over
sandlot sandboxes, with every optional fixture (fresh backend, reattach, destroy); then an
``Agent`` with pydantic-ai's offline ``FunctionModel`` working in the sandbox through the
``SandlotWorkspace`` capability, embedded and against a real ``sandlot serve``."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.workspaces import (
    WorkspaceBackend,
    WorkspaceOutputLimitError,
    WorkspaceRef,
    WorkspaceUnavailableError,
)
from pydantic_ai.workspaces.conformance import WorkspaceBackendSuite

import sandlot
from sandlot.errors import FileTooLargeError, SandboxNotFoundError
from sandlot.integrations.pydantic_ai import (
    SandlotWorkspace,
    SandlotWorkspaceBackend,
    SandlotWorkspaceOptions,
)
from sandlot.sdk.sync import _portal
from tests.remote.server import ServerProcess

OPTIONS = SandlotWorkspaceOptions(idle_timeout=600, metadata={"test": "pydantic-ai"})


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # the suite's anyio mark; trio is not a sandlot event loop


def _kill(backends: list[SandlotWorkspaceBackend], client: sandlot.Client | None = None) -> None:
    """Kill what the rules left running, through the sync SDK (its own loop)."""
    for backend in backends:
        if backend.ref is not None:
            try:
                sandlot.Sandbox.connect(backend.ref.id, client=client).kill()
            except SandboxNotFoundError:
                pass
    if client is not None:
        _portal.call(client.aclose())  # the sync SDK loop's connections


@pytest.fixture(scope="module")
def shared() -> Iterator[SandlotWorkspaceBackend]:
    """One backend for the module: its first operation creates the module's sandbox."""
    backend = SandlotWorkspaceBackend(OPTIONS)
    yield backend
    _kill([backend])


# The project runs async tests with pytest-asyncio (auto mode), and the anyio plugin would run
# async fixtures on a loop of its own: so the fixtures are sync (building a backend does no
# I/O) and the module's tests share one module-wide loop, where the shared backend's
# connection lives.
@pytest.mark.asyncio(loop_scope="module")
class TestSandlotWorkspaceConformance(WorkspaceBackendSuite):
    """Embedded: sandboxes on this host."""

    @pytest.fixture(scope="class")
    def client(self) -> sandlot.Client | None:
        return None

    @pytest.fixture(scope="class")
    def shared_backend(self, client: sandlot.Client | None) -> Iterator[SandlotWorkspaceBackend]:
        backend = SandlotWorkspaceBackend(OPTIONS, client=client)
        yield backend
        _kill([backend], client)

    @pytest.fixture
    def backend(self, shared_backend: SandlotWorkspaceBackend) -> WorkspaceBackend:
        return shared_backend

    @pytest.fixture
    def made(self, client: sandlot.Client | None) -> Iterator[list[SandlotWorkspaceBackend]]:
        backends: list[SandlotWorkspaceBackend] = []
        yield backends
        _kill(backends, client)

    @pytest.fixture
    def fresh_backend(
        self, made: list[SandlotWorkspaceBackend], client: sandlot.Client | None
    ) -> Callable[[], WorkspaceBackend]:
        def build() -> WorkspaceBackend:
            backend = SandlotWorkspaceBackend(OPTIONS, client=client)
            made.append(backend)
            return backend

        return build

    @pytest.fixture
    def attach_backend(
        self, client: sandlot.Client | None
    ) -> Callable[[WorkspaceRef], WorkspaceBackend]:
        # Rebuilt from the ref, as durable execution does for every call; never killed here.
        return lambda ref: SandlotWorkspaceBackend(OPTIONS, ref=ref, client=client)

    @pytest.fixture
    def destroy_environment(self) -> Callable[[WorkspaceBackend], Awaitable[None]]:
        async def destroy(backend: WorkspaceBackend) -> None:
            assert isinstance(backend, SandlotWorkspaceBackend)
            await backend.destroy()

        return destroy


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # A short state folder of its own: sandbox sockets live below it (108-byte paths).
    home = Path(tempfile.mkdtemp(prefix="slpa-", dir="/tmp"))
    process = ServerProcess(home).start()
    try:
        yield process
    finally:
        process.stop()
        shutil.rmtree(home, ignore_errors=True)


class TestSandlotWorkspaceConformanceRemote(TestSandlotWorkspaceConformance):
    """The same rules through a real ``sandlot serve`` on loopback."""

    @pytest.fixture(scope="class")
    def client(self, server: ServerProcess) -> Iterator[sandlot.Client | None]:
        client = sandlot.Client(url=server.url)
        yield client
        # Its connections live on the module's loop, idle between tests: close them there.
        for loop, session in list(client._sessions.items()):
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(session.close())


# -- an Agent working in the sandbox ---------------------------------------------------------


def _scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The model: run a command that writes a file, read the file, answer with what it read."""
    returns = [
        part for message in messages for part in message.parts if isinstance(part, ToolReturnPart)
    ]
    if not returns:
        return ModelResponse(
            parts=[ToolCallPart("shell", {"command": "echo hello > note.txt && pwd"})]
        )
    if len(returns) == 1:
        return ModelResponse(parts=[ToolCallPart("read_file", {"path": "note.txt"})])
    return ModelResponse(parts=[TextPart(json.dumps([r.content for r in returns]))])


def _agent(capability: SandlotWorkspace[None]) -> Agent[None, str]:
    agent = Agent(FunctionModel(_scripted), capabilities=[capability])

    @agent.tool
    async def shell(ctx: RunContext[None], command: str) -> str:
        result = await ctx.workspace.run(command, shell=True)
        return f"exit {result.exit_code}: {result.stdout.strip()}"

    @agent.tool
    async def read_file(ctx: RunContext[None], path: str) -> str:
        return await ctx.workspace.read_text(path)

    return agent


async def _run_and_resume(capability: SandlotWorkspace[None]) -> None:
    agent = _agent(capability)
    result = await agent.run("write a note and read it back")
    assert json.loads(result.output) == ["exit 0: /workspace", "hello\n"]
    ref = result.workspace.ref
    assert isinstance(ref, WorkspaceRef) and ref.provider == "sandlot"
    try:
        # A run's end leaves the sandbox alive; the next run continues in it by its ref.
        again = await agent.run("again", workspace=ref)
        assert again.workspace.ref == ref
        sandbox = await sandlot.AsyncSandbox.connect(ref.id, client=capability.client)
        assert await sandbox.files.read("/workspace/note.txt") == "hello\n"
    finally:
        await SandlotWorkspaceBackend(ref=ref, client=capability.client).destroy()


async def test_an_agent_runs_a_command_and_reads_a_file_embedded() -> None:
    await _run_and_resume(SandlotWorkspace(OPTIONS))


async def test_an_agent_runs_a_command_and_reads_a_file_remote(server: ServerProcess) -> None:
    client = sandlot.Client(url=server.url)
    try:
        await _run_and_resume(SandlotWorkspace(OPTIONS, client=client))
    finally:
        await client.aclose()


# -- what the suite does not check -----------------------------------------------------------


def test_building_does_no_io_and_checks_its_arguments() -> None:
    backend = SandlotWorkspaceBackend(provider="bwrap", idle_timeout=60, env={"A": "1"})
    assert backend.ref is None and backend.sandbox is None
    assert backend.options.idle_timeout == 60
    with pytest.raises(ValueError, match="not a sandlot workspace ref"):
        SandlotWorkspaceBackend(ref=WorkspaceRef(provider="e2b", id="x"))
    with pytest.raises(ValidationError):
        SandlotWorkspaceBackend(timeout_seconds=5)  # a misspelt option
    with pytest.raises(TypeError):
        SandlotWorkspaceBackend(OPTIONS, provider="bwrap")
    capability = SandlotWorkspace[None](OPTIONS)
    assert capability.get_workspace(None, ref=WorkspaceRef(provider="local", id="/")) is None  # type: ignore[arg-type]


@pytest.mark.asyncio(loop_scope="module")
async def test_output_over_the_cap_is_an_error_with_its_beginning(
    shared: SandlotWorkspaceBackend,
) -> None:
    await shared.working_dir()
    small = SandlotWorkspaceBackend(
        OPTIONS.model_copy(update={"max_output_bytes": 1000}), ref=shared.ref
    )
    with pytest.raises(WorkspaceOutputLimitError) as caught:
        await small.run(["sh", "-c", "echo start; yes"])  # endless: stopped, not waited for
    assert caught.value.limit == 1000 and caught.value.stdout.startswith("start\ny\n")
    assert (await small.run(["sh", "-c", "echo fits"])).stdout == "fits\n"
    await small.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_ref_to_a_sandbox_of_other_metadata_is_refused(
    shared: SandlotWorkspaceBackend,
) -> None:
    await shared.working_dir()
    assert shared.ref is not None
    other = SandlotWorkspaceBackend(metadata={"test": "someone-else"}, ref=shared.ref)
    with pytest.raises(WorkspaceUnavailableError, match="metadata"):
        await other.working_dir()


@pytest.mark.asyncio(loop_scope="module")
async def test_files_over_the_cap_are_refused(shared: SandlotWorkspaceBackend) -> None:
    await shared.working_dir()
    small = SandlotWorkspaceBackend(
        OPTIONS.model_copy(update={"max_file_bytes": 10}), ref=shared.ref
    )
    path = f"{await small.working_dir()}/big.bin"
    with pytest.raises(FileTooLargeError):
        await small.write_bytes(path, b"x" * 11)
    await shared.write_bytes(path, b"x" * 11)
    with pytest.raises(FileTooLargeError):
        await small.read_bytes(path)
    await shared.remove(path)
    await small.aclose()
