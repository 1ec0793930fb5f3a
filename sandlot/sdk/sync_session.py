"""The sync face of :class:`~sandlot.sdk.session.AsyncSession` (on the SDK's private loop)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..models import SandboxSpec, SessionEvent, SessionInfo
from .mirror import mirror
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
        return self._inner.id

    @property
    def info(self) -> SessionInfo:
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
        client: Client | None = None,
    ) -> Session:
        return cls(
            _portal.call(
                AsyncSession.create(
                    metadata,
                    workspace_store=workspace_store,
                    idle_timeout=idle_timeout,
                    checkpoint_every=checkpoint_every,
                    delete_after=delete_after,
                    client=client,
                )
            )
        )

    @classmethod
    def connect(cls, session_id: str, *, client: Client | None = None) -> Session:
        return cls(_portal.call(AsyncSession.connect(session_id, client=client)))

    @staticmethod
    def list(
        metadata: dict[str, str] | None = None, *, client: Client | None = None
    ) -> builtins.list[SessionInfo]:
        return _portal.call(AsyncSession.list(metadata, client=client))

    def refresh(self) -> SessionInfo:
        return _portal.call(self._inner.refresh())

    def sandbox(
        self,
        provider: str | None = None,
        *,
        reuse: bool = False,
        force: bool = False,
        lease_ttl: float = LEASE_TTL,
        timeout: float = 3600,
        env: dict[str, Any] | None = None,
        resources: Any = None,
        network: Any = "none",
        **config: Any,
    ) -> _Attached:
        """Attach a sandbox: its /workspace holds the session's latest checkpoint, and
        every run in it goes in the session's transcript. ``with`` detaches at the end
        (checkpoint, then destroy); without it, :meth:`detach` ends it.

        ``reuse``: take the session's live sandbox if its spec matches exactly (else a
        busy error while another caller holds it). ``force``: a run of this sandbox
        cancels a run that holds the session's lock instead of failing with
        :class:`~sandlot.errors.SessionBusyError`. ``lease_ttl``: seconds the sandbox
        outlives this process's last heartbeat (sent every ``lease_ttl / 3``)."""
        attaching = self._inner.sandbox(
            provider,
            reuse=reuse,
            force=force,
            lease_ttl=lease_ttl,
            timeout=timeout,
            env=env,
            resources=resources,
            network=network,
            **config,
        )
        spec: SandboxSpec = attaching._args[0]
        inner = _portal.call(self._inner._attach(spec, reuse, force, lease_ttl))
        return _Attached(self, inner)

    def detach(self, sandbox: Sandbox, *, stop: bool = True) -> None:
        _portal.call(self._inner.detach(sandbox._inner, stop=stop))

    def checkpoint(self) -> CheckpointInfo:
        return _portal.call(self._inner.checkpoint())

    def events(self, after: int = 0, limit: int = 1000) -> builtins.list[SessionEvent]:
        return _portal.call(self._inner.events(after, limit))

    def follow(
        self, execution_id: str | None = None, *, after: int = 0, poll: float = 0.1
    ) -> Iterator[SessionEvent]:
        events = self._inner.follow(execution_id, after=after, poll=poll)

        async def step() -> SessionEvent | None:
            try:
                return await events.__anext__()
            except StopAsyncIteration:
                return None

        while (event := _portal.call(step())) is not None:
            yield event

    def delete(self) -> None:
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
