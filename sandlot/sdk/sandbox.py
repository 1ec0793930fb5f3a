"""AsyncSandbox: the one implementation. :class:`sandlot.Sandbox` wraps it for sync code."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidArgumentError, SandboxNotFoundError
from ..manager import GcReport, LiveSandbox, Manager
from ..models import Resources, SandboxInfo, SandboxSpec, describe
from .commands import AsyncCommands
from .files import AsyncFiles


def build_spec(
    provider: str | None,
    timeout: float,
    env: dict[str, str] | None,
    metadata: dict[str, str] | None,
    resources: Resources | dict[str, Any] | None,
    workdir: str,
    config: dict[str, Any],
) -> SandboxSpec:
    try:
        return SandboxSpec(
            provider=provider,
            timeout=timeout,
            env=env or {},
            metadata=metadata or {},
            resources=resources or Resources(),
            workdir=workdir,
            config=config,
        )
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, "sandbox settings")) from None


class AsyncSandbox:
    """An isolated computer: ``sb.commands`` runs programs, ``sb.files`` moves data.

    ``async with await AsyncSandbox.create() as sb`` (or ``async with AsyncSandbox.create()``)
    kills the sandbox on exit; :meth:`close` only drops this process's connection.
    """

    def __init__(self, manager: Manager, live: LiveSandbox) -> None:
        self._manager = manager
        self._live = live
        self._channel = live.channel
        self.commands = AsyncCommands(self)
        self.files = AsyncFiles(self)

    @property
    def id(self) -> str:
        return self._live.info.id

    @property
    def info(self) -> SandboxInfo:
        return self._live.info

    @property
    def provider(self) -> str:
        return self._live.info.provider

    @property
    def isolated(self) -> bool:
        return self._live.provider.isolated

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id} provider={self.provider}>"

    @classmethod
    def create(
        cls,
        provider: str | None = None,
        *,
        timeout: float = 300,
        env: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        resources: Resources | dict[str, Any] | None = None,
        workdir: str = "/workspace",
        **config: Any,
    ) -> _Creating:
        """Create a sandbox (default provider: bwrap). Extra keyword arguments are the
        provider's own settings, validated by its config model."""
        spec = build_spec(provider, timeout, env, metadata, resources, workdir, config)
        return _Creating(cls._create(spec))

    @classmethod
    async def _create(cls, spec: SandboxSpec) -> AsyncSandbox:
        manager = Manager.current()
        return cls(manager, await manager.create(spec))

    @classmethod
    async def connect(cls, sandbox_id: str) -> AsyncSandbox:
        """Attach to a running sandbox, also one created by another process."""
        manager = Manager.current()
        return cls(manager, await manager.connect(sandbox_id))

    @staticmethod
    async def list(metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
        """Running sandboxes on this host, optionally those whose metadata matches."""
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidArgumentError("metadata must be a dict of strings")
        return Manager.current().list(metadata)

    @staticmethod
    async def gc() -> GcReport:
        """Remove what crashed processes left behind (also runs when a manager starts)."""
        return await Manager.current().gc()

    async def kill(self) -> bool:
        """Destroy the sandbox and everything running in it. False if it was already gone."""
        try:
            await self._manager.kill(self.id)
        except SandboxNotFoundError:
            self._channel.close()
            return False
        return True

    async def set_timeout(self, seconds: float) -> datetime:
        """Destroy the sandbox ``seconds`` from now instead of at its old deadline."""
        expires = await self._manager.set_timeout(self.id, seconds, self._channel)
        self._live.info.expires_at = expires
        return expires

    async def is_running(self) -> bool:
        return self._channel.closed is None and self._live.provider.is_alive(self.info.handle)

    async def close(self) -> None:
        """Drop this connection; the sandbox keeps running until killed or timed out."""
        self._channel.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()


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
