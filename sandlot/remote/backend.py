"""Remote mode: the sandbox lifecycle calls (create, connect, list, kill, timeout) over HTTP.

It offers the part of :class:`sandlot.manager.Manager` that :class:`~sandlot.AsyncSandbox`
uses, so the SDK's classes work unchanged against a server.
"""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..api import SandboxOut
from ..errors import InvalidArgumentError, SandboxNotFoundError
from ..manager import GcReport
from ..manager.ports import check_port
from ..models import DEFAULT_IDLE_TIMEOUT, SandboxInfo, SandboxSpec
from .channel import RemoteChannel
from .client import Client

if TYPE_CHECKING:
    from ..egress.policy import NetworkPolicy
    from ..manager.base import Live
    from ..models import NetworkMode
    from ..secrets.refs import SecretRef


@dataclass
class RemoteSide:
    """What the SDK asks of a sandbox's provider, answered by the server."""

    isolated: bool


@dataclass
class RemoteLive:
    info: SandboxOut
    channel: RemoteChannel
    provider: RemoteSide


class RemoteBackend:
    def __init__(self, client: Client) -> None:
        self.client = client

    def _live(self, answer: Any) -> RemoteLive:
        info = SandboxOut.model_validate(answer)
        return RemoteLive(info, RemoteChannel(self.client, info.id), RemoteSide(info.isolated))

    async def create(self, spec: SandboxSpec) -> RemoteLive:
        # Retried with one idempotency key: a retry after a lost answer gets the same sandbox.
        answer = await self.client.call(
            "POST",
            "/v1/sandboxes",
            json=spec_body(spec),
            headers={"Idempotency-Key": "create-" + uuid.uuid4().hex},
            retry=True,
            call_timeout=self.client.slow_call_timeout,  # may pull an image
        )
        return self._live(answer)

    async def connect(self, sandbox_id: str) -> RemoteLive:
        live = self._live(await self.client.call("GET", _path(sandbox_id)))
        if live.info.state != "running":
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is no longer running", id=sandbox_id)
        return live

    async def list_sandboxes(self, metadata: dict[str, str] | None) -> builtins.list[SandboxInfo]:
        params = [("metadata", f"{k}={v}") for k, v in (metadata or {}).items()]
        answer = await self.client.call("GET", "/v1/sandboxes", params=params)
        return [SandboxOut.model_validate(item) for item in answer]

    async def kill(self, sandbox_id: str) -> None:
        await self.client.call("DELETE", _path(sandbox_id))

    async def set_timeout(self, sandbox_id: str, seconds: float, channel: Any) -> datetime:
        answer = await self.client.call(
            "POST", _path(sandbox_id) + "/timeout", json={"seconds": seconds}, retry=True
        )
        return datetime.fromisoformat(answer["expires_at"])

    async def set_idle_timeout(self, sandbox_id: str, seconds: float | None, channel: Any) -> None:
        await self.client.call(
            "POST", _path(sandbox_id) + "/idle_timeout", json={"seconds": seconds}, retry=True
        )

    async def is_running(self, live: Live) -> bool:
        if live.channel.closed is not None:
            return False
        try:
            answer = await self.client.call("GET", _path(live.info.id))
        except SandboxNotFoundError:
            return False
        return bool(answer.get("state") == "running")

    async def expose(self, sandbox_id: str, port: int, channel: Any) -> str:
        check_port(port)
        answer = await self.client.call("POST", f"{_path(sandbox_id)}/ports/{port}", retry=True)
        return str(answer["url"])

    async def gc(self) -> GcReport:
        """The server collects its own garbage; nothing to do from a client."""
        return GcReport()

    async def set_network(
        self, sandbox_id: str, network: NetworkMode | NetworkPolicy, channel: Any
    ) -> None:
        body = network if isinstance(network, str) else network.model_dump(mode="json")
        await self.client.call(
            "PUT", _path(sandbox_id) + "/network", json={"network": body}, retry=True
        )

    async def egress_events(self, sandbox_id: str, after: int) -> builtins.list[dict[str, Any]]:
        answer = await self.client.call(
            "GET", _path(sandbox_id) + "/network/events", params={"after": str(after)}
        )
        return list(answer)

    async def pause(self, sandbox_id: str) -> None:
        slow = self.client.slow_call_timeout
        await self.client.call("POST", _path(sandbox_id) + "/pause", retry=True, call_timeout=slow)

    async def resume(self, sandbox_id: str) -> None:
        slow = self.client.slow_call_timeout
        await self.client.call("POST", _path(sandbox_id) + "/resume", retry=True, call_timeout=slow)

    async def is_paused(self, sandbox_id: str) -> bool:
        answer = await self.client.call("GET", _path(sandbox_id) + "/paused")
        return bool(answer["paused"])

    async def secret_values(self, sandbox_id: str) -> builtins.list[str]:
        return []  # the server resolves and masks them; they never reach this process

    async def command_env(
        self, sandbox_id: str, env: dict[str, str | SecretRef]
    ) -> tuple[dict[str, Any], builtins.list[str]]:
        """References travel as they are: the server resolves them with its tenant's."""
        return {k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in env.items()}, []


def spec_body(spec: SandboxSpec) -> dict[str, Any]:
    """A create body. The idle timeout goes only when it is not the default: a server older
    than idle timeouts refuses the field (a newer one applies the same default without it)."""
    body = spec.model_dump(mode="json")
    if spec.idle_timeout == DEFAULT_IDLE_TIMEOUT:
        del body["idle_timeout"]
    if spec.workspace_alias is None:
        del body["workspace_alias"]  # likewise: only a server that knows it gets it
    if not spec.binds:
        del body["binds"]
    if body.get("template") is None:
        body.pop("template", None)  # likewise
    return body


def _path(sandbox_id: str) -> str:
    if not isinstance(sandbox_id, str) or not sandbox_id:
        raise InvalidArgumentError("a sandbox id is a non-empty string")
    return "/v1/sandboxes/" + quote(sandbox_id, safe="")
