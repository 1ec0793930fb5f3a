"""AsyncSandbox: the one implementation. :class:`sandlot.Sandbox` wraps it for sync code."""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import ValidationError

from ..egress.bridge_config import BridgeConfig
from ..egress.policy import NetworkPolicy
from ..errors import CodeContextNotFoundError, InvalidArgumentError, SandboxNotFoundError
from ..manager import GcReport
from ..models import (
    DEFAULT_IDLE_TIMEOUT,
    Bind,
    CodeContext,
    CodeEvent,
    CommandResult,
    Execution,
    NetworkMode,
    Resources,
    SandboxInfo,
    SandboxSpec,
    VolumeMount,
    check_seconds,
    describe,
)
from ..secrets.refs import SecretRef
from . import code as code_ops
from .backend import Backend, backend_for
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
from .commands import AsyncCommands
from .files import AsyncFiles
from .pty import AsyncPty

if TYPE_CHECKING:
    from ..channel.base import ChannelLike
    from ..manager.base import Live
    from ..remote import Client


def build_spec(
    provider: str | None,
    timeout: float,
    env: dict[str, Any] | None,
    metadata: dict[str, str] | None,
    resources: Resources | dict[str, Any] | None,
    workdir: str,
    config: dict[str, Any],
    network: Any = "none",
    bridge: Any = None,
    idle_timeout: Any = DEFAULT_IDLE_TIMEOUT,
    workspace_alias: str | None = None,
    binds: Sequence[Bind | dict[str, Any]] | None = None,
    *,
    volumes: VolumesArg = None,
    template: str | None = None,
) -> SandboxSpec:
    try:
        return SandboxSpec(
            provider=provider,
            timeout=timeout,
            idle_timeout=idle_timeout,
            env=env or {},
            metadata=metadata or {},
            resources=resources or Resources(),
            workdir=workdir,
            workspace_alias=workspace_alias,
            binds=_bind_list(binds),
            volumes=volume_list(volumes),
            template=template,
            network=network if network is not None else "none",
            bridge=bridge,
            config=config,
        )
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, "sandbox settings")) from None


def _bind_list(binds: Any) -> builtins.list[Any]:
    """``binds`` as a list; a lone path or bind is a mistake (a string would be taken apart
    into one bad bind per character)."""
    if binds is None:
        return []
    if isinstance(binds, (str, bytes, dict, Bind)):
        raise InvalidArgumentError(
            "binds must be a list of binds, each {'host': PATH, 'path': PATH, 'mode': 'ro' or 'rw'}"
        )
    return list(binds)


VolumesArg = Mapping[str, str] | Sequence[VolumeMount | dict[str, Any]] | None


def volume_list(volumes: Any) -> builtins.list[Any]:
    """``volumes`` as a list of mounts: ``{"data": "/data"}`` (name to path, read-write) or
    a list of :class:`VolumeMount` or ``{"name", "path", "mode"}`` dicts."""
    if volumes is None:
        return []
    if isinstance(volumes, Mapping):
        if set(volumes) >= {"name", "path"}:
            raise InvalidArgumentError(
                "volumes is {NAME: PATH} or a list of {'name': NAME, 'path': PATH, 'mode': "
                "'rw' or 'ro'}; one mount on its own is neither"
            )
        return [{"name": name, "path": path} for name, path in volumes.items()]
    if isinstance(volumes, (str, bytes, VolumeMount)):
        raise InvalidArgumentError("volumes is {NAME: PATH} or a list of VolumeMount")
    return list(volumes)


class AsyncSandbox:
    """An isolated computer: ``sb.commands`` runs programs, ``sb.files`` moves data,
    ``sb.pty`` opens terminals.

    ``async with await AsyncSandbox.create() as sb`` (or ``async with AsyncSandbox.create()``)
    kills the sandbox on exit; :meth:`close` only drops this process's connection.
    """

    commands: AsyncCommands
    files: AsyncFiles
    pty: AsyncPty

    def __init__(self, manager: Backend, live: Live) -> None:
        self._manager = manager
        self._live = live
        self._channel: ChannelLike = live.channel  # runs and operations go through it
        self.commands = AsyncCommands(self)
        self.pty = AsyncPty(self)
        self.files = AsyncFiles(self)

    @property
    def id(self) -> str:
        """The sandbox's id: give it to :meth:`connect` to reach it from elsewhere."""
        return self._live.info.id

    @property
    def info(self) -> SandboxInfo:
        """Its record: provider, metadata, creation and expiry times."""
        return self._live.info

    @property
    def provider(self) -> str:
        """The name of the provider that runs it (``"bwrap"``, ``"docker"``, ...)."""
        return self._live.info.provider

    @property
    def isolated(self) -> bool:
        """Whether it runs isolated from the host: False with the ``process`` provider, and
        on an ssh host that runs it without bubblewrap."""
        # Some providers decide per sandbox (ssh: bwrap on the far host, or not): the
        # handle says so then; otherwise the provider's kind does.
        handle = getattr(self._live.info, "handle", None) or {}
        per_sandbox = handle.get("isolated")
        return per_sandbox if isinstance(per_sandbox, bool) else self._live.provider.isolated

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id} provider={self.provider}>"

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
    ) -> _Creating:
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
        return _Creating(cls._create(spec, client))

    @classmethod
    async def _create(cls, spec: SandboxSpec, client: Client | None) -> AsyncSandbox:
        backend = backend_for(client)
        return cls(backend, await backend.create(spec))

    @classmethod
    async def connect(cls, sandbox_id: str, *, client: Client | None = None) -> AsyncSandbox:
        """Attach to a running sandbox, also one created by another process."""
        backend = backend_for(client)
        return cls(backend, await backend.connect(sandbox_id))

    @staticmethod
    async def list(
        metadata: dict[str, str] | None = None, *, client: Client | None = None
    ) -> list[SandboxInfo]:
        """Running sandboxes (on this host, or the server's), optionally those whose
        metadata matches."""
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidArgumentError("metadata must be a dict of strings")
        return await backend_for(client).list_sandboxes(metadata)

    @staticmethod
    async def gc(*, client: Client | None = None) -> GcReport:
        """Remove what crashed processes left behind (also runs when a manager starts).
        A server collects its own: in remote mode this does nothing."""
        return await backend_for(client).gc()

    async def kill(self) -> bool:
        """Destroy the sandbox and everything running in it. False if it was already gone."""
        try:
            await self._manager.kill(self.id)
        except SandboxNotFoundError:
            self._channel.close()
            return False
        return True

    async def expose(self, port: int) -> str:
        """A URL that reaches ``port`` inside the sandbox (HTTP, WebSocket, any TCP), though
        the sandbox's own network stays off: the connection rides the agent's channel.

        Embedded, ``http://127.0.0.1:N`` with N from a pool (``SANDLOT_PORT_RANGE``,
        default 30000-30999), released when the sandbox is killed. Through a server, a path
        under ``/v1/sandboxes/{id}/ports/{port}/`` that needs the tenant's key."""
        return await self._manager.expose(self.id, port, self._live.channel)

    async def set_network(
        self,
        network: NetworkMode | NetworkPolicy | dict[str, Any] | None = None,
        *,
        allow: builtins.list[str] | None = None,
        resolve: dict[str, str | builtins.list[str]] | None = None,
    ) -> None:
        """Change what the sandbox may reach, while it runs: ``set_network(allow=[...])``,
        or ``set_network("none")``. The next connection obeys it; code inside the sandbox
        cannot change it. Commands started afterwards get the proxy variables."""
        if allow is not None:
            if network is not None:
                raise InvalidArgumentError("give either a network or allow=, not both")
            network = {"allow": allow, "resolve": resolve or {}}
        elif network is None:
            raise InvalidArgumentError("set_network needs allow=[...] or a network")
        checked = _check_network(network)
        await self._manager.set_network(self.id, checked, self._live.channel)

    async def network_events(self, after: int = 0) -> builtins.list[dict[str, Any]]:
        """Every connection the sandbox made through its proxy or bridge, allowed or
        refused, oldest first: ``{"id", "created_at", "kind", "host", "port", "verdict",
        ...}``. ``after``: the last ``id`` already seen."""
        return await self._manager.egress_events(self.id, after)

    async def pause(self) -> None:
        """Freeze everything in the sandbox where it stands (bwrap: the cgroup freezer;
        docker: pause; process: SIGSTOP) until :meth:`resume`: it costs no CPU meanwhile,
        and a running command carries on afterwards with its output complete. The agent
        does not answer while paused. Its lifetime keeps running."""
        await self._manager.pause(self.id)

    async def resume(self) -> None:
        """Let a sandbox frozen by :meth:`pause` run on."""
        await self._manager.resume(self.id)

    async def is_paused(self) -> bool:
        """Whether the sandbox is frozen by :meth:`pause`."""
        return await self._manager.is_paused(self.id)

    async def set_timeout(self, seconds: float) -> datetime:
        """Destroy the sandbox ``seconds`` from now instead of at its old deadline."""
        if seconds is None:
            raise InvalidArgumentError("timeout must be a positive number of seconds")
        checked = check_seconds(seconds)
        assert checked is not None
        expires = await self._manager.set_timeout(self.id, checked, self._live.channel)
        self._live.info.expires_at = expires
        return expires

    async def set_idle_timeout(self, seconds: float | None) -> None:
        """Stop the sandbox once nothing has used it for ``seconds`` (None: never), counted
        from now (this call is a use). Its hard lifetime (:meth:`set_timeout`) stays."""
        checked = check_seconds(seconds, "idle_timeout")
        await self._manager.set_idle_timeout(self.id, checked, self._live.channel)
        self._live.info.idle_timeout = checked

    # -- stateful code -----------------------------------------------------------------------

    @overload
    async def run_code(
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
    async def run_code(
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
    ) -> AsyncExecutionHandle: ...

    async def run_code(
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
    ) -> Execution | AsyncExecutionHandle:
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
        yet makes one (not persistent) on this first run."""
        return await code_ops.run_code(
            self._channel,
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
            secrets=await self._manager.secret_values(self.id),
        )

    def run_code_stream(
        self,
        code: str,
        *,
        context: ContextRef = None,
        timeout: float | None = DEFAULT_CODE_TIMEOUT,
        inactivity_timeout: float | None = None,
        max_output_bytes: int = MAX_CELL_OUTPUT_BYTES,
        interrupt_grace: float = DEFAULT_INTERRUPT_GRACE,
    ) -> AsyncGenerator[CodeEvent, None]:
        """:meth:`run_code` as events: ``async for event in sb.run_code_stream(code)`` (a plain
        ``for`` on the sync :class:`Sandbox`) yields
        :class:`OutputEvent` (stdout/stderr chunks), :class:`ResultEvent` and
        :class:`ProgressEvent` as they happen, then one :class:`EndEvent` with the
        :class:`Execution`, or the error (a timeout's error and its partial execution).

        Leaving the loop early interrupts the cell (the context keeps its state); use
        ``contextlib.aclosing(...)`` to have that done before the next line runs."""
        cid = code_ops.context_id(context)

        async def run(**callbacks: Any) -> Execution:
            return await self.run_code(
                code,
                context=cid,
                timeout=timeout,
                inactivity_timeout=inactivity_timeout,
                max_output_bytes=max_output_bytes,
                interrupt_grace=interrupt_grace,
                **callbacks,
            )

        return code_ops.stream_code(run, lambda: self.interrupt_code(cid))

    async def get_code_context(self, context: ContextRef = None) -> CodeContext:
        """A context by its id or name (:class:`CodeContextNotFoundError` if there is none)."""
        cid = code_ops.context_id(context)
        for item in await self.list_code_contexts():
            if cid in (item.id, item.name):
                return item
        raise CodeContextNotFoundError(f"no code context {cid!r}")

    async def create_code_context(
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
        return await code_ops.create_context(
            self._channel,
            cwd=cwd,
            env=env,
            name=name,
            persist=persist,
            setup=setup,
            cwd_on_path=cwd_on_path,
        )

    async def list_code_contexts(self) -> builtins.list[CodeContext]:
        """The sandbox's code contexts; the default one appears once it is first used."""
        return await code_ops.list_contexts(self._channel)

    async def restart_code_context(
        self, context: ContextRef = None, *, forget_state: bool = False
    ) -> CodeContext:
        """Start the context over in a new process. The namespace is empty, except that a
        persistent context reloads its saved state, unless ``forget_state=True`` deletes
        that first (a full reset)."""
        return await code_ops.restart_context(self._channel, context, forget_state)

    async def remove_code_context(self, context: ContextRef) -> None:
        """Stop the context's process and forget it."""
        await code_ops.remove_context(self._channel, context)

    async def interrupt_code(self, context: ContextRef = None) -> bool:
        """Interrupt the cell running in a context. False if none was running."""
        return await code_ops.interrupt_context(self._channel, context)

    async def install(
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
        return await code_ops.install(
            self._channel,
            packages,
            upgrade=upgrade,
            index_url=index_url,
            timeout=timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    async def is_running(self) -> bool:
        """Whether the sandbox is still alive and this connection to it open."""
        return await self._manager.is_running(self._live)

    async def close(self) -> None:
        """Drop this connection; the sandbox keeps running until killed or timed out."""
        self._channel.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()


def _check_network(network: Any) -> NetworkMode | NetworkPolicy:
    try:
        return SandboxSpec(network=network).network
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, "network settings")) from None


class _Creating:
    """Lets ``AsyncSandbox.create()`` be awaited or used directly in ``async with``."""

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self._sandbox: AsyncSandbox | None = None

    def __await__(self) -> Any:
        return self._coro.__await__()

    async def __aenter__(self) -> AsyncSandbox:
        self._sandbox = await self._coro
        return self._sandbox

    async def __aexit__(self, *exc: object) -> None:
        if self._sandbox is not None:
            await self._sandbox.kill()
