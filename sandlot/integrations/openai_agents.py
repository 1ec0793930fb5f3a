"""sandlot as a sandbox of the OpenAI Agents SDK (``agents.sandbox``, openai-agents 0.24).

:class:`SandlotSandboxClient` creates, resumes and deletes sessions the SDK's way (a
``SandboxAgent`` run with ``SandboxRunConfig(client=SandlotSandboxClient(),
options=SandlotSandboxClientOptions())``); :class:`SandlotSandboxSession` translates the SDK's
calls into the async SDK: ``exec`` into ``sb.commands.run``, ``read``/``write`` into
``sb.files``, the PTY calls (``exec_command``/``write_stdin`` tools) into background commands
and ``sb.pty`` terminals.

With ``durable=True`` (the default) the sandbox is attached to a sandlot session
(``sandlot.AsyncSession``): its /workspace is checkpointed when the SDK persists the workspace
and when the sandbox ends, and a resume (in any process, from the serialized state) attaches
a sandbox again with the latest checkpoint restored. The SDK's own snapshot then holds only a
reference to that session. With ``durable=False`` the sandbox is a plain one and the SDK's
tar snapshot (persist/hydrate) carries the workspace, as with the SDK's other backends.

Nothing here imports ``agents`` before this module is imported (``import sandlot`` does not).
"""

from __future__ import annotations

import asyncio
import io
import json
import shlex
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agents.sandbox.errors import (
    ExecTimeoutError,
    ExecTransportError,
    ExposedPortUnavailableError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
    WorkspaceStartError,
    WorkspaceWriteTypeError,
)
from agents.sandbox.manifest import Manifest
from agents.sandbox.session import SandboxSession, SandboxSessionState
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.dependencies import Dependencies
from agents.sandbox.session.manager import Instrumentation
from agents.sandbox.session.pty_output import collect_pty_output
from agents.sandbox.session.pty_types import (
    PTY_PROCESSES_MAX,
    PtyExecUpdate,
    allocate_pty_process_id,
    clamp_pty_yield_time_ms,
    process_id_to_prune_from_meta,
    resolve_pty_write_yield_time_ms,
)
from agents.sandbox.session.runtime_helpers import (
    RESOLVE_WORKSPACE_PATH_HELPER,
    RuntimeHelperScript,
)
from agents.sandbox.session.sandbox_client import BaseSandboxClient, BaseSandboxClientOptions
from agents.sandbox.session.tar_workspace import shell_tar_exclude_args
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExecResult, ExposedPortEndpoint, User
from agents.sandbox.util.tar_utils import UnsafeTarMemberError, validate_tar_bytes
from agents.sandbox.workspace_paths import posix_path_for_error, sandbox_path_str
from pydantic import Field

import sandlot
from sandlot.errors import (
    CommandTimeoutError,
    FileNotFoundInSandboxError,
    FileTooLargeError,
    SandboxNotFoundError,
    SandlotError,
    SessionBusyError,
)

__all__ = [
    "SandlotSandboxClient",
    "SandlotSandboxClientOptions",
    "SandlotSandboxSession",
    "SandlotSandboxSessionState",
]

BACKEND_ID = "sandlot"
# What persist_workspace returns in durable mode instead of a tar: the workspace is in the
# sandlot session's checkpoint, and the SDK's snapshot only needs to know which one.
_CHECKPOINT_REF_MAGIC = b"SANDLOT_SESSION_CHECKPOINT_V1\n"
_FAST_OP_TIMEOUT_S = 30.0  # mkdir/rm/tar bookkeeping around persist and hydrate
_ARCHIVE_TIMEOUT_S = 600.0


class SandlotSandboxClientOptions(BaseSandboxClientOptions):
    """How :class:`SandlotSandboxClient` makes a sandbox (JSON round-trips, no secrets:
    remote credentials come from the client's ``sandlot.Client`` or ``SANDLOT_API_KEY``)."""

    type: Literal["sandlot"] = "sandlot"
    provider: str | None = None
    """sandlot provider (bwrap by default; docker, process, ...)."""
    durable: bool = True
    """Attach the sandbox to a sandlot session: /workspace survives the sandbox and resumes
    from its checkpoint in any process. False: a plain sandbox, the SDK's tar snapshot
    carries the workspace."""
    session_id: str | None = None
    """Attach to this existing sandlot session instead of creating one (durable only)."""
    workspace_store: str = "local"
    """Where a new session keeps its checkpoints: ``local`` or ``s3://bucket/prefix``."""
    session_delete_after: float | None = None
    """Seconds after which a session this client creates is deleted with its data (None:
    kept until deleted, e.g. with :meth:`SandlotSandboxClient.delete_workspace`)."""
    timeout: float = 3600
    """The sandbox's lifetime in seconds."""
    idle_timeout: float | None = 600
    """Seconds without use after which the sandbox is stopped (checkpointed when durable)."""
    env: dict[str, Any] = Field(default_factory=dict)
    """Variables of every command; values may be ``{"secret": NAME}`` (sandlot's secrets)."""
    network: Any = "none"
    """``"none"`` (default), ``"full"`` or ``{"allow": [rules]}`` (docs/egress.md)."""
    metadata: dict[str, str] = Field(default_factory=dict)
    exposed_ports: tuple[int, ...] = ()
    """Ports ``resolve_exposed_port`` may expose (through sandlot's port forwarding)."""
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Cap on one file read or write, and on a workspace tar (sandbox content is untrusted)."""


class SandlotSandboxSessionState(SandboxSessionState):
    """What resumes a session in another process (``client.serialize_session_state``)."""

    type: Literal["sandlot"] = "sandlot"
    sandbox_id: str | None = None
    sandlot_session_id: str | None = None
    provider: str | None = None
    durable: bool = True
    workspace_store: str = "local"
    timeout: float = 3600
    idle_timeout: float | None = 600
    env: dict[str, Any] = Field(default_factory=dict)
    network: Any = "none"
    metadata: dict[str, str] = Field(default_factory=dict)
    max_file_bytes: int = 64 * 1024 * 1024


@dataclass
class _Process:
    """A process started by ``pty_exec_start``: its handle and the output not yet returned."""

    handle: sandlot.AsyncCommandHandle | sandlot.AsyncPtyHandle
    tty: bool
    chunks: deque[bytes] = field(default_factory=deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    notify: asyncio.Event = field(default_factory=asyncio.Event)
    last_used: float = field(default_factory=time.monotonic)

    watcher: asyncio.Task[None] | None = None

    def feed(self, data: bytes | str) -> None:
        # Called on the event loop between awaits, so the deque needs no lock here.
        self.chunks.append(data.encode() if isinstance(data, str) else bytes(data))
        self.notify.set()

    def watch(self, timeout: float | None = None) -> None:
        """Wake the output collector when the process ends (no more output may come), and
        kill it at ``timeout`` seconds."""

        async def ended() -> None:
            try:
                await asyncio.wait_for(asyncio.shield(self.handle.wait()), timeout)
            except TimeoutError:
                await _kill_quietly(self, cancel_watcher=False)
                try:
                    await self.handle.wait()
                except SandlotError:
                    pass
            except SandlotError:
                pass
            finally:
                self.notify.set()

        self.watcher = asyncio.create_task(ended())


class SandlotSandboxSession(BaseSandboxSession):
    """An ``agents.sandbox`` session over one sandlot sandbox (and, when durable, a session)."""

    state: SandlotSandboxSessionState

    def __init__(
        self,
        state: SandlotSandboxSessionState,
        *,
        client: sandlot.Client | None = None,
        sandbox: sandlot.AsyncSandbox | None = None,
        session: sandlot.AsyncSession | None = None,
    ) -> None:
        self.state = state
        self._client = client
        self._sandbox = sandbox
        self._session = session
        # A sandlot session allows one foreground run at a time (its run lock); the SDK may
        # issue several (parallel tool calls, manifest materialization), so they queue here.
        self._run_lock = asyncio.Lock()
        self._processes: dict[int, _Process] = {}
        self._process_lock = asyncio.Lock()

    @property
    def sandbox(self) -> sandlot.AsyncSandbox:
        """The sandlot sandbox (attached by ``start()``)."""
        if self._sandbox is None:
            raise WorkspaceStartError(
                path=Path(self.state.manifest.root), context={"reason": "sandbox_not_started"}
            )
        return self._sandbox

    # -- lifecycle -----------------------------------------------------------------------

    async def _ensure_backend_started(self) -> None:
        if self._sandbox is not None and await self._sandbox.is_running():
            return
        await self._attach()

    async def _attach(self) -> None:
        state = self.state
        try:
            if state.durable:
                if self._session is None:
                    self._session = await _connect_session(state, self._client)
                # reuse=True takes the session's live sandbox when its spec matches (resume
                # after a crash); otherwise a fresh one with the latest checkpoint restored.
                self._sandbox = await self._session.sandbox(
                    state.provider,
                    reuse=True,
                    timeout=state.timeout,
                    idle_timeout=state.idle_timeout,
                    env=dict(state.env) or None,
                    network=state.network,
                )
            else:
                self._sandbox = await sandlot.AsyncSandbox.create(
                    state.provider,
                    timeout=state.timeout,
                    idle_timeout=state.idle_timeout,
                    env=dict(state.env) or None,
                    metadata=dict(state.metadata) or None,
                    network=state.network,
                    client=self._client,
                )
        except SandlotError as exc:
            raise WorkspaceStartError(
                path=Path(state.manifest.root), context={"code": exc.code}, cause=exc
            ) from exc
        state.sandbox_id = self._sandbox.id

    async def running(self) -> bool:
        if self._sandbox is None:
            return False
        try:
            return await self._sandbox.is_running()
        except SandlotError:
            return False

    async def _shutdown_backend(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is None:
            return
        try:
            if self._session is not None:
                await self._session.detach(sandbox)  # checkpoint, then destroy
            else:
                await sandbox.kill()
        except SandboxNotFoundError:
            pass

    def _runtime_helpers(self) -> tuple[RuntimeHelperScript, ...]:
        return (RESOLVE_WORKSPACE_PATH_HELPER,)

    def _current_runtime_helper_cache_key(self) -> object | None:
        return self.state.sandbox_id

    async def _validate_path_access(self, path: Path | str, *, for_write: bool = False) -> Path:
        # Symlinks inside the workspace are the sandbox's to plant: resolve them in there.
        return await self._validate_remote_path_access(path, for_write=for_write)

    # -- commands ------------------------------------------------------------------------

    async def _env(self) -> dict[str, str] | None:
        return await self.state.manifest.environment.resolve() or None

    def _cwd(self) -> str | None:
        return self.state.manifest.root if self.state.workspace_root_ready else None

    async def _exec_internal(
        self, *command: str | Path, timeout: float | None = None
    ) -> ExecResult:
        argv = [str(part) for part in command]
        env = await self._env()
        try:
            async with self._run_lock:
                result = await self.sandbox.commands.run(
                    argv,
                    cwd=self._cwd(),
                    env=env,
                    timeout=timeout if timeout is None else max(timeout, 0.001),
                    max_output_bytes=self.state.max_file_bytes,
                )
        except CommandTimeoutError as exc:
            raise ExecTimeoutError(command=command, timeout_s=timeout, cause=exc) from exc
        except SandlotError as exc:
            raise ExecTransportError(
                command=command,
                context={"code": exc.code},
                cause=exc,
                retryable=isinstance(exc, SessionBusyError),
            ) from exc
        return ExecResult(
            stdout=result.stdout_bytes, stderr=result.stderr_bytes, exit_code=result.exit_code
        )

    def supports_pty(self) -> bool:
        return True

    async def pty_exec_start(
        self,
        *command: str | Path,
        timeout: float | None = None,
        shell: bool | list[str] = True,
        user: str | User | None = None,
        tty: bool = False,
        yield_time_s: float | None = None,
        max_output_tokens: int | None = None,
    ) -> PtyExecUpdate:
        argv = self._prepare_exec_command(*command, shell=shell, user=user)
        env = await self._env()
        sandbox = self.sandbox
        process: _Process | None = None
        try:
            if tty:
                pending = _Process(handle=None, tty=True)  # type: ignore[arg-type]
                handle: sandlot.AsyncCommandHandle | sandlot.AsyncPtyHandle
                handle = await sandbox.pty.create(
                    cmd=argv, on_data=pending.feed, env=env, cwd=self._cwd(), timeout=timeout
                )
            else:
                # Background with stdin open and no lock: a dev server or a watcher started
                # by the model keeps running while later commands run.
                # (A sandlot timeout would make it a run holding the session's run lock: the
                # watcher below kills it at the timeout instead.)
                pending = _Process(handle=None, tty=False)  # type: ignore[arg-type]
                handle = await sandbox.commands.run(
                    argv,
                    background=True,
                    env=env,
                    cwd=self._cwd(),
                    on_stdout=pending.feed,
                    on_stderr=pending.feed,
                )
            pending.handle = handle
            pending.watch(None if tty else timeout)
            process = pending
        except CommandTimeoutError as exc:
            raise ExecTimeoutError(command=command, timeout_s=timeout, cause=exc) from exc
        except SandlotError as exc:
            raise ExecTransportError(
                command=command, context={"code": exc.code}, cause=exc
            ) from exc

        pruned: _Process | None = None
        async with self._process_lock:
            process_id = allocate_pty_process_id(set(self._processes))
            if len(self._processes) >= PTY_PROCESSES_MAX:
                meta = [(pid, p.last_used, p.handle.done()) for pid, p in self._processes.items()]
                victim = process_id_to_prune_from_meta(meta)
                if victim is not None:
                    pruned = self._processes.pop(victim, None)
            self._processes[process_id] = process
        if pruned is not None:
            await _kill_quietly(pruned)
        wait_ms = 10_000 if yield_time_s is None else int(yield_time_s * 1000)
        return await self._collect(
            process_id, process, clamp_pty_yield_time_ms(wait_ms), max_output_tokens
        )

    async def pty_write_stdin(
        self,
        *,
        session_id: int,
        chars: str,
        yield_time_s: float | None = None,
        max_output_tokens: int | None = None,
    ) -> PtyExecUpdate:
        async with self._process_lock:
            process = self._resolve_pty_session_entry(
                pty_processes=self._processes, session_id=session_id
            )
        if chars and not process.handle.done():
            try:
                if not process.tty and chars == "\x04":
                    # No terminal to turn Ctrl-D into end of input: close the pipe instead.
                    await process.handle.close_stdin()  # type: ignore[union-attr]
                else:
                    await process.handle.send_stdin(chars)
            except SandlotError as exc:
                raise ExecTransportError(
                    command=("write_stdin", str(session_id)), context={"code": exc.code}, cause=exc
                ) from exc
        wait_ms = 250 if yield_time_s is None else int(yield_time_s * 1000)
        process.last_used = time.monotonic()
        yield_ms = resolve_pty_write_yield_time_ms(yield_time_ms=wait_ms, input_empty=chars == "")
        return await self._collect(session_id, process, yield_ms, max_output_tokens)

    async def _collect(
        self, process_id: int, process: _Process, yield_ms: int, max_output_tokens: int | None
    ) -> PtyExecUpdate:
        output, original_token_count, closed = await collect_pty_output(
            output_chunks=process.chunks,
            output_lock=process.lock,
            output_notify=process.notify,
            is_done=process.handle.done,
            yield_time_ms=yield_ms,
            max_output_tokens=max_output_tokens,
        )
        exit_code: int | None = None
        live_id: int | None = process_id
        if closed:
            try:
                exit_code = (await process.handle.wait()).exit_code
            except CommandTimeoutError:
                exit_code = 124  # killed at its timeout, as timeout(1) reports it
            except SandlotError:
                exit_code = -1
            async with self._process_lock:
                self._processes.pop(process_id, None)
            live_id = None
        return PtyExecUpdate(
            process_id=live_id,
            output=output,
            exit_code=exit_code,
            original_token_count=original_token_count,
        )

    async def pty_terminate_all(self) -> None:
        async with self._process_lock:
            processes = list(self._processes.values())
            self._processes.clear()
        for process in processes:
            await _kill_quietly(process)

    # -- files ---------------------------------------------------------------------------

    async def read(self, path: Path, *, user: str | User | None = None) -> io.IOBase:
        if user is not None:
            await self._check_read_with_exec(path, user=user)
        workspace_path = await self._validate_path_access(path)
        try:
            data = await self.sandbox.files.read(
                sandbox_path_str(workspace_path), "bytes", max_bytes=self.state.max_file_bytes
            )
        except FileNotFoundInSandboxError:
            raise WorkspaceReadNotFoundError(path=path) from None
        except SandlotError as exc:
            raise WorkspaceArchiveReadError(
                path=path, context={"code": exc.code}, cause=exc
            ) from exc
        return io.BytesIO(data)

    async def _read_bounded(self, path: Path, *, max_bytes: int) -> bytes:
        workspace_path = await self._validate_path_access(path)
        target = sandbox_path_str(workspace_path)
        try:
            return await self.sandbox.files.read(target, "bytes", max_bytes=max_bytes)
        except FileTooLargeError:
            # Larger than asked for: its first max_bytes bytes, read in the sandbox.
            result = await self.exec("head", "-c", str(max_bytes), "--", target, shell=False)
            return result.stdout[:max_bytes]

    async def write(self, path: Path, data: io.IOBase, *, user: str | User | None = None) -> None:
        if user is not None:
            await self._check_write_with_exec(path, user=user)
        payload = data.read(self.state.max_file_bytes + 1)
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=path, actual_type=type(payload).__name__)
        if len(payload) > self.state.max_file_bytes:
            raise WorkspaceArchiveWriteError(
                path=path,
                context={"reason": "too_large", "max_file_bytes": self.state.max_file_bytes},
            )
        workspace_path = await self._validate_path_access(path, for_write=True)
        try:
            await self.sandbox.files.write(
                sandbox_path_str(workspace_path), bytes(payload), max_bytes=len(payload)
            )
        except SandlotError as exc:
            raise WorkspaceArchiveWriteError(
                path=workspace_path, context={"code": exc.code}, cause=exc
            ) from exc

    # -- workspace persistence -----------------------------------------------------------

    def _should_compute_snapshot_fingerprint_on_persist(self) -> bool:
        # A durable workspace is the session's checkpoint; nothing to fingerprint.
        return not self.state.durable

    async def persist_workspace(self) -> io.IOBase:
        if self._session is not None:
            try:
                info = await self._session.checkpoint()
            except SandlotError as exc:
                raise WorkspaceArchiveReadError(
                    path=posix_path_for_error(self._workspace_root_path()),
                    context={"code": exc.code},
                    cause=exc,
                ) from exc
            ref = {"session_id": self._session.id, "checkpoint": info.number}
            return io.BytesIO(_CHECKPOINT_REF_MAGIC + json.dumps(ref).encode())
        return io.BytesIO(await self._workspace_tar())

    async def _workspace_tar(self) -> bytes:
        root = self._workspace_root_path().as_posix()
        error_root = posix_path_for_error(self._workspace_root_path())
        tar_path = f"/tmp/sandlot-persist-{uuid.uuid4().hex}.tar"
        excludes = " ".join(shell_tar_exclude_args(self._persist_workspace_skip_relpaths()))
        script = f"tar {excludes} -C {shlex.quote(root)} -cf {shlex.quote(tar_path)} ."
        try:
            result = await self.exec("sh", "-c", script, shell=False, timeout=_ARCHIVE_TIMEOUT_S)
            if not result.ok():
                raise WorkspaceArchiveReadError(
                    path=error_root,
                    context={"reason": "tar_failed", "stderr": result.stderr.decode()[-2000:]},
                )
            return await self.sandbox.files.read(
                tar_path, "bytes", max_bytes=self.state.max_file_bytes
            )
        except SandlotError as exc:
            raise WorkspaceArchiveReadError(
                path=error_root, context={"code": exc.code}, cause=exc
            ) from exc
        finally:
            await self._remove_quietly(tar_path)

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        error_root = posix_path_for_error(self._workspace_root_path())
        raw = data.read(self.state.max_file_bytes + 1)
        if isinstance(raw, str):
            raw = raw.encode()
        if not isinstance(raw, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=error_root, actual_type=type(raw).__name__)
        raw = bytes(raw)
        if raw.startswith(_CHECKPOINT_REF_MAGIC):
            self._check_checkpoint_ref(raw)  # attaching restored it already
            return
        if len(raw) > self.state.max_file_bytes:
            raise WorkspaceArchiveWriteError(path=error_root, context={"reason": "too_large"})
        try:
            validate_tar_bytes(raw, allow_external_symlink_targets=False)
        except UnsafeTarMemberError as exc:
            raise WorkspaceArchiveWriteError(
                path=error_root,
                context={"reason": "unsafe_or_invalid_tar", "member": exc.member},
                cause=exc,
            ) from exc
        root = self._workspace_root_path().as_posix()
        tar_path = f"/tmp/sandlot-hydrate-{uuid.uuid4().hex}.tar"
        try:
            await self.sandbox.files.make_dir(root)
            await self.sandbox.files.write(tar_path, raw, max_bytes=len(raw))
            result = await self.exec(
                "tar", "-C", root, "-xf", tar_path, shell=False, timeout=_ARCHIVE_TIMEOUT_S
            )
        except SandlotError as exc:
            raise WorkspaceArchiveWriteError(
                path=error_root, context={"code": exc.code}, cause=exc
            ) from exc
        finally:
            await self._remove_quietly(tar_path)
        if not result.ok():
            raise WorkspaceArchiveWriteError(
                path=error_root,
                context={"reason": "tar_failed", "stderr": result.stderr.decode()[-2000:]},
            )

    def _check_checkpoint_ref(self, raw: bytes) -> None:
        try:
            ref = json.loads(raw[len(_CHECKPOINT_REF_MAGIC) :])
            session_id = ref["session_id"]
        except (ValueError, TypeError, KeyError):
            session_id = None
        if self._session is None or session_id != self._session.id:
            raise WorkspaceArchiveWriteError(
                path=posix_path_for_error(self._workspace_root_path()),
                context={"reason": "checkpoint_of_another_session", "session_id": session_id},
            )

    async def _restore_snapshot_into_workspace_on_resume(self) -> None:
        # The SDK clears the workspace before hydrating. A durable session's snapshot is a
        # reference to the checkpoint attaching restored (or to the live sandbox reused):
        # look before clearing, so that workspace is kept.
        stream = await self.state.snapshot.restore(dependencies=self.dependencies)
        try:
            raw = stream.read(self.state.max_file_bytes + 1)
        finally:
            stream.close()
        if isinstance(raw, str):
            raw = raw.encode()
        if isinstance(raw, bytes) and raw.startswith(_CHECKPOINT_REF_MAGIC):
            self._check_checkpoint_ref(raw)
            return
        await self._clear_workspace_root_on_resume()
        await self.hydrate_workspace(io.BytesIO(raw))

    async def _remove_quietly(self, path: str) -> None:
        try:
            if self._sandbox is not None:
                await self._sandbox.files.remove(path)
        except SandlotError:
            pass

    # -- ports ---------------------------------------------------------------------------

    async def _resolve_exposed_port(self, port: int) -> ExposedPortEndpoint:
        try:
            url = await self.sandbox.expose(port)
        except SandlotError as exc:
            raise ExposedPortUnavailableError(
                port=port,
                exposed_ports=self.state.exposed_ports,
                reason="backend_unavailable",
                context={"backend": BACKEND_ID, "code": exc.code},
                cause=exc,
            ) from exc
        endpoint = _endpoint(url)
        if endpoint is None:
            # A server forwards ports under a path (/v1/sandboxes/ID/ports/N/), which the
            # SDK's host:port endpoint cannot carry.
            raise ExposedPortUnavailableError(
                port=port,
                exposed_ports=self.state.exposed_ports,
                reason="backend_unavailable",
                context={"backend": BACKEND_ID, "url": url},
            )
        return endpoint


class SandlotSandboxClient(BaseSandboxClient[SandlotSandboxClientOptions]):
    """Creates and resumes :class:`SandlotSandboxSession` s: embedded (this host), or on a
    sandlot server with ``client=sandlot.Client(url=..., api_key=...)`` (or ``SANDLOT_URL``)."""

    backend_id = BACKEND_ID
    supports_default_options = True

    def __init__(
        self,
        client: sandlot.Client | None = None,
        *,
        instrumentation: Instrumentation | None = None,
        dependencies: Dependencies | None = None,
    ) -> None:
        self._client = client
        self._instrumentation = instrumentation or Instrumentation()
        self._dependencies = dependencies

    async def create(
        self,
        *,
        snapshot: SnapshotSpec | SnapshotBase | None = None,
        manifest: Manifest | None = None,
        options: SandlotSandboxClientOptions | None = None,
    ) -> SandboxSession:
        options = options if options is not None else SandlotSandboxClientOptions()
        manifest = self._validate_manifest_for_create(manifest or Manifest())
        session: sandlot.AsyncSession | None = None
        if options.durable:
            try:
                if options.session_id is not None:
                    session = await sandlot.AsyncSession.connect(
                        options.session_id, client=self._client
                    )
                else:
                    session = await sandlot.AsyncSession.create(
                        {"openai_agents": "1", **options.metadata},
                        workspace_store=options.workspace_store,
                        delete_after=options.session_delete_after,
                        client=self._client,
                    )
            except SandlotError as exc:
                raise WorkspaceStartError(
                    path=Path(manifest.root), context={"code": exc.code}, cause=exc
                ) from exc
        elif options.session_id is not None:
            raise ValueError("session_id needs durable=True")
        session_id = uuid.uuid4()
        state = SandlotSandboxSessionState(
            session_id=session_id,
            manifest=manifest,
            snapshot=resolve_snapshot(snapshot, str(session_id)),
            exposed_ports=options.exposed_ports,
            sandlot_session_id=session.id if session is not None else None,
            provider=options.provider,
            durable=options.durable,
            workspace_store=options.workspace_store,
            timeout=options.timeout,
            idle_timeout=options.idle_timeout,
            env=options.env,
            network=options.network,
            metadata=options.metadata,
            max_file_bytes=options.max_file_bytes,
        )
        inner = SandlotSandboxSession(state, client=self._client, session=session)
        # The sandbox starts now (as the SDK's other backends' do), the workspace in start().
        await inner._attach()
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        if not isinstance(state, SandlotSandboxSessionState):
            raise TypeError("SandlotSandboxClient.resume expects a SandlotSandboxSessionState")
        state.assert_path_grants_rebound()
        inner = SandlotSandboxSession(state, client=self._client)
        if state.durable:
            await inner._attach()  # the live sandbox, or a new one with the checkpoint
            reused = state.sandbox_id is not None and inner.sandbox.id == state.sandbox_id
            state.sandbox_id = inner.sandbox.id
            inner._set_start_state_preserved(True, system=reused)
        else:
            reused = False
            if state.sandbox_id is not None:
                try:
                    sandbox = await sandlot.AsyncSandbox.connect(
                        state.sandbox_id, client=self._client
                    )
                    reused = await sandbox.is_running()
                    inner._sandbox = sandbox if reused else None
                except SandlotError:
                    reused = False
            if not reused:
                state.workspace_root_ready = False
                await inner._attach()
            inner._set_start_state_preserved(reused)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    async def delete(self, session: SandboxSession) -> SandboxSession:
        """Release the sandbox (the SDK calls this at the end of every run). A durable
        session's workspace stays for a later resume: :meth:`delete_workspace` deletes it."""
        inner = session._inner
        if not isinstance(inner, SandlotSandboxSession):
            raise TypeError("SandlotSandboxClient.delete expects a SandlotSandboxSession")
        await inner._shutdown_backend()
        return session

    async def delete_workspace(self, state: SandboxSessionState) -> None:
        """Delete a durable session for good: its sandbox, checkpoints and transcript."""
        if not isinstance(state, SandlotSandboxSessionState) or state.sandlot_session_id is None:
            raise ValueError("delete_workspace needs the state of a durable sandlot session")
        session = await sandlot.AsyncSession.connect(state.sandlot_session_id, client=self._client)
        await session.delete()

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, SandlotSandboxSessionState)


async def _connect_session(
    state: SandlotSandboxSessionState, client: sandlot.Client | None
) -> sandlot.AsyncSession:
    if state.sandlot_session_id is None:
        raise WorkspaceStartError(
            path=Path(state.manifest.root), context={"reason": "no_sandlot_session"}
        )
    return await sandlot.AsyncSession.connect(state.sandlot_session_id, client=client)


async def _kill_quietly(process: _Process, *, cancel_watcher: bool = True) -> None:
    try:
        await process.handle.kill()
    except SandlotError:
        pass
    if cancel_watcher and process.watcher is not None:
        process.watcher.cancel()


def _endpoint(url: str) -> ExposedPortEndpoint | None:
    parts = urlsplit(url)
    if parts.path not in ("", "/") or not parts.hostname:
        return None
    tls = parts.scheme in ("https", "wss")
    return ExposedPortEndpoint(
        host=parts.hostname, port=parts.port or (443 if tls else 80), tls=tls
    )
