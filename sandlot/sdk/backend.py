"""Where a sandbox's lifecycle is handled: the embedded manager, or a sandlot server.

An explicit ``client`` wins; else ``SANDLOT_URL`` selects remote mode; else the embedded
manager of the running event loop. The remote side (aiohttp) is imported only when used.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..manager import GcReport
from ..models import SandboxSpec

if TYPE_CHECKING:
    from ..egress.policy import NetworkPolicy
    from ..manager.base import Live
    from ..models import NetworkMode, SandboxInfo
    from ..remote import Client
    from ..secrets.refs import SecretRef


class Backend(Protocol):
    """The seam under :class:`~sandlot.sdk.sandbox.AsyncSandbox`: what it asks of the
    embedded :class:`~sandlot.manager.Manager` and of ``remote.backend.RemoteBackend``
    alike. ``channel`` arguments are the sandbox's own channel (or its stand-in)."""

    async def create(self, spec: SandboxSpec) -> Live: ...
    async def connect(self, sandbox_id: str) -> Live: ...
    async def list_sandboxes(self, metadata: dict[str, str] | None) -> list[SandboxInfo]: ...
    async def kill(self, sandbox_id: str) -> None: ...
    async def set_timeout(self, sandbox_id: str, seconds: float, channel: Any) -> datetime: ...
    async def set_idle_timeout(
        self, sandbox_id: str, seconds: float | None, channel: Any
    ) -> None: ...
    async def is_running(self, live: Live) -> bool: ...
    async def expose(self, sandbox_id: str, port: int, channel: Any) -> str: ...
    async def gc(self) -> GcReport: ...
    async def set_network(
        self, sandbox_id: str, network: NetworkMode | NetworkPolicy, channel: Any
    ) -> None: ...
    async def egress_events(self, sandbox_id: str, after: int) -> list[dict[str, Any]]: ...
    async def secret_values(self, sandbox_id: str) -> list[str]: ...
    async def pause(self, sandbox_id: str) -> None: ...
    async def resume(self, sandbox_id: str) -> None: ...
    async def is_paused(self, sandbox_id: str) -> bool: ...

    # The variables as the agent gets them (JSON values), and the secret values they use.
    async def command_env(
        self, sandbox_id: str, env: dict[str, str | SecretRef]
    ) -> tuple[dict[str, Any], list[str]]: ...


_from_env: dict[tuple[str, str], Client] = {}


def backend_for(client: Client | None) -> Backend:
    import os

    if client is None and os.environ.get("SANDLOT_URL"):
        key = (os.environ["SANDLOT_URL"], os.environ.get("SANDLOT_API_KEY", ""))
        client = _from_env.get(key)
        if client is None:
            from ..remote import Client

            client = _from_env[key] = Client()
    if client is not None:
        from ..remote.backend import RemoteBackend

        return RemoteBackend(client)
    from ..manager import Manager

    return Manager.current()


__all__ = ["Backend", "backend_for"]
