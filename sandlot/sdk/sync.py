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
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from ..egress.bridge_config import BridgeConfig
from ..egress.policy import NetworkPolicy
from ..manager import GcReport
from ..models import (
    DEFAULT_COMMAND_TIMEOUT,
    CodeContext,
    CommandResult,
    EntryInfo,
    Execution,
    Logs,
    NetworkMode,
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
from .commands import MAX_OUTPUT_BYTES, AsyncCommandHandle, OutputCallback
from .files import MAX_FILE_BYTES
from .sandbox import AsyncSandbox, build_spec

if TYPE_CHECKING:
    from ..remote import Client

T = TypeVar("T")


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


class CommandHandle:
    """A running command (see :class:`~sandlot.sdk.commands.AsyncCommandHandle`)."""

    def __init__(self, inner: AsyncCommandHandle) -> None:
        self._inner = inner
        self.pid = inner.pid

    @property
    def stdout(self) -> str:
        return self._inner.stdout

    @property
    def stderr(self) -> str:
        return self._inner.stderr

    def done(self) -> bool:
        return self._inner.done()

    def wait(self) -> CommandResult:
        return _portal.call(self._inner.wait())

    def kill(self, signal: int = signals.SIGKILL) -> bool:
        return _portal.call(self._inner.kill(signal))

    def send_stdin(self, data: str | bytes) -> None:
        _portal.call(self._inner.send_stdin(data))

    def close_stdin(self) -> None:
        _portal.call(self._inner.close_stdin())


class ExecutionHandle:
    """A cell running in the background (see :class:`~sandlot.sdk.code.AsyncExecutionHandle`)."""

    def __init__(self, inner: AsyncExecutionHandle) -> None:
        self._inner = inner
        self.context = inner.context

    @property
    def logs(self) -> Logs:
        return self._inner.logs

    @property
    def results(self) -> builtins.list[Result]:
        return self._inner.results

    def done(self) -> bool:
        return self._inner.done()

    def wait(self) -> Execution:
        return _portal.call(self._inner.wait())

    def interrupt(self) -> bool:
        return _portal.call(self._inner.interrupt())


class Commands:
    def __init__(self, inner: Any) -> None:
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

    def run(self, cmd: str | list[str], **kwargs: Any) -> CommandResult | CommandHandle:
        """Run a command; same arguments as :meth:`AsyncCommands.run`."""
        result = _portal.call(self._inner.run(cmd, **kwargs))
        return CommandHandle(result) if isinstance(result, AsyncCommandHandle) else result


class Files:
    def __init__(self, inner: Any) -> None:
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
        return _portal.call(self._inner.read(path, format, max_bytes=max_bytes))

    def write(
        self,
        path: str,
        data: str | bytes,
        *,
        mode: int | None = None,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> EntryInfo:
        return _portal.call(self._inner.write(path, data, mode=mode, max_bytes=max_bytes))

    def list(self, path: str, *, depth: int = 1) -> list[EntryInfo]:
        return _portal.call(self._inner.list(path, depth=depth))

    def stat(self, path: str) -> EntryInfo:
        return _portal.call(self._inner.stat(path))

    def exists(self, path: str) -> bool:
        return _portal.call(self._inner.exists(path))

    def make_dir(self, path: str, *, parents: bool = True, exist_ok: bool = True) -> bool:
        return _portal.call(self._inner.make_dir(path, parents=parents, exist_ok=exist_ok))

    def remove(self, path: str, *, recursive: bool = True) -> None:
        _portal.call(self._inner.remove(path, recursive=recursive))

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> EntryInfo:
        return _portal.call(self._inner.rename(src, dst, overwrite=overwrite))


class Sandbox:
    """An isolated computer (sync). ``with Sandbox.create() as sb:`` kills it on exit."""

    def __init__(self, inner: AsyncSandbox) -> None:
        self._inner = inner
        self.commands = Commands(inner.commands)
        self.files = Files(inner.files)

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def info(self) -> SandboxInfo:
        return self._inner.info

    @property
    def provider(self) -> str:
        return self._inner.provider

    @property
    def isolated(self) -> bool:
        return self._inner.isolated

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} provider={self.provider}>"

    @classmethod
    def create(
        cls,
        provider: str | None = None,
        *,
        timeout: float = 300,
        env: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        resources: Resources | dict[str, Any] | None = None,
        workdir: str = "/workspace",
        network: NetworkMode | NetworkPolicy | dict[str, Any] = "none",
        bridge: BridgeConfig | dict[str, Any] | None = None,
        client: Client | None = None,
        **config: Any,
    ) -> Sandbox:
        """Create a sandbox (see :meth:`AsyncSandbox.create`)."""
        spec = build_spec(
            provider, timeout, env, metadata, resources, workdir, config, network, bridge
        )
        return cls(_portal.call(AsyncSandbox._create(spec, client)))

    @classmethod
    def connect(cls, sandbox_id: str, *, client: Client | None = None) -> Sandbox:
        return cls(_portal.call(AsyncSandbox.connect(sandbox_id, client=client)))

    @staticmethod
    def list(
        metadata: dict[str, str] | None = None, *, client: Client | None = None
    ) -> list[SandboxInfo]:
        return _portal.call(AsyncSandbox.list(metadata, client=client))

    @staticmethod
    def gc(*, client: Client | None = None) -> GcReport:
        return _portal.call(AsyncSandbox.gc(client=client))

    def kill(self) -> bool:
        return _portal.call(self._inner.kill())

    def set_timeout(self, seconds: float) -> datetime:
        return _portal.call(self._inner.set_timeout(seconds))

    def pause(self) -> None:
        """Freeze the sandbox until :meth:`resume` (see :meth:`AsyncSandbox.pause`)."""
        _portal.call(self._inner.pause())

    def resume(self) -> None:
        _portal.call(self._inner.resume())

    def is_paused(self) -> bool:
        return _portal.call(self._inner.is_paused())

    def expose(self, port: int) -> str:
        """A URL that reaches ``port`` inside the sandbox (see :meth:`AsyncSandbox.expose`)."""
        return _portal.call(self._inner.expose(port))

    def set_network(
        self,
        network: NetworkMode | NetworkPolicy | dict[str, Any] | None = None,
        *,
        allow: builtins.list[str] | None = None,
        resolve: dict[str, str | builtins.list[str]] | None = None,
    ) -> None:
        """Change what the sandbox may reach (see :meth:`AsyncSandbox.set_network`)."""
        return _portal.call(self._inner.set_network(network, allow=allow, resolve=resolve))

    def network_events(self, after: int = 0) -> builtins.list[dict[str, Any]]:
        """Its proxy's and bridge's connections (see :meth:`AsyncSandbox.network_events`)."""
        return _portal.call(self._inner.network_events(after))

    def is_running(self) -> bool:
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

    def run_code(self, code: str, **kwargs: Any) -> Execution | ExecutionHandle:
        """Run a cell; same arguments as :meth:`AsyncSandbox.run_code`. Ctrl-C while waiting
        interrupts the cell and keeps the context's state."""
        result = _portal.call(self._inner.run_code(code, **kwargs))
        return ExecutionHandle(result) if isinstance(result, AsyncExecutionHandle) else result

    def create_code_context(
        self,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
        persist: bool = False,
    ) -> CodeContext:
        return _portal.call(
            self._inner.create_code_context(cwd=cwd, env=env, name=name, persist=persist)
        )

    def list_code_contexts(self) -> builtins.list[CodeContext]:
        return _portal.call(self._inner.list_code_contexts())

    def restart_code_context(
        self, context: ContextRef = None, *, forget_state: bool = False
    ) -> CodeContext:
        return _portal.call(self._inner.restart_code_context(context, forget_state=forget_state))

    def remove_code_context(self, context: ContextRef) -> None:
        _portal.call(self._inner.remove_code_context(context))

    def interrupt_code(self, context: ContextRef = None) -> bool:
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
        _portal.call(self._inner.close())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
