"""A sandlot sandbox as LangChain deepagents' sandbox backend (``BaseSandbox``).

    from deepagents import create_deep_agent
    from sandlot.integrations.deepagents import SandlotBackend

    backend = SandlotBackend.create()             # a new bwrap sandbox (or provider=, client=)
    agent = create_deep_agent(model=..., backend=backend)

deepagents builds every file tool (ls, read, write, edit, grep, glob) on three primitives,
which this class maps onto the SDK: ``execute`` -> ``sb.commands.run`` (a shell string),
``upload_files`` -> ``sb.files.write``, ``download_files`` -> ``sb.files.read``; ``id`` is
the sandbox's id. The sandbox's state (files, installed packages) persists between calls.

One backend serves both faces: its sync methods and its ``a``-methods talk to the same
:class:`sandlot.AsyncSandbox` on the event loop it belongs to (sandlot's own background loop
for a sandbox made by the sync SDK). An ``a``-method awaits it directly on that loop, and
from any other loop hands the call to it and awaits the answer (no worker thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from deepagents.backends.protocol import (
    FILE_NOT_FOUND,
    INVALID_PATH,
    IS_DIRECTORY,
    PERMISSION_DENIED,
    ExecuteResponse,
    FileDownloadResponse,
    FileUploadResponse,
)
from deepagents.backends.sandbox import BaseSandbox
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CommandTimeoutError, InvalidArgumentError, SandlotError
from ..sdk.sandbox import AsyncSandbox
from ..sdk.sync import Sandbox, _portal

if TYPE_CHECKING:
    from ..remote import Client

__all__ = ["SandlotBackend", "SandlotBackendOptions"]

T = TypeVar("T")

TIMEOUT_EXIT_CODE = 124  # what timeout(1) and deepagents' LocalShellBackend report
_CONCURRENT_TRANSFERS = 8  # files moved at once by aupload_files / adownload_files

# sandlot's file error codes -> deepagents' FileOperationError literals. Any other failure is
# reported by its sandlot code (e.g. "file_too_large", "no_space", "sandbox_closed").
_FILE_ERRORS: dict[str, str] = {
    "file_not_found": FILE_NOT_FOUND,
    "permission_denied": PERMISSION_DENIED,
    "is_a_directory": IS_DIRECTORY,
    "not_a_directory": INVALID_PATH,  # a component of the path is a file
    "file_exists": INVALID_PATH,  # the same, met while creating an upload's parents
}


class SandlotBackendOptions(BaseModel):
    """How :class:`SandlotBackend` runs commands and bounds what it brings back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_timeout: float | None = Field(default=120.0, gt=0)
    """Seconds an ``execute`` may run when the caller gives no timeout (None: no limit but
    the sandbox's lifetime). A command past its timeout is killed with its process group."""

    max_output_bytes: int = Field(default=1024 * 1024, ge=1)
    """Bytes of each of stdout and stderr an ``execute`` keeps (the tail wins); beyond it
    ``truncated`` is set. deepagents' own tools read files through ``execute`` with pages of
    about 500 KiB, so keep this above that."""

    max_download_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Largest file ``download_files`` brings back; a larger one gets the error
    ``file_too_large`` (nothing is read past the limit)."""

    capture_offload: bool = False
    """deepagents' ``enable_capture_offload``: its execute tool wraps commands to leave large
    output in a file under the agent's artifacts root. sandlot sandboxes have a read-only
    ``/``: turn this on only with a writable artifacts root (``CompositeBackend(...,
    artifacts_root="/workspace/.deepagents")``), or the output is lost."""


class SandlotBackend(BaseSandbox):
    """deepagents' ``BaseSandbox`` over a sandlot sandbox (see the module's docstring).

    Build it from a sandbox you hold (``SandlotBackend(sb)``, a :class:`sandlot.Sandbox`, or
    an :class:`sandlot.AsyncSandbox` from inside its event loop), or let :meth:`create` /
    :meth:`acreate` / :meth:`connect` make or reach one. The backend never kills the sandbox
    on its own: :meth:`kill` does, or the sandbox's own lifetime.
    """

    def __init__(
        self,
        sandbox: Sandbox | AsyncSandbox,
        *,
        options: SandlotBackendOptions | None = None,
    ) -> None:
        # Whether the sandbox lives on the sync SDK's loop (its calls then go through the
        # sync SDK's portal, which kills a foreground command on Ctrl-C).
        self._on_portal = isinstance(sandbox, Sandbox)
        if isinstance(sandbox, Sandbox):
            self._sandbox = sandbox._inner
            self._loop = _portal.loop()
        elif isinstance(sandbox, AsyncSandbox):
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise InvalidArgumentError(
                    "build a SandlotBackend from an AsyncSandbox inside the event loop it "
                    "belongs to (or pass a sandlot.Sandbox)"
                ) from None
            self._sandbox = sandbox
        else:
            raise InvalidArgumentError(
                f"sandbox must be a sandlot.Sandbox or AsyncSandbox, not {type(sandbox).__name__}"
            )
        self.options = options or SandlotBackendOptions()
        self.enable_capture_offload = self.options.capture_offload

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls, *, options: SandlotBackendOptions | None = None, **sandbox_settings: Any
    ) -> SandlotBackend:
        """A new sandbox: ``sandbox_settings`` are :meth:`sandlot.Sandbox.create`'s
        (``provider``, ``timeout``, ``idle_timeout``, ``env``, ``network``, ``client`` for a
        sandlot server, ...)."""
        return cls(Sandbox.create(**sandbox_settings), options=options)

    @classmethod
    async def acreate(
        cls, *, options: SandlotBackendOptions | None = None, **sandbox_settings: Any
    ) -> SandlotBackend:
        """:meth:`create` for async code: the sandbox belongs to the running event loop."""
        return cls(await AsyncSandbox.create(**sandbox_settings), options=options)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        client: Client | None = None,
        options: SandlotBackendOptions | None = None,
    ) -> SandlotBackend:
        """Attach to a running sandbox by id (``client`` for one on a sandlot server)."""
        return cls(Sandbox.connect(sandbox_id, client=client), options=options)

    @property
    def id(self) -> str:
        """The sandlot sandbox's id (give it to :meth:`connect` to reattach)."""
        return self._sandbox.id

    @property
    def sandbox(self) -> AsyncSandbox:
        """The sandlot sandbox behind this backend (it lives on the backend's event loop)."""
        return self._sandbox

    def kill(self) -> bool:
        """Destroy the sandbox. False if it was already gone."""
        return self._call(self._sandbox.kill())

    async def akill(self) -> bool:
        """Destroy the sandbox. False if it was already gone."""
        return await self._acall(self._sandbox.kill())

    # -- the loop the sandbox lives on ----------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the sandbox's loop and wait for it (the sync methods)."""
        if self._on_portal:
            return _portal.call(coro)
        if _running_loop() is self._loop:
            coro.close()
            raise RuntimeError(
                "a sync SandlotBackend method was called on the event loop its sandbox "
                "belongs to: use the async method (aexecute, aread, ...)"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._owner_loop(coro)).result()

    async def _acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the sandbox's loop (the async methods). Cancelling the caller
        cancels it there too (a foreground command is then killed)."""
        if _running_loop() is self._loop:
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, self._owner_loop(coro))
        return await asyncio.wrap_future(future)

    def _owner_loop(self, coro: Coroutine[Any, Any, Any]) -> asyncio.AbstractEventLoop:
        """The sandbox's loop, if it runs (a call handed to a stopped loop would never end)."""
        if not self._loop.is_running():
            coro.close()
            raise RuntimeError(
                "the event loop this sandbox belongs to is not running: build the backend "
                "from a sandlot.Sandbox to use it from anywhere"
            )
        return self._loop

    # -- execute --------------------------------------------------------------------------

    def execute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        """Run a shell command (bash, else sh) in the sandbox's working folder.

        ``timeout``: seconds (None: the options' ``command_timeout``; 0: no limit). A command
        past it is killed: the response has what it printed, a note, and exit code 124.
        ``output`` is stdout then stderr, each up to ``max_output_bytes`` (the tail)."""
        return self._call(self._execute(command, timeout))

    async def aexecute(
        self,
        command: str,
        *,
        timeout: int | None = None,
    ) -> ExecuteResponse:
        """:meth:`execute`, awaited on the sandbox's event loop."""
        return await self._acall(self._execute(command, timeout))

    async def _execute(self, command: str, timeout: int | None) -> ExecuteResponse:
        seconds = self._timeout(timeout)
        if not isinstance(command, str):  # the SDK would take a list as argv
            return ExecuteResponse(output="Error: the command must be a string.", exit_code=1)
        try:
            result = await self._sandbox.commands.run(
                command, timeout=seconds, max_output_bytes=self.options.max_output_bytes
            )
        except CommandTimeoutError as exc:
            output = _combine(exc.stdout or "", exc.stderr or "")
            note = f"Error: command timed out after {seconds:g} seconds and was killed."
            return ExecuteResponse(
                output=f"{output.rstrip()}\n\n{note}" if output.strip() else note,
                exit_code=TIMEOUT_EXIT_CODE,
            )
        except InvalidArgumentError as exc:  # an empty command, a NUL byte: the model's error
            return ExecuteResponse(output=f"Error: {exc}", exit_code=1)
        return ExecuteResponse(
            output=_combine(result.stdout, result.stderr),
            exit_code=result.exit_code,
            truncated=result.truncated,
        )

    def _timeout(self, timeout: object) -> float | None:
        if timeout is None:
            return self.options.command_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise InvalidArgumentError(
                f"timeout must be a non-negative number of seconds, got {timeout!r}"
            )
        return float(timeout) or None  # 0: no limit but the sandbox's lifetime

    # -- files ----------------------------------------------------------------------------

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """Write each file (parents are created), in order; a failure is that file's
        ``error``: ``invalid_path`` (not absolute), ``permission_denied``,
        ``is_directory``, or sandlot's code for anything else (``no_space``, ...)."""
        return self._call(self._upload(files))

    async def aupload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """:meth:`upload_files`, several files at once."""
        return await self._acall(self._upload(files))

    def download_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        """Read each file, in order; a failure is that file's ``error``:
        ``file_not_found``, ``is_directory``, ``permission_denied``, ``invalid_path``, or
        ``file_too_large`` past the options' ``max_download_bytes``."""
        return self._call(self._download(paths))

    async def adownload_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        """:meth:`download_files`, several files at once."""
        return await self._acall(self._download(paths))

    async def _upload(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        limit = asyncio.Semaphore(_CONCURRENT_TRANSFERS)

        async def one(path: str, content: bytes) -> FileUploadResponse:
            if not _valid_path(path):
                return FileUploadResponse(path=path, error=INVALID_PATH)
            async with limit:
                try:
                    await self._sandbox.files.write(path, content)
                except SandlotError as exc:
                    return FileUploadResponse(path=path, error=_file_error(exc))
            return FileUploadResponse(path=path)

        return list(await asyncio.gather(*(one(path, content) for path, content in files)))

    async def _download(self, paths: list[str]) -> list[FileDownloadResponse]:
        limit = asyncio.Semaphore(_CONCURRENT_TRANSFERS)
        max_bytes = self.options.max_download_bytes

        async def one(path: str) -> FileDownloadResponse:
            if not _valid_path(path):
                return FileDownloadResponse(path=path, error=INVALID_PATH)
            async with limit:
                try:
                    data = await self._sandbox.files.read(path, "bytes", max_bytes=max_bytes)
                except SandlotError as exc:
                    return FileDownloadResponse(path=path, error=_file_error(exc))
            return FileDownloadResponse(path=path, content=data)

        return list(await asyncio.gather(*(one(path) for path in paths)))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _combine(stdout: str, stderr: str) -> str:
    """stdout, then stderr on a line of its own."""
    if not stderr:
        return stdout
    if stdout and not stdout.endswith("\n"):
        return f"{stdout}\n{stderr}"
    return stdout + stderr


def _valid_path(path: object) -> bool:
    return isinstance(path, str) and path.startswith("/") and "\0" not in path


def _file_error(exc: SandlotError) -> str:
    return _FILE_ERRORS.get(exc.code, exc.code)
