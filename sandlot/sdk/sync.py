"""The sync face of the SDK: thin wrappers that run the async core on a private event loop.

One daemon thread per process runs that loop. It lives as long as the process, which matters:
bwrap's ``--die-with-parent`` ties a sandbox to the thread that spawned it. Streaming callbacks
run on that thread. Interrupting a foreground call (Ctrl-C) kills the command it was waiting
for. At interpreter exit, sandboxes this process created are destroyed.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import concurrent.futures
import contextlib
import signal as signals
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from ..egress.bridge_config import BridgeConfig
from ..egress.policy import NetworkPolicy
from ..manager import GcReport
from ..models import (
    DEFAULT_COMMAND_TIMEOUT,
    Bind,
    CodeContext,
    CodeEvent,
    CommandResult,
    EntryInfo,
    Execution,
    Logs,
    NetworkMode,
    ProcessInfo,
    Resources,
    Result,
    SandboxInfo,
)
from ..remote.client import close_sessions, settle
from .code import (
    DEFAULT_CODE_TIMEOUT,
    DEFAULT_INSTALL_TIMEOUT,
    DEFAULT_INTERRUPT_GRACE,
    MAX_CELL_OUTPUT_BYTES,
    AsyncExecutionHandle,
    ContextRef,
    ResultCallback,
    TextCallback,
)
from .commands import (
    MAX_OUTPUT_BYTES,
    AsyncCommandHandle,
    AsyncCommands,
    DataCallback,
    OutputCallback,
)
from .files import MAX_FILE_BYTES, AsyncFiles
from .mirror import adds, mirror
from .pty import AsyncPty, AsyncPtyHandle
from .sandbox import AsyncSandbox, VolumesArg, build_spec

if TYPE_CHECKING:
    from types import EllipsisType

    from ..remote import Client
    from ..secrets.refs import SecretRef

T = TypeVar("T")
_Async = Callable[..., Coroutine[Any, Any, T]]  # an overloaded coroutine method, called as such


class _Portal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="sandlot", daemon=True)
                thread.start()
                self._loop = loop
                atexit.register(self._shutdown)
            return self._loop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result()
        except BaseException:
            if not future.done():  # interrupted: cancel the work (a foreground command dies)
                future.cancel()
                try:
                    future.result(timeout=5)
                except (concurrent.futures.CancelledError, Exception):
                    pass
                # In remote mode the kill is a call of its own: see that it is made.
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(settle(), self.loop()).result(timeout=6)
            raise

    def _shutdown(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return

        async def close() -> None:
            from ..manager import Manager

            manager = Manager._per_loop.get(loop)
            if manager is not None:
                await manager.close()
            await settle()
            await close_sessions()

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=30)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)


_portal = _Portal()


def _iterate(events: AsyncIterator[T]) -> Generator[T, None, None]:
    """An async iterator walked step by step on the portal's loop; closing the generator
    (a ``break`` drops it) closes the async one there and waits for that."""
    nxt = cast("Callable[[], Coroutine[Any, Any, T]]", events.__anext__)
    try:
        while True:
            try:
                item = _portal.call(nxt())
            except StopAsyncIteration:
                return
            yield item
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            _portal.call(close())


@mirror(AsyncCommandHandle)
class CommandHandle:
    """A running command (see :class:`~sandlot.sdk.commands.AsyncCommandHandle`)."""

    pid: int | None

    def __init__(self, inner: AsyncCommandHandle) -> None:
        self._inner = inner
        self.pid = inner.pid

    @property
    def stdout(self) -> str:
        """What the command has printed so far (up to the result cap)."""
        return self._inner.stdout

    @property
    def stderr(self) -> str:
        """What the command has written to stderr so far (up to the result cap)."""
        return self._inner.stderr

    @property
    def offset(self) -> int:
        """Where its output log stands for this handle: the offset of the next byte it will
        receive. Give it to :meth:`AsyncCommands.connect` to carry on from there."""
        return self._inner.offset

    @property
    def gap(self) -> int:
        """Bytes the agent's log had already dropped when this handle began its replay (0:
        nothing was lost; always 0 for a command this handle started)."""
        return self._inner.gap

    def done(self) -> bool:
        """Whether the command has ended (its result is then ready)."""
        return self._inner.done()

    def wait(self) -> CommandResult:
        """Wait for the command to end. Raises CommandTimeoutError if it ran out of time."""
        return _portal.call(self._inner.wait())

    def kill(self, signal: int = signals.SIGKILL) -> bool:
        """Send a signal to the command's whole process group. False if it already ended."""
        return _portal.call(self._inner.kill(signal))

    def send_stdin(self, data: str | bytes) -> None:
        """Write to the command's stdin (a string as UTF-8). Raises
        :class:`SandboxClosedError` if the command has ended."""
        _portal.call(self._inner.send_stdin(data))

    def close_stdin(self) -> None:
        """Close the command's stdin: it reads end-of-file."""
        _portal.call(self._inner.close_stdin())


@mirror(AsyncExecutionHandle)
class ExecutionHandle:
    """A cell running in the background (see :class:`~sandlot.sdk.code.AsyncExecutionHandle`)."""

    context: str

    def __init__(self, inner: AsyncExecutionHandle) -> None:
        self._inner = inner
        self.context = inner.context

    @property
    def logs(self) -> Logs:
        """What the cell has printed so far."""
        return self._inner.logs

    @property
    def results(self) -> builtins.list[Result]:
        """The rich results (displays and the trailing value) the cell has produced so far."""
        return self._inner.results

    def done(self) -> bool:
        """Whether the cell has ended (its :class:`Execution` is then ready)."""
        return self._inner.done()

    def wait(self) -> Execution:
        """The cell's outcome; raises :class:`CodeTimeoutError` if it ran out of time."""
        return _portal.call(self._inner.wait())

    def interrupt(self) -> bool:
        """Send KeyboardInterrupt to the cell (the context keeps its state). False if the
        cell had already ended."""
        return _portal.call(self._inner.interrupt())


@mirror(AsyncCommands)
class Commands:
    """``sb.commands``: run programs in the sandbox (see :class:`AsyncCommands`)."""

    def __init__(self, inner: AsyncCommands) -> None:
        self._inner = inner

    @overload
    def run(
        self,
        cmd: str | list[str],
        *,
        background: Literal[False] = False,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
        stdin: str | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str | list[str],
        *,
        background: Literal[True],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str | list[str],
        *,
        background: bool = False,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | EllipsisType | None = ...,
        stdin: str | bytes | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> CommandResult | CommandHandle:
        """Run a command: a string goes through the sandbox's shell (bash, else sh); a list
        runs as argv. Foreground runs return a :class:`CommandResult` (a non-zero exit is not
        an error); ``background=True`` returns a handle at once. ``timeout`` in seconds kills
        the whole process group and raises :class:`CommandTimeoutError` with the partial
        output; by default 60 s in the foreground, and in the background only the sandbox's
        lifetime (None), so a server you start keeps running."""
        run: _Async[CommandResult | AsyncCommandHandle] = self._inner.run  # either overload
        result = _portal.call(
            run(
                cmd,
                background=background,
                env=env,
                cwd=cwd,
                timeout=timeout,
                stdin=stdin,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                max_output_bytes=max_output_bytes,
            )
        )
        return CommandHandle(result) if isinstance(result, AsyncCommandHandle) else result

    def list(self) -> builtins.list[ProcessInfo]:
        """The processes the sandbox keeps output logs of: every command and terminal still
        running (also ones whose client went away), and recently ended ones with their exit
        status (at most 64, oldest forgotten first)."""
        return _portal.call(self._inner.list())

    def connect(
        self,
        pid: int,
        *,
        offset: int = 0,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> CommandHandle:
        """Reattach to a process by pid (see :meth:`list`): its output is replayed from
        ``offset`` (bytes of stdout and stderr together; 0, the start) and then streamed as
        it comes, each byte once. If the log has dropped bytes past ``offset`` (it keeps the
        newest 2 MiB by default), the handle's ``gap`` says how many. ``wait()`` gives the
        exit code also for a process that has already ended; ``send_stdin`` writes to it if
        it was started with stdin (background commands are). Dropping this handle detaches;
        ``kill()`` signals the process. Raises :class:`ProcessNotFoundError` for an unknown
        pid."""
        return CommandHandle(
            _portal.call(
                self._inner.connect(pid, offset=offset, on_stdout=on_stdout, on_stderr=on_stderr)
            )
        )


@mirror(AsyncPtyHandle)
class PtyHandle:
    """A terminal (see :class:`~sandlot.sdk.pty.AsyncPtyHandle`)."""

    pid: int | None

    def __init__(self, inner: AsyncPtyHandle) -> None:
        self._inner = inner
        self.pid = inner.pid

    @property
    def offset(self) -> int:
        """The offset of the next byte of output this handle will receive: give it to
        :meth:`AsyncPty.connect` to carry on from there."""
        return self._inner.offset

    @property
    def gap(self) -> int:
        """Bytes the terminal's log had already dropped when this handle began its replay."""
        return self._inner.gap

    def done(self) -> bool:
        """Whether the terminal's process has ended."""
        return self._inner.done()

    def send_stdin(self, data: str | bytes) -> None:
        """Type into the terminal (a string as UTF-8): carriage return is Enter, byte 3
        Ctrl-C, byte 4 Ctrl-D. Raises :class:`SandboxClosedError` once it has ended."""
        _portal.call(self._inner.send_stdin(data))

    def resize(self, cols: int, rows: int) -> None:
        """Change the terminal's size (1 to 10000 each); its programs get SIGWINCH."""
        _portal.call(self._inner.resize(cols, rows))

    def kill(self, signal: int = signals.SIGKILL) -> bool:
        """Send a signal to the terminal's process group. False if it already ended."""
        return _portal.call(self._inner.kill(signal))

    def wait(self) -> CommandResult:
        """Wait for the terminal's process to end: its exit code, and the tail of what the
        terminal showed in ``stdout``."""
        return _portal.call(self._inner.wait())


@mirror(AsyncPty)
class Pty:
    """``sb.pty``: terminals in the sandbox (see :class:`AsyncPty`). ``on_data`` runs on
    the SDK's thread."""

    def __init__(self, inner: AsyncPty) -> None:
        self._inner = inner

    def create(
        self,
        *,
        cols: int = 80,
        rows: int = 24,
        cmd: str | builtins.list[str] | None = None,
        on_data: DataCallback | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> PtyHandle:
        """Start a process on a new terminal of ``cols`` x ``rows``: ``cmd`` (a string through
        the shell, or argv), by default the sandbox's shell (bash, else sh), interactive.
        ``TERM`` is ``xterm-256color`` unless ``env`` sets it. ``timeout`` in seconds kills
        it (by default it lives as long as the sandbox). ``on_data`` gets the terminal's
        output as bytes."""
        inner = self._inner.create(
            cols=cols, rows=rows, cmd=cmd, on_data=on_data, env=env, cwd=cwd, timeout=timeout
        )
        return PtyHandle(_portal.call(inner))

    def connect(
        self, pid: int, *, offset: int = 0, on_data: DataCallback | None = None
    ) -> PtyHandle:
        """Reattach to a terminal by pid: its output is replayed from ``offset`` (0: the
        start of what its log holds) to ``on_data``, then streamed; the handle's ``gap``
        counts bytes the log had dropped. Raises :class:`ProcessNotFoundError` for an
        unknown pid."""
        return PtyHandle(_portal.call(self._inner.connect(pid, offset=offset, on_data=on_data)))


@mirror(AsyncFiles)
class Files:
    """``sb.files``: read, write, list and manage files (see :class:`AsyncFiles`)."""

    def __init__(self, inner: AsyncFiles) -> None:
        self._inner = inner

    @overload
    def read(self, path: str, format: Literal["text"] = "text", *, max_bytes: int = ...) -> str: ...

    @overload
    def read(self, path: str, format: Literal["bytes"], *, max_bytes: int = ...) -> bytes: ...

    def read(
        self,
        path: str,
        format: Literal["text", "bytes"] = "text",
        *,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> str | bytes:
        """A file's content: text (UTF-8, undecodable bytes replaced) or bytes."""
        read: _Async[str | bytes] = self._inner.read  # either overload
        return _portal.call(read(path, format, max_bytes=max_bytes))

    def write(
        self,
        path: str,
        data: str | bytes,
        *,
        mode: int | None = None,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> EntryInfo:
        """Write a whole file atomically (parents are created). Returns its new entry."""
        return _portal.call(self._inner.write(path, data, mode=mode, max_bytes=max_bytes))

    def list(self, path: str, *, depth: int = 1) -> list[EntryInfo]:
        """Entries of a folder, sorted by name; ``depth`` > 1 descends into sub-folders."""
        return _portal.call(self._inner.list(path, depth=depth))

    def stat(self, path: str) -> EntryInfo:
        """The entry at ``path`` (a file, folder or link). Raises if there is none."""
        return _portal.call(self._inner.stat(path))

    def exists(self, path: str) -> bool:
        """Whether anything exists at ``path``."""
        return _portal.call(self._inner.exists(path))

    def make_dir(self, path: str, *, parents: bool = True, exist_ok: bool = True) -> bool:
        """Create a folder. True if it was created, False if it already existed."""
        return _portal.call(self._inner.make_dir(path, parents=parents, exist_ok=exist_ok))

    def remove(self, path: str, *, recursive: bool = True) -> None:
        """Remove a file, or a folder (with its content unless ``recursive=False``)."""
        _portal.call(self._inner.remove(path, recursive=recursive))

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> EntryInfo:
        """Move ``src`` to ``dst``; an existing ``dst`` is replaced only with ``overwrite``.
        Returns the moved entry."""
        return _portal.call(self._inner.rename(src, dst, overwrite=overwrite))


@mirror(AsyncSandbox)
class Sandbox:
    """An isolated computer (sync). ``with Sandbox.create() as sb:`` kills it on exit."""

    commands: Commands
    files: Files
    pty: Pty

    def __init__(self, inner: AsyncSandbox) -> None:
        self._inner = inner
        self.commands = Commands(inner.commands)
        self.pty = Pty(inner.pty)
        self.files = Files(inner.files)

    @property
    def id(self) -> str:
        """The sandbox's id: give it to :meth:`connect` to reach it from elsewhere."""
        return self._inner.id

    @property
    def info(self) -> SandboxInfo:
        """Its record: provider, metadata, creation and expiry times."""
        return self._inner.info

    @property
    def provider(self) -> str:
        """The name of the provider that runs it (``"bwrap"``, ``"docker"``, ...)."""
        return self._inner.provider

    @property
    def isolated(self) -> bool:
        """Whether it runs isolated from the host: False with the ``process`` provider, and
        on an ssh host that runs it without bubblewrap."""
        return self._inner.isolated

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} provider={self.provider}>"

    @classmethod
    def create(
        cls,
        provider: str | None = None,
        *,
        timeout: float = 14400,
        idle_timeout: float | None = 600,
        env: dict[str, str | SecretRef | dict[str, str]] | None = None,
        metadata: dict[str, str] | None = None,
        resources: Resources | dict[str, Any] | None = None,
        workdir: str = "/workspace",
        workspace_alias: str | None = None,
        network: NetworkMode | NetworkPolicy | dict[str, Any] = "none",
        bridge: BridgeConfig | dict[str, Any] | None = None,
        binds: Sequence[Bind | dict[str, Any]] | None = None,
        volumes: VolumesArg = None,
        template: str | None = None,
        client: Client | None = None,
        **config: Any,
    ) -> Sandbox:
        """Create a sandbox (default provider: bwrap). Extra keyword arguments are the
        provider's own settings, validated by its config model. With ``client`` (or
        ``SANDLOT_URL`` set), the sandbox is created on that sandlot server.

        ``network``: ``"none"`` (default), ``{"allow": [rules]}`` (only those hosts, through
        the egress proxy; see docs/egress.md) or ``"full"``. ``bridge``: a callback bridge
        to your control plane. ``env`` values may be ``{"secret": NAME}``.

        ``timeout``: the hard lifetime, seconds (default 4 h): the sandbox ends then, used or
        not. ``idle_timeout``: it ends sooner once nothing has used it for this long (no
        command or cell running, no stream, no call; default 10 min; None: never). See
        docs/lifetimes.md. ``workspace_alias``: a second path of the workspace (the same
        files as /workspace, e.g. ``/home/user``; see SandboxSpec). ``binds``: host folders
        or files mounted in the sandbox, ``[{"host": "/home/me/proj", "path": "/project",
        "mode": "rw"}]`` (see Bind and docs/sdk.md, "Host folders in a sandbox").
        ``volumes``: named volumes to mount, ``{"data": "/data"}`` or a list of
        ``{"name", "path", "mode"}`` (see docs/volumes.md). ``template``: the template its
        root file system comes from (a name; see docs/templates.md)."""
        spec = build_spec(
            provider, timeout, env, metadata, resources, workdir, config, network, bridge,
            idle_timeout, workspace_alias, binds, volumes=volumes, template=template,
        )  # fmt: skip
        return cls(_portal.call(AsyncSandbox._create(spec, client)))

    @classmethod
    def connect(cls, sandbox_id: str, *, client: Client | None = None) -> Sandbox:
        """Attach to a running sandbox, also one created by another process."""
        return cls(_portal.call(AsyncSandbox.connect(sandbox_id, client=client)))

    @staticmethod
    def list(
        metadata: dict[str, str] | None = None, *, client: Client | None = None
    ) -> list[SandboxInfo]:
        """Running sandboxes (on this host, or the server's), optionally those whose
        metadata matches."""
        return _portal.call(AsyncSandbox.list(metadata, client=client))

    @staticmethod
    def gc(*, client: Client | None = None) -> GcReport:
        """Remove what crashed processes left behind (also runs when a manager starts).
        A server collects its own: in remote mode this does nothing."""
        return _portal.call(AsyncSandbox.gc(client=client))

    def kill(self) -> bool:
        """Destroy the sandbox and everything running in it. False if it was already gone."""
        return _portal.call(self._inner.kill())

    def set_timeout(self, seconds: float) -> datetime:
        """Destroy the sandbox ``seconds`` from now instead of at its old deadline."""
        return _portal.call(self._inner.set_timeout(seconds))

    def set_idle_timeout(self, seconds: float | None) -> None:
        """Stop the sandbox once nothing has used it for ``seconds`` (None: never), counted
        from now (this call is a use). Its hard lifetime (:meth:`set_timeout`) stays."""
        _portal.call(self._inner.set_idle_timeout(seconds))

    def pause(self) -> None:
        """Freeze everything in the sandbox where it stands (bwrap: the cgroup freezer;
        docker: pause; process: SIGSTOP) until :meth:`resume`: it costs no CPU meanwhile,
        and a running command carries on afterwards with its output complete. The agent
        does not answer while paused. Its lifetime keeps running."""
        _portal.call(self._inner.pause())

    def resume(self) -> None:
        """Let a sandbox frozen by :meth:`pause` run on."""
        _portal.call(self._inner.resume())

    def is_paused(self) -> bool:
        """Whether the sandbox is frozen by :meth:`pause`."""
        return _portal.call(self._inner.is_paused())

    def expose(self, port: int) -> str:
        """A URL that reaches ``port`` inside the sandbox (HTTP, WebSocket, any TCP), though
        the sandbox's own network stays off: the connection rides the agent's channel.

        Embedded, ``http://127.0.0.1:N`` with N from a pool (``SANDLOT_PORT_RANGE``,
        default 30000-30999), released when the sandbox is killed. Through a server, a path
        under ``/v1/sandboxes/{id}/ports/{port}/`` that needs the tenant's key."""
        return _portal.call(self._inner.expose(port))

    def set_network(
        self,
        network: NetworkMode | NetworkPolicy | dict[str, Any] | None = None,
        *,
        allow: builtins.list[str] | None = None,
        resolve: dict[str, str | builtins.list[str]] | None = None,
    ) -> None:
        """Change what the sandbox may reach, while it runs: ``set_network(allow=[...])``,
        or ``set_network("none")``. The next connection obeys it; code inside the sandbox
        cannot change it. Commands started afterwards get the proxy variables."""
        return _portal.call(self._inner.set_network(network, allow=allow, resolve=resolve))

    def network_events(self, after: int = 0) -> builtins.list[dict[str, Any]]:
        """Every connection the sandbox made through its proxy or bridge, allowed or
        refused, oldest first: ``{"id", "created_at", "kind", "host", "port", "verdict",
        ...}``. ``after``: the last ``id`` already seen."""
        return _portal.call(self._inner.network_events(after))

    def is_running(self) -> bool:
        """Whether the sandbox is still alive and this connection to it open."""
        return _portal.call(self._inner.is_running())

    @overload
    def run_code(
        self,
        code: str,
        *,
        context: ContextRef = None,
        timeout: float | None = DEFAULT_CODE_TIMEOUT,
        inactivity_timeout: float | None = None,
        background: Literal[False] = False,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
        on_result: ResultCallback | None = None,
        on_progress: TextCallback | None = None,
        max_output_bytes: int = MAX_CELL_OUTPUT_BYTES,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
    ) -> Execution: ...

    @overload
    def run_code(
        self,
        code: str,
        *,
        context: ContextRef = None,
        timeout: float | None = DEFAULT_CODE_TIMEOUT,
        inactivity_timeout: float | None = None,
        background: Literal[True],
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
        on_result: ResultCallback | None = None,
        on_progress: TextCallback | None = None,
        max_output_bytes: int = MAX_CELL_OUTPUT_BYTES,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
    ) -> ExecutionHandle: ...

    @adds("Ctrl-C while waiting interrupts the cell and keeps the context's state.")
    def run_code(
        self,
        code: str,
        *,
        context: ContextRef = None,
        timeout: float | None = DEFAULT_CODE_TIMEOUT,
        inactivity_timeout: float | None = None,
        background: bool = False,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
        on_result: ResultCallback | None = None,
        on_progress: TextCallback | None = None,
        max_output_bytes: int = MAX_CELL_OUTPUT_BYTES,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
    ) -> Execution | ExecutionHandle:
        """Run Python like a notebook cell in a code context (the default one unless
        ``context`` names another): the namespace persists between calls, and the value of
        a trailing expression is the main result.

        ``timeout`` bounds the whole cell and ``inactivity_timeout`` the time without a sign of
        life (output, ``progress()``, the worker's heartbeat); either interrupts it
        (KeyboardInterrupt; the state is kept) and raises :class:`CodeTimeoutError` carrying
        the partial :class:`Execution`.
        Code that ignores the interrupt is killed after ``interrupt_grace`` seconds and the
        context restarts empty. An exception raised by the cell is ``Execution.error``, not
        raised here. ``background=True`` returns a handle at once.

        ``context`` is a :class:`CodeContext`, its id, or its name: a name no context has
        yet makes one (not persistent) on this first run.

        Ctrl-C while waiting interrupts the cell and keeps the context's state."""
        run: _Async[Execution | AsyncExecutionHandle] = self._inner.run_code  # either overload
        result = _portal.call(
            run(
                code,
                context=context,
                timeout=timeout,
                inactivity_timeout=inactivity_timeout,
                background=background,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                on_result=on_result,
                on_progress=on_progress,
                max_output_bytes=max_output_bytes,
                interrupt_grace=interrupt_grace,
            )
        )
        return ExecutionHandle(result) if isinstance(result, AsyncExecutionHandle) else result

    @adds("A plain ``break`` interrupts at once: closing the iterator waits for the cell's end.")
    def run_code_stream(
        self,
        code: str,
        *,
        context: ContextRef = None,
        timeout: float | None = DEFAULT_CODE_TIMEOUT,
        inactivity_timeout: float | None = None,
        max_output_bytes: int = MAX_CELL_OUTPUT_BYTES,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
    ) -> Generator[CodeEvent, None, None]:
        """:meth:`run_code` as events: ``async for event in sb.run_code_stream(code)`` (a plain
        ``for`` on the sync :class:`Sandbox`) yields
        :class:`OutputEvent` (stdout/stderr chunks), :class:`ResultEvent` and
        :class:`ProgressEvent` as they happen, then one :class:`EndEvent` with the
        :class:`Execution`, or the error (a timeout's error and its partial execution).

        Leaving the loop early interrupts the cell (the context keeps its state); use
        ``contextlib.aclosing(...)`` to have that done before the next line runs.

        A plain ``break`` interrupts at once: closing the iterator waits for the cell's end."""
        events = self._inner.run_code_stream(
            code,
            context=context,
            timeout=timeout,
            inactivity_timeout=inactivity_timeout,
            max_output_bytes=max_output_bytes,
            interrupt_grace=interrupt_grace,
        )
        return _iterate(events)

    def get_code_context(self, context: ContextRef = None) -> CodeContext:
        """A context by its id or name (:class:`CodeContextNotFoundError` if there is none)."""
        return _portal.call(self._inner.get_code_context(context))

    def create_code_context(
        self,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
        persist: bool = False,
        setup: str | None = None,
        cwd_on_path: bool = True,
    ) -> CodeContext:
        """A new, independent Python namespace with its own process and working folder.

        ``persist=True`` saves the namespace into the workspace after every cell
        (``.sandlot/contexts/<name>.pickle``) and starts from what is saved there, so a new
        sandbox over the same workspace picks up where the last one stopped. A ``name``
        (1-64 of ``A-Za-z0-9_.-``, not ``default``, not starting with ``ctx-``) is unique in
        the sandbox and addresses the context wherever its id does.

        ``setup`` is Python source (at most 256 KiB) the context runs in every fresh worker
        before its first cell: now, after a restart, after a crash, after a restore; its output
        is discarded, and if it raises, the next cell reports a ``SetupError`` instead of
        running. ``cwd_on_path=False`` leaves the working folder off ``sys.path``."""
        return _portal.call(
            self._inner.create_code_context(
                cwd=cwd, env=env, name=name, persist=persist, setup=setup, cwd_on_path=cwd_on_path
            )
        )

    def list_code_contexts(self) -> builtins.list[CodeContext]:
        """The sandbox's code contexts; the default one appears once it is first used."""
        return _portal.call(self._inner.list_code_contexts())

    def restart_code_context(
        self, context: ContextRef = None, *, forget_state: bool = False
    ) -> CodeContext:
        """Start the context over in a new process. The namespace is empty, except that a
        persistent context reloads its saved state, unless ``forget_state=True`` deletes
        that first (a full reset)."""
        return _portal.call(self._inner.restart_code_context(context, forget_state=forget_state))

    def remove_code_context(self, context: ContextRef) -> None:
        """Stop the context's process and forget it."""
        _portal.call(self._inner.remove_code_context(context))

    def interrupt_code(self, context: ContextRef = None) -> bool:
        """Interrupt the cell running in a context. False if none was running."""
        return _portal.call(self._inner.interrupt_code(context))

    def install(
        self,
        packages: str | builtins.list[str],
        *,
        upgrade: bool = False,
        index_url: str | None = None,
        timeout: float | None = DEFAULT_INSTALL_TIMEOUT,
        on_stdout: TextCallback | None = None,
        on_stderr: TextCallback | None = None,
    ) -> CommandResult:
        """``pip install --user`` with the sandbox's Python, output streamed; running
        contexts can import the packages at once. Raises :class:`InstallError` saying why
        (no network, no such package, no pip)."""
        return _portal.call(
            self._inner.install(
                packages,
                upgrade=upgrade,
                index_url=index_url,
                timeout=timeout,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
            )
        )

    def close(self) -> None:
        """Drop this connection; the sandbox keeps running until killed or timed out."""
        _portal.call(self._inner.close())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
