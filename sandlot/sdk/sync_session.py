"""The sync face of :class:`~sandlot.sdk.session.AsyncSession` (on the SDK's private loop)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..models import SandboxSpec, SessionEvent, SessionInfo
from .mirror import differs, mirror
from .sandbox import VolumesArg
from .session import CHECKPOINT_EVERY, LEASE_TTL, AsyncSession
from .sync import Sandbox, _portal

if TYPE_CHECKING:
    from ..remote import Client
    from ..workspace import CheckpointInfo


@mirror(AsyncSession)
class Session:
    """A durable session (sync). ``with s.sandbox() as sb:`` detaches (checkpoint, destroy)
    at the end. See :class:`~sandlot.sdk.session.AsyncSession`."""

    def __init__(self, inner: AsyncSession) -> None:
        self._inner = inner

    @property
    def id(self) -> str:
        """The session's id: give it to :meth:`connect` to reach it from elsewhere."""
        return self._inner.id

    @property
    def info(self) -> SessionInfo:
        """As last read (see :meth:`refresh`)."""
        return self._inner.info

    def __repr__(self) -> str:
        return f"<Session {self.id} workspace={self.info.workspace}>"

    @classmethod
    def create(
        cls,
        metadata: dict[str, str] | None = None,
        *,
        workspace_store: str = "local",
        idle_timeout: float | None = None,
        checkpoint_every: float | None = CHECKPOINT_EVERY,
        delete_after: datetime | float | None = None,
        volumes: VolumesArg = None,
        client: Client | None = None,
    ) -> Session:
        """A new session. ``workspace_store``: ``"local"`` (a folder in the state folder) or
        ``"s3://bucket/prefix"`` (endpoint and credentials from ``SANDLOT_S3_ENDPOINT`` and
        the usual ``AWS_*`` settings). ``idle_timeout``: seconds without a run after which
        its sandbox is checkpointed and stopped. ``checkpoint_every``: seconds between
        checkpoints while a sandbox is attached (default 300; None: only on detach and
        when asked). ``delete_after``: a time (or seconds from
        now) at which the session and its data are deleted. ``volumes``: named volumes
        every sandbox attached to it mounts, ``{"data": "/data"}`` or a list of
        ``{"name", "path", "mode"}`` (see docs/volumes.md)."""
        return cls(
            _portal.call(
                AsyncSession.create(
                    metadata,
                    workspace_store=workspace_store,
                    idle_timeout=idle_timeout,
                    checkpoint_every=checkpoint_every,
                    delete_after=delete_after,
                    volumes=volumes,
                    client=client,
                )
            )
        )

    @classmethod
    def find_or_create(
        cls,
        metadata: dict[str, str],
        *,
        workspace_store: str = "local",
        idle_timeout: float | None = None,
        checkpoint_every: float | None = CHECKPOINT_EVERY,
        delete_after: datetime | float | None = None,
        volumes: VolumesArg = None,
        client: Client | None = None,
    ) -> Session:
        """The caller's session whose metadata holds every pair of ``metadata``; if there is
        none, a new one made with that metadata (and the other arguments, as for
        :meth:`create`; they do not change a session that is found). When several match,
        the most recently used (its last run, else its last change) is taken.

        Embedded, finding and creating happen under a file lock in the state folder, so
        callers racing on this host make one session. Through a server, two callers racing
        may each create one (the next call then takes the most recently used)."""
        return cls(
            _portal.call(
                AsyncSession.find_or_create(
                    metadata,
                    workspace_store=workspace_store,
                    idle_timeout=idle_timeout,
                    checkpoint_every=checkpoint_every,
                    delete_after=delete_after,
                    volumes=volumes,
                    client=client,
                )
            )
        )

    @classmethod
    def connect(cls, session_id: str, *, client: Client | None = None) -> Session:
        """The session with this id (from any process)."""
        return cls(_portal.call(AsyncSession.connect(session_id, client=client)))

    @staticmethod
    def list(
        metadata: dict[str, str] | None = None, *, client: Client | None = None
    ) -> builtins.list[SessionInfo]:
        """The sessions (on this host, or the server's tenant's), optionally those whose
        metadata matches."""
        return _portal.call(AsyncSession.list(metadata, client=client))

    def refresh(self) -> SessionInfo:
        """Read the session's record again (its sandbox, last checkpoint, ...)."""
        return _portal.call(self._inner.refresh())

    @differs("a context manager: `with` where the async face has `async with` or `await`")
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
    ) -> _Attached:
        """Attach a sandbox: its /workspace holds the session's latest checkpoint, and
        every run in it goes in the session's transcript. ``with`` detaches at the end
        (checkpoint, then destroy); without it, :meth:`detach` ends it.

        ``reuse``: take the session's live sandbox if its spec matches exactly (else a
        busy error while another caller holds it). ``force``: a run of this sandbox
        cancels a run that holds the session's lock instead of failing with
        :class:`~sandlot.errors.SessionBusyError`. ``lease_ttl``: seconds the sandbox
        outlives this process's last heartbeat (sent every ``lease_ttl / 3``). ``idle_timeout``:
        seconds without any use (no command or cell running, no stream, no call) after which
        the sandbox is checkpointed and stopped (None: never; see docs/lifetimes.md).
        ``workspace_alias``: a second path of the workspace (see SandboxSpec). ``binds``:
        host paths mounted in this sandbox (see Bind; not kept by the session). ``volumes``:
        named volumes for this sandbox, beside those the session always mounts (see
        docs/volumes.md). ``template``: the template its root file system comes from."""
        attaching = self._inner.sandbox(
            provider,
            reuse=reuse,
            force=force,
            lease_ttl=lease_ttl,
            timeout=timeout,
            idle_timeout=idle_timeout,
            env=env,
            resources=resources,
            network=network,
            workspace_alias=workspace_alias,
            binds=binds,
            volumes=volumes,
            template=template,
            **config,
        )
        spec: SandboxSpec = attaching._args[0]
        inner = _portal.call(self._inner._attach(spec, reuse, force, lease_ttl))
        return _Attached(self, inner)

    def detach(self, sandbox: Sandbox, *, stop: bool = True) -> None:
        """Let go of an attached sandbox: checkpoint and destroy it, unless another holder
        still uses it or ``stop=False`` (it then stays for a later ``reuse=True``)."""
        _portal.call(self._inner.detach(sandbox._inner, stop=stop))

    def checkpoint(self) -> CheckpointInfo:
        """Save the attached sandbox's workspace now."""
        return _portal.call(self._inner.checkpoint())

    def events(self, after: int = 0, limit: int = 1000) -> builtins.list[SessionEvent]:
        """The transcript after sequence number ``after``, oldest first, across every
        sandbox the session has had."""
        return _portal.call(self._inner.events(after, limit))

    def follow(
        self, execution_id: str | None = None, *, after: int = 0, poll: float = 0.1
    ) -> Iterator[SessionEvent]:
        """The transcript from ``after`` on, then new events as they are written: catch
        up on a run you detached from (its id is in its ``started`` event) and follow it
        to its end (an ``exit`` or ``error`` event, where the iteration stops). Without
        ``execution_id``, every event, until you stop iterating."""
        events = self._inner.follow(execution_id, after=after, poll=poll)

        async def step() -> SessionEvent | None:
            try:
                return await events.__anext__()
            except StopAsyncIteration:
                return None

        while (event := _portal.call(step())) is not None:
            yield event

    def delete(self) -> None:
        """Stop its sandbox and delete its workspace, transcript and records."""
        _portal.call(self._inner.delete())


class _Attached(Sandbox):
    """A sandbox attached to a session: ``with`` detaches it rather than killing it."""

    def __init__(self, session: Session, inner: Any) -> None:
        super().__init__(inner)
        self._session = session

    def __enter__(self) -> _Attached:
        return self

    def __exit__(self, *exc: object) -> None:
        self._session.detach(self)
