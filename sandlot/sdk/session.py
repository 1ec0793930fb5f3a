"""AsyncSession: a durable session (workspace, transcript, code state) that sandboxes attach to.

    s = await AsyncSession.create(metadata={"user": "ana"})
    async with s.sandbox(provider="bwrap") as sb:        # /workspace restored
        await sb.commands.run("echo x > /workspace/note")
    # detached: the workspace was checkpointed and the sandbox destroyed
    async with s.sandbox(provider="docker", image="...") as sb:
        await sb.files.read("/workspace/note")           # 'x\\n'
    await s.events(after=0)                              # the whole transcript, in order

Embedded (the default), sessions are kept in the state folder's ``server.db``; with a
``client`` (or ``SANDLOT_URL``), on that sandlot server.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import os
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InvalidArgumentError
from ..models import SandboxSpec, SessionEvent, SessionInfo
from .sandbox import AsyncSandbox, VolumesArg, build_spec, volume_list

if TYPE_CHECKING:
    from ..manager.sessions import Sessions
    from ..remote import Client
    from ..workspace import CheckpointInfo

LEASE_TTL = 30.0
CHECKPOINT_EVERY = 300.0


class SessionBackend(Protocol):
    """Where sessions are kept and sandboxes attached: this host, or a sandlot server."""

    async def create_session(
        self, metadata: dict[str, str], settings: dict[str, Any]
    ) -> SessionInfo: ...
    async def get_session(self, session_id: str) -> SessionInfo: ...
    async def list_sessions(
        self, metadata: dict[str, str] | None
    ) -> builtins.list[SessionInfo]: ...
    async def delete_session(self, session_id: str) -> None: ...
    async def session_events(
        self, session_id: str, after: int, limit: int
    ) -> builtins.list[SessionEvent]: ...
    async def checkpoint(self, session_id: str) -> CheckpointInfo: ...
    async def attach(
        self, session_id: str, spec: SandboxSpec, *, reuse: bool, force: bool, lease_ttl: float
    ) -> tuple[AsyncSandbox, str]: ...
    async def detach(self, session_id: str, lease_id: str, *, stop: bool) -> None: ...


class EmbeddedSessions:
    """Sessions on this host (``server.db`` in the state folder), for the local tenant."""

    def __init__(self, sessions: Sessions) -> None:
        from ..store.keys import LOCAL_TENANT

        self.sessions = sessions
        self.tenant = LOCAL_TENANT

    @classmethod
    async def current(cls) -> EmbeddedSessions:
        from ..manager.sessions import Sessions

        return cls(await Sessions.local())

    async def create_session(
        self, metadata: dict[str, str], settings: dict[str, Any]
    ) -> SessionInfo:
        return _info(await self.sessions.create(self.tenant, metadata, **settings))

    async def get_session(self, session_id: str) -> SessionInfo:
        return _info(await self.sessions.get(session_id, self.tenant))

    async def list_sessions(self, metadata: dict[str, str] | None) -> builtins.list[SessionInfo]:
        return [_info(r) for r in await self.sessions.list(self.tenant, metadata)]

    async def delete_session(self, session_id: str) -> None:
        await self.sessions.delete(session_id, self.tenant)

    async def session_events(
        self, session_id: str, after: int, limit: int
    ) -> builtins.list[SessionEvent]:
        found = await self.sessions.events(session_id, after, limit, self.tenant)
        return [SessionEvent.of(e.seq, e.kind, e.execution_id, e.data, e.created_at) for e in found]

    async def checkpoint(self, session_id: str) -> CheckpointInfo:
        return await self.sessions.checkpoint(session_id, self.tenant)

    async def attach(
        self, session_id: str, spec: SandboxSpec, *, reuse: bool, force: bool, lease_ttl: float
    ) -> tuple[AsyncSandbox, str]:
        from ..manager.recorder import RecordingChannel
        from ..manager.sessions import holder_name

        holder = holder_name()
        attached = await self.sessions.attach(
            session_id, spec, tenant=self.tenant, holder=holder, reuse=reuse, lease_ttl=lease_ttl
        )
        manager = self.sessions.manager
        sandbox = AsyncSandbox(manager, attached.live)
        secrets = await manager.secret_values(sandbox.id)
        sandbox._channel = RecordingChannel(
            attached.live.channel,
            self.sessions,
            session_id,
            sandbox.id,
            holder=holder,
            force=force,
            secrets=secrets,
        )
        return sandbox, attached.lease_id

    async def detach(self, session_id: str, lease_id: str, *, stop: bool) -> None:
        await self.sessions.detach(session_id, lease_id, stop=stop)


async def sessions_for(client: Client | None) -> SessionBackend:
    if client is None and os.environ.get("SANDLOT_URL"):
        from .backend import backend_for

        backend = backend_for(None)
        client = getattr(backend, "client", None)
    if client is not None:
        from ..remote.sessions import RemoteSessions

        return RemoteSessions(client)
    return await EmbeddedSessions.current()


def _check_metadata(metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArgumentError("metadata must be a dict of strings")
    return dict(metadata)


def _last_used(info: SessionInfo) -> tuple[datetime, datetime, str]:
    return (info.last_active_at or info.updated_at, info.created_at, info.id)


@contextlib.asynccontextmanager
async def _creation_lock(backend: SessionBackend) -> AsyncIterator[None]:
    """Embedded: an exclusive lock on ``sessions.lock`` in the state folder (processes and
    threads of this host); through a server, none."""
    if not isinstance(backend, EmbeddedSessions):
        yield
        return
    path = os.path.join(backend.sessions.manager.home, "sessions.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)  # held briefly by others
        yield
    finally:
        os.close(fd)  # releases the lock


def _info(record: Any) -> SessionInfo:
    """A session store's record as the SDK shows it."""
    if isinstance(record, SessionInfo):
        return record
    return SessionInfo.model_validate(record.model_dump())


def _settings(
    workspace_store: str,
    idle_timeout: float | None,
    checkpoint_every: float | None,
    delete_after: datetime | float | None,
    volumes: VolumesArg = None,
) -> dict[str, Any]:
    """A new session's settings, as the backends take them."""
    settings: dict[str, Any] = {
        "workspace": workspace_store,
        "idle_timeout": idle_timeout,
        "checkpoint_every": checkpoint_every,
        "delete_after": delete_after,
    }
    if volumes:
        settings["volumes"] = volume_list(volumes)
    return settings


class AsyncSession:
    """A durable session. Attach sandboxes with :meth:`sandbox`; read its transcript with
    :meth:`events`; save its workspace now with :meth:`checkpoint`."""

    def __init__(self, backend: SessionBackend, info: SessionInfo) -> None:
        self._backend = backend
        self._info = info

    @property
    def id(self) -> str:
        """The session's id: give it to :meth:`connect` to reach it from elsewhere."""
        return self._info.id

    @property
    def info(self) -> SessionInfo:
        """As last read (see :meth:`refresh`)."""
        return self._info

    def __repr__(self) -> str:
        return f"<AsyncSession {self.id} workspace={self._info.workspace}>"

    @classmethod
    async def create(
        cls,
        metadata: dict[str, str] | None = None,
        *,
        workspace_store: str = "local",
        idle_timeout: float | None = None,
        checkpoint_every: float | None = CHECKPOINT_EVERY,
        delete_after: datetime | float | None = None,
        volumes: VolumesArg = None,
        client: Client | None = None,
    ) -> AsyncSession:
        """A new session. ``workspace_store``: ``"local"`` (a folder in the state folder) or
        ``"s3://bucket/prefix"`` (endpoint and credentials from ``SANDLOT_S3_ENDPOINT`` and
        the usual ``AWS_*`` settings). ``idle_timeout``: seconds without a run after which
        its sandbox is checkpointed and stopped. ``checkpoint_every``: seconds between
        checkpoints while a sandbox is attached (default 300; None: only on detach and
        when asked). ``delete_after``: a time (or seconds from
        now) at which the session and its data are deleted. ``volumes``: named volumes
        every sandbox attached to it mounts, ``{"data": "/data"}`` or a list of
        ``{"name", "path", "mode"}`` (see docs/volumes.md)."""
        settings = _settings(workspace_store, idle_timeout, checkpoint_every, delete_after, volumes)
        backend = await sessions_for(client)
        return cls(backend, await backend.create_session(_check_metadata(metadata), settings))

    @classmethod
    async def find_or_create(
        cls,
        metadata: dict[str, str],
        *,
        workspace_store: str = "local",
        idle_timeout: float | None = None,
        checkpoint_every: float | None = CHECKPOINT_EVERY,
        delete_after: datetime | float | None = None,
        volumes: VolumesArg = None,
        client: Client | None = None,
    ) -> AsyncSession:
        """The caller's session whose metadata holds every pair of ``metadata``; if there is
        none, a new one made with that metadata (and the other arguments, as for
        :meth:`create`; they do not change a session that is found). When several match,
        the most recently used (its last run, else its last change) is taken.

        Embedded, finding and creating happen under a file lock in the state folder, so
        callers racing on this host make one session. Through a server, two callers racing
        may each create one (the next call then takes the most recently used)."""
        wanted = _check_metadata(metadata)
        if not wanted:
            raise InvalidArgumentError("find_or_create needs metadata to find the session by")
        settings = _settings(workspace_store, idle_timeout, checkpoint_every, delete_after, volumes)
        backend = await sessions_for(client)
        async with _creation_lock(backend):
            found = await backend.list_sessions(wanted)  # every pair held (the store's filter)
            if found:
                return cls(backend, max(found, key=_last_used))
            return cls(backend, await backend.create_session(wanted, settings))

    @classmethod
    async def connect(cls, session_id: str, *, client: Client | None = None) -> AsyncSession:
        """The session with this id (from any process)."""
        backend = await sessions_for(client)
        return cls(backend, await backend.get_session(session_id))

    @staticmethod
    async def list(
        metadata: dict[str, str] | None = None, *, client: Client | None = None
    ) -> builtins.list[SessionInfo]:
        """The sessions (on this host, or the server's tenant's), optionally those whose
        metadata matches."""
        backend = await sessions_for(client)
        return await backend.list_sessions(_check_metadata(metadata) or None)

    async def refresh(self) -> SessionInfo:
        """Read the session's record again (its sandbox, last checkpoint, ...)."""
        self._info = await self._backend.get_session(self.id)
        return self._info

    def sandbox(
        self,
        provider: str | None = None,
        *,
        reuse: bool = False,
        force: bool = False,
        lease_ttl: float = LEASE_TTL,
        timeout: float = 3600,
        idle_timeout: float | None = 600,
        env: dict[str, Any] | None = None,
        resources: Any = None,
        network: Any = "none",
        workspace_alias: str | None = None,
        binds: builtins.list[Any] | None = None,
        volumes: VolumesArg = None,
        template: str | None = None,
        **config: Any,
    ) -> _Attaching:
        """Attach a sandbox: its /workspace holds the session's latest checkpoint, and
        every run in it goes in the session's transcript. ``async with`` detaches at the
        end (checkpoint, then destroy); awaiting it returns the sandbox, and
        :meth:`detach` ends it.

        ``reuse``: take the session's live sandbox if its spec matches exactly (else a
        busy error while another caller holds it). ``force``: a run of this sandbox
        cancels a run that holds the session's lock instead of failing with
        :class:`~sandlot.errors.SessionBusyError`. ``lease_ttl``: seconds the sandbox
        outlives this process's last heartbeat (sent every ``lease_ttl / 3``). ``idle_timeout``:
        seconds without any use (no command or cell running, no stream, no call) after which
        the sandbox is checkpointed and stopped (None: never; see docs/lifetimes.md).
        ``workspace_alias``: a second path of the workspace (see SandboxSpec). ``binds``:
        host paths mounted in this sandbox (see Bind): the session does not keep them, so
        pass them to each sandbox; they are not part of its checkpoints. ``volumes``: named
        volumes for this sandbox, beside those the session always mounts (see
        docs/volumes.md). ``template``: the template its root file system comes from."""
        spec = build_spec(
            provider, timeout, env, None, resources, "/workspace", config, network, None,
            idle_timeout, workspace_alias, binds, volumes=volumes, template=template,
        )  # fmt: skip
        return _Attaching(self, spec, reuse, force, lease_ttl)

    async def _attach(
        self, spec: SandboxSpec, reuse: bool, force: bool, lease_ttl: float
    ) -> AsyncSandbox:
        sandbox, lease_id = await self._backend.attach(
            self.id, spec, reuse=bool(reuse), force=bool(force), lease_ttl=lease_ttl
        )
        sandbox._lease = (self.id, lease_id)  # type: ignore[attr-defined]
        return sandbox

    async def detach(self, sandbox: AsyncSandbox, *, stop: bool = True) -> None:
        """Let go of an attached sandbox: checkpoint and destroy it, unless another holder
        still uses it or ``stop=False`` (it then stays for a later ``reuse=True``)."""
        lease = getattr(sandbox, "_lease", None)
        if lease is None or lease[0] != self.id:
            raise InvalidArgumentError(f"{sandbox!r} is not attached to session {self.id}")
        await self._backend.detach(self.id, lease[1], stop=stop)
        sandbox._channel.close()

    async def checkpoint(self) -> CheckpointInfo:
        """Save the attached sandbox's workspace now."""
        return await self._backend.checkpoint(self.id)

    async def events(self, after: int = 0, limit: int = 1000) -> builtins.list[SessionEvent]:
        """The transcript after sequence number ``after``, oldest first, across every
        sandbox the session has had."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError("limit must be a positive integer")
        return await self._backend.session_events(self.id, after, limit)

    async def follow(
        self, execution_id: str | None = None, *, after: int = 0, poll: float = 0.1
    ) -> AsyncGenerator[SessionEvent, None]:
        """The transcript from ``after`` on, then new events as they are written: catch
        up on a run you detached from (its id is in its ``started`` event) and follow it
        to its end (an ``exit`` or ``error`` event, where the iteration stops). Without
        ``execution_id``, every event, until you stop iterating."""
        while True:
            batch = await self.events(after)
            for event in batch:
                after = event.seq
                if execution_id is not None and event.execution_id != execution_id:
                    continue
                yield event
                if execution_id is not None and event.kind in ("exit", "error"):
                    return
            if not batch:
                await asyncio.sleep(poll)

    async def delete(self) -> None:
        """Stop its sandbox and delete its workspace, transcript and records."""
        await self._backend.delete_session(self.id)


class _Attaching:
    """Lets ``session.sandbox()`` be awaited or used in ``async with`` (detach on exit)."""

    def __init__(
        self, session: AsyncSession, spec: SandboxSpec, reuse: bool, force: bool, ttl: float
    ) -> None:
        self._session = session
        self._args = (spec, reuse, force, ttl)
        self._sandbox: AsyncSandbox | None = None

    def __await__(self) -> Any:
        return self._session._attach(*self._args).__await__()

    async def __aenter__(self) -> AsyncSandbox:
        self._sandbox = await self._session._attach(*self._args)
        return self._sandbox

    async def __aexit__(self, *exc: object) -> None:
        if self._sandbox is not None:
            await self._session.detach(self._sandbox)
