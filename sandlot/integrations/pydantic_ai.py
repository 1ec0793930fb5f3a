"""sandlot as a pydantic-ai workspace (``pydantic_ai.workspaces``): a thin front over
:class:`sandlot.AsyncSandbox`.

:class:`SandlotWorkspaceBackend` implements ``WorkspaceBackend``, ``SupportsCommands``,
``SupportsFilesystem`` and ``SupportsRealpath``; :class:`SandlotWorkspace` is the capability
that gives an agent's runs one. The contract it follows (pydantic_ai/workspaces/protocol.py):
built without I/O, it creates a sandbox on its first operation or attaches to the one its
:class:`WorkspaceRef` names (``provider="sandlot"``, ``id`` = the sandbox id), and never
kills it at the end of a run: :meth:`SandlotWorkspaceBackend.destroy` does, or the sandbox's
own ``timeout``/``idle_timeout``.

The ref is the sandbox id, not a durable session id: a session allows one foreground run at a
time (a second is ``SessionBusyError``), which pydantic-ai's parallel tool calls would hit,
and re-attaching a session restores its files into a *new* sandbox, where the contract asks
for the same environment (its detached processes too) or ``WorkspaceUnavailableError``.
"""

from __future__ import annotations

import errno
import posixpath
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.tools import AgentDepsT, RunContext
from pydantic_ai.workspaces import (
    CommandResult,
    FileEntry,
    SupportsCommands,
    SupportsFilesystem,
    SupportsRealpath,
    WorkspaceBackend,
    WorkspaceCommand,
    WorkspaceOutputLimitError,
    WorkspaceRef,
    WorkspaceTimeoutError,
    WorkspaceUnavailableError,
)

from ..errors import (
    CommandTimeoutError,
    InvalidArgumentError,
    SandboxClosedError,
    SandboxNotFoundError,
)
from ..models import EntryInfo
from ..sdk.sandbox import AsyncSandbox

if TYPE_CHECKING:
    from ..remote import Client

__all__ = ["PROVIDER", "SandlotWorkspace", "SandlotWorkspaceBackend", "SandlotWorkspaceOptions"]

PROVIDER = "sandlot"
"""``WorkspaceRef.provider`` of a sandlot sandbox; its ``id`` is the sandbox id."""

MAX_SYMLINKS = 40  # links one realpath follows before giving up, as Linux does (MAXSYMLINKS)
PREVIEW_BYTES = 64 * 1024  # of each stream, kept in a WorkspaceOutputLimitError


class SandlotWorkspaceOptions(BaseModel):
    """How the backend creates its sandbox (``AsyncSandbox.create``'s arguments), and the
    caps it puts on what comes back (pydantic-ai sets none of its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str | None = None
    """sandlot provider: ``"bwrap"`` (default), ``"docker"``, ``"ssh"``, ``"process"``..."""
    timeout: float = 14400
    """Hard lifetime of the sandbox in seconds: it ends then, used or not."""
    idle_timeout: float | None = 600
    """It ends sooner once unused this long (None: never). What frees a sandbox nobody destroys."""
    env: dict[str, str | dict[str, str]] = Field(default_factory=dict)
    """Variables of every command (``{"secret": NAME}`` values are masked in output)."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Labels of the sandbox (``sandlot list --metadata``); a ref to a sandbox without them
    is refused, so a ref from message history cannot reach another application's sandbox."""
    resources: dict[str, Any] | None = None
    """``{"memory_mb", "pids", "cpus", "tmp_mb"}``."""
    workdir: str = "/workspace"
    """Where commands start and relative paths resolve."""
    network: str | dict[str, Any] = "none"
    """``"none"``, ``{"allow": [rules]}`` or ``"full"`` (docs/egress.md)."""
    provider_settings: dict[str, Any] = Field(default_factory=dict)
    """The provider's own settings (e.g. ``{"image": ...}`` for docker)."""
    max_output_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    """Stdout plus stderr one command may print; over it the command is killed and
    ``WorkspaceOutputLimitError`` raised (a truncated success is never returned)."""
    max_file_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest file read or written; over it ``FileTooLargeError`` (an ``OSError``)."""


class _OutputOverflow(Exception):
    """Raised from an output callback to stop a command that printed too much."""


class _Output:
    """Counts a command's output and keeps the beginning of each stream for the limit error
    (the result itself carries the complete output when under the limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.previews: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def _take(self, name: str, chunk: str) -> None:
        self.total += len(chunk)
        kept = self.previews[name]
        if sum(map(len, kept)) < PREVIEW_BYTES:
            kept.append(chunk)
        if self.total > self.limit:
            raise _OutputOverflow

    def stdout(self, chunk: str) -> None:
        self._take("stdout", chunk)

    def stderr(self, chunk: str) -> None:
        self._take("stderr", chunk)

    def preview(self, name: str) -> str:
        return "".join(self.previews[name])[:PREVIEW_BYTES]


def _absolute(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise ValueError(f"path must be an absolute POSIX path, got {path!r}")
    return path


def _argv(command: WorkspaceCommand, shell: bool) -> str | list[str]:
    """sandlot's form of a command: a string goes through the shell, a list is argv."""
    if isinstance(command, str):
        if not shell:
            raise TypeError("a string command requires shell=True; pass an argv sequence otherwise")
        return command
    if shell:
        raise TypeError("an argv sequence cannot be combined with shell=True; pass one string")
    argv = list(command)
    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise ValueError("command must be a non-empty sequence of strings")
    return argv


class SandlotWorkspaceBackend(
    WorkspaceBackend, SupportsCommands, SupportsFilesystem, SupportsRealpath
):
    """A pydantic-ai workspace backend in a sandlot sandbox.

    ``SandlotWorkspaceBackend()`` creates a sandbox on first use (``ref`` then names it);
    ``SandlotWorkspaceBackend(ref=ref)`` attaches to that sandbox and raises
    ``WorkspaceUnavailableError`` if it is gone. Options come as ``options=`` or keyword
    arguments (``provider="docker", idle_timeout=3600``, ...); ``client`` reaches a sandlot
    server (else ``SANDLOT_URL``, else this host). Nothing ends the sandbox but
    :meth:`destroy` and its own lifetimes.
    """

    def __init__(
        self,
        options: SandlotWorkspaceOptions | None = None,
        *,
        ref: WorkspaceRef | None = None,
        client: Client | None = None,
        **option_fields: Any,
    ) -> None:
        if options is not None and option_fields:
            raise TypeError("pass options= or keyword options, not both")
        self.options = options or SandlotWorkspaceOptions(**option_fields)
        if ref is not None and ref.provider != PROVIDER:
            raise ValueError(f"not a sandlot workspace ref: {ref!r}")
        self._ref = ref
        self._client = client
        self._sandbox: AsyncSandbox | None = None
        self._working_dir: str | None = None
        self._root: bool | None = None  # whether commands run as root (asked when needed)
        self._lock = anyio.Lock()  # one create (or connect) among concurrent first uses

    # -- the environment ---------------------------------------------------------------------

    @property
    def ref(self) -> WorkspaceRef | None:
        """``WorkspaceRef(provider="sandlot", id=<sandbox id>)``; None until one is created."""
        return self._ref

    @property
    def sandbox(self) -> AsyncSandbox | None:
        """The sandlot sandbox, once the first operation reached it (for what pydantic-ai
        has no word for: ``run_code``, ``expose``, terminals)."""
        return self._sandbox

    async def _reach(self) -> AsyncSandbox:
        if self._sandbox is not None:
            return self._sandbox
        async with self._lock:
            sandbox = self._sandbox
            if sandbox is None:
                # Shielded: a caller cancelled mid-create must still leave the ref of what it made.
                with anyio.CancelScope(shield=True):
                    sandbox = await self._open()
                    self._sandbox = sandbox
        assert sandbox is not None  # a shield nobody cancels swallows nothing
        return sandbox

    async def _open(self) -> AsyncSandbox:
        if self._ref is not None:
            try:
                sandbox = await AsyncSandbox.connect(self._ref.id, client=self._client)
            except SandboxNotFoundError as exc:
                raise WorkspaceUnavailableError(f"sandlot sandbox {self._ref.id} is gone") from exc
            labels = sandbox.info.metadata
            if any(labels.get(key) != value for key, value in self.options.metadata.items()):
                # A ref (from message history, say) naming a sandbox these options did not make.
                await sandbox.close()
                raise WorkspaceUnavailableError(
                    f"sandlot sandbox {self._ref.id} does not carry this workspace's metadata"
                )
            return sandbox
        o = self.options
        sandbox = await AsyncSandbox.create(
            o.provider,
            timeout=o.timeout,
            idle_timeout=o.idle_timeout,
            env=dict(o.env),
            metadata=dict(o.metadata),
            resources=o.resources,
            workdir=o.workdir,
            network=o.network,  # type: ignore[arg-type]  # validated by sandlot's spec
            client=self._client,
            **o.provider_settings,
        )
        self._ref = WorkspaceRef(provider=PROVIDER, id=sandbox.id)
        return sandbox

    async def working_dir(self) -> str:
        """The options' ``workdir`` with its symlinks resolved (once)."""
        await self._reach()
        if self._working_dir is None:
            self._working_dir = await self.realpath(posixpath.normpath(self.options.workdir))
        return self._working_dir

    async def destroy(self) -> None:
        """Kill the sandbox (never done for you at the end of a run). Nothing to do if none
        was made yet or it is already gone."""
        if self._sandbox is None and self._ref is None:
            return
        try:
            sandbox = await self._reach()
        except WorkspaceUnavailableError:
            return
        await sandbox.kill()

    async def aclose(self) -> None:
        """Drop this process's connection; the sandbox keeps running."""
        if self._sandbox is not None:
            await self._sandbox.close()

    async def _gone(self, sandbox: AsyncSandbox) -> bool:
        try:
            return not await sandbox.is_running()
        except (SandboxNotFoundError, SandboxClosedError):
            return True

    # -- commands ----------------------------------------------------------------------------

    async def run(
        self,
        command: WorkspaceCommand,
        *,
        shell: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run a command to its end; a non-zero exit is a result, a missing program 127."""
        return await self._run(command, shell=shell, env=env, timeout=timeout, cwd=None)

    async def run_in_directory(
        self,
        command: WorkspaceCommand,
        *,
        cwd: str,
        shell: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """``run`` started in ``cwd`` (sandlot starts it there itself: no ``sh -c cd``)."""
        return await self._run(command, shell=shell, env=env, timeout=timeout, cwd=_absolute(cwd))

    async def _run(
        self,
        command: WorkspaceCommand,
        *,
        shell: bool,
        env: Mapping[str, str] | None,
        timeout: float | None,
        cwd: str | None,
    ) -> CommandResult:
        argv = _argv(command, shell)
        if timeout is not None and (
            isinstance(timeout, bool) or not timeout > 0 or timeout == float("inf")
        ):
            raise ValueError("timeout must be a positive finite number or None")
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise TypeError("env must map strings to strings")
        sandbox = await self._reach()
        start = cwd or await self.working_dir()
        output = _Output(self.options.max_output_bytes)
        try:
            result = await sandbox.commands.run(
                argv,
                env=dict(env) if env else None,
                cwd=start,
                timeout=timeout,
                on_stdout=output.stdout,
                on_stderr=output.stderr,
                max_output_bytes=self.options.max_output_bytes,
            )
        except CommandTimeoutError as exc:
            raise WorkspaceTimeoutError(str(exc), stdout=exc.stdout, stderr=exc.stderr) from exc
        except _OutputOverflow:
            raise WorkspaceOutputLimitError(
                f"the command printed over {self.options.max_output_bytes} bytes and was stopped; "
                "redirect its output to a file and read part of it",
                limit=self.options.max_output_bytes,
                stdout=output.preview("stdout"),
                stderr=output.preview("stderr"),
            ) from None
        except (SandboxNotFoundError, SandboxClosedError) as exc:
            raise WorkspaceUnavailableError(f"sandlot sandbox {sandbox.id} is gone") from exc
        except Exception:
            if await self._gone(sandbox):
                raise WorkspaceUnavailableError(f"sandlot sandbox {sandbox.id} is gone") from None
            raise
        # A command killed by a signal: the sandbox's end, or only the command's?
        if result.signal is not None and await self._gone(sandbox):
            raise WorkspaceUnavailableError(
                f"sandlot sandbox {sandbox.id} ended during the command"
            )
        return CommandResult(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr)

    # -- files -------------------------------------------------------------------------------

    async def _lstat(self, path: str) -> EntryInfo:
        sandbox = await self._reach()
        try:
            return await sandbox.files.stat(path)
        except (SandboxNotFoundError, SandboxClosedError) as exc:
            raise WorkspaceUnavailableError(f"sandlot sandbox {sandbox.id} is gone") from exc

    async def _follow(self, path: str) -> EntryInfo:
        """The entry at ``path``, through a symlink to its target."""
        entry = await self._lstat(path)
        if entry.type != "symlink":
            return entry
        return await self._lstat(await self.realpath(path))

    async def realpath(self, path: str) -> str:
        """Resolve symlinks like ``os.path.realpath(path, strict=False)``: missing parts are
        kept as written; a loop raises ``OSError(ELOOP)``."""
        parts = deque(_absolute(path).split("/"))
        resolved = "/"
        missing = 0  # components past the first one that does not exist: text only
        links = 0
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                resolved = posixpath.dirname(resolved)
                missing = max(0, missing - 1)
                continue
            candidate = posixpath.join(resolved, name)
            if missing:
                resolved, missing = candidate, missing + 1
                continue
            try:
                entry = await self._lstat(candidate)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                resolved, missing = candidate, 1
                continue
            if entry.type != "symlink" or entry.symlink_target is None:
                resolved = candidate
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = entry.symlink_target
            if target.startswith("/"):
                resolved = "/"
            parts.extendleft(reversed(target.split("/")))
        return resolved

    async def read_bytes(self, path: str) -> bytes:
        sandbox = await self._reach()
        try:
            return await sandbox.files.read(
                _absolute(path), format="bytes", max_bytes=self.options.max_file_bytes
            )
        except InvalidArgumentError as exc:  # a FIFO, a device: the agent never blocks on one
            raise OSError(errno.EINVAL, str(exc), path) from exc
        except (SandboxNotFoundError, SandboxClosedError) as exc:
            raise WorkspaceUnavailableError(f"sandlot sandbox {sandbox.id} is gone") from exc

    async def write_bytes(self, path: str, data: bytes) -> None:
        """Write a file atomically, creating its parents; an existing symlink is written
        through (sandlot's atomic rename would replace the link itself)."""
        target = _absolute(path)
        try:
            entry: EntryInfo | None = await self._lstat(target)
        except FileNotFoundError:
            entry = None
        if entry is not None and entry.type == "symlink":
            target = await self.realpath(target)
            try:
                entry = await self._lstat(target)
            except FileNotFoundError:
                entry = None
        if entry is not None and entry.type == "dir":
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if entry is not None and entry.type != "file":
            raise OSError(errno.EINVAL, "not a regular file", path)
        if entry is not None and not entry.mode & 0o222 and await self._enforces_modes():
            # The rename would replace a read-only file the command user may not write.
            raise PermissionError(errno.EACCES, "permission denied", path)
        sandbox = await self._reach()
        try:
            await sandbox.files.write(target, bytes(data), max_bytes=self.options.max_file_bytes)
        except FileExistsError as exc:  # a parent is a file
            raise NotADirectoryError(errno.ENOTDIR, "a parent is not a directory", path) from exc
        except (SandboxNotFoundError, SandboxClosedError) as exc:
            raise WorkspaceUnavailableError(f"sandlot sandbox {sandbox.id} is gone") from exc

    async def _enforces_modes(self) -> bool:
        # Root inside the sandbox writes read-only files, as it would through the shell.
        if self._root is None:
            self._root = (await self.run(["id", "-u"])).stdout.strip() == "0"
        return not self._root

    async def stat(self, path: str) -> FileEntry:
        entry = await self._follow(_absolute(path))
        is_dir = entry.type == "dir"
        name = posixpath.basename(posixpath.normpath(path))
        return FileEntry(name=name, path=path, is_dir=is_dir, size=None if is_dir else entry.size)

    async def list_dir(self, path: str) -> Sequence[FileEntry]:
        sandbox = await self._reach()
        try:
            entries = await sandbox.files.list(_absolute(path))
        except (SandboxNotFoundError, SandboxClosedError) as exc:
            raise WorkspaceUnavailableError(f"sandlot sandbox {sandbox.id} is gone") from exc
        listed = []
        for entry in entries:
            child = posixpath.join(path, entry.name)
            kind, size = entry.type, entry.size
            if kind == "symlink":
                try:
                    target = await self._follow(child)
                    kind, size = target.type, target.size
                except OSError:  # dangling or a loop: listed, as what it is
                    size = 0
            is_dir = kind == "dir"
            listed.append(
                FileEntry(name=entry.name, path=child, is_dir=is_dir, size=None if is_dir else size)
            )
        return listed

    async def make_dir(self, path: str) -> None:
        sandbox = await self._reach()
        try:
            await sandbox.files.make_dir(_absolute(path), parents=True, exist_ok=True)
        except (SandboxNotFoundError, SandboxClosedError) as exc:
            raise WorkspaceUnavailableError(f"sandlot sandbox {sandbox.id} is gone") from exc

    async def remove(self, path: str) -> None:
        """Remove a file, a symlink (itself) or a tree; never the working directory or an
        ancestor of it."""
        sandbox = await self._reach()
        entry = await self._lstat(_absolute(path))
        if entry.type != "symlink":
            real = await self.realpath(path)
            working_dir = await self.working_dir()
            if real == "/" or working_dir == real or working_dir.startswith(real.rstrip("/") + "/"):
                raise ValueError(f"refusing to remove the working directory or an ancestor: {path}")
        try:
            await sandbox.files.remove(path, recursive=True)
        except (SandboxNotFoundError, SandboxClosedError) as exc:
            raise WorkspaceUnavailableError(f"sandlot sandbox {sandbox.id} is gone") from exc

    async def exists(self, path: str) -> bool:
        """Whether a file or directory is there, through symlinks (a dangling link: False)."""
        try:
            await self._follow(_absolute(path))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return False
            raise
        return True


@dataclass
class SandlotWorkspace(AbstractCapability[AgentDepsT]):
    """Gives an agent's runs a sandlot sandbox as their workspace.

    ```python
    agent = Agent(model, capabilities=[SandlotWorkspace(SandlotWorkspaceOptions(env={"A": "1"}))])
    result = await agent.run("...")   # a new sandbox, created on the first workspace call
    await agent.run("...", workspace=result.workspace.ref)   # the same sandbox, later
    ```

    A run continues in the sandbox a ``workspace=`` ref (or the message history) names; a
    ref of another provider is left to other capabilities.
    """

    options: SandlotWorkspaceOptions = field(default_factory=SandlotWorkspaceOptions)
    _: KW_ONLY
    client: Client | None = None
    id: str | None = "sandlot_workspace"

    def get_workspace(
        self, ctx: RunContext[AgentDepsT], *, ref: WorkspaceRef | None
    ) -> WorkspaceBackend | None:
        if ref is not None and ref.provider != PROVIDER:
            return None
        return SandlotWorkspaceBackend(self.options, ref=ref, client=self.client)
