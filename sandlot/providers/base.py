"""The provider interface: where a sandbox runs. The agent decides what runs in it.

A provider creates the isolation, starts the agent inside it, hands back a connected channel,
and destroys it. Everything a provider needs to find its sandbox again (from another process,
or after a crash) goes into the *handle*, a JSON-able dict stored with the sandbox's record.
Third parties add providers through the ``sandlot.providers`` entry-point group.
"""

from __future__ import annotations

import abc
import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..channel import Channel
from ..errors import InvalidArgumentError
from ..models import ProviderInfo, SandboxSpec, describe


class ProviderConfig(BaseModel):
    """Provider-specific settings (``SandboxSpec.config``). Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class AgentPythonConfig(ProviderConfig):
    """Settings of providers that run the agent with a host interpreter."""

    python: str = Field(description="absolute path of the interpreter that runs the agent")

    @field_validator("python")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path")
        return value


@dataclass
class Started:
    """A sandbox a provider has just created: its handle and a connected channel."""

    handle: dict[str, Any]
    channel: Channel
    exited: asyncio.Future[int] | None = None  # resolves when it stops, if this process owns it


class Provider(abc.ABC):
    name: ClassVar[str]
    isolated: ClassVar[bool] = True
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # The manager serves the sandbox's proxy and bridge here (not so for a remote server,
    # which serves its own).
    serves_egress: ClassVar[bool] = True
    # SandboxSpec.binds: "local" (host paths of this machine, resolved here and mounted),
    # "forward" (passed on to a server, which resolves them) or "none" (refused).
    binds: ClassVar[str] = "none"
    config_model: ClassVar[type[ProviderConfig]] = ProviderConfig
    # Settings a server accepts from a call (e.g. a container image). Everything else in
    # the config decides what of the host a sandbox sees: the operator's choice.
    caller_settings: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, home: Path) -> None:
        self.home = home
        # Set by a detached manager (a server): sandboxes then outlive the process that
        # created them, so a restarted server adopts them; their deadline still ends them.
        self.detached = False

    def parse_config(self, config: dict[str, Any]) -> ProviderConfig:
        try:
            return self.config_model.model_validate(config)
        except ValidationError as exc:
            what = f"settings for provider {self.name!r}"
            raise InvalidArgumentError(describe(exc, what)) from None

    def info(self) -> ProviderInfo:
        reason = self.unavailable_reason()
        return ProviderInfo(
            name=self.name,
            available=reason is None,
            reason=reason,
            isolated=self.isolated,
            capabilities=sorted(self.capabilities),
        )

    @abc.abstractmethod
    def unavailable_reason(self) -> str | None:
        """None if this provider can create sandboxes here; otherwise why not, in words."""

    @abc.abstractmethod
    async def create(self, sandbox_id: str, spec: SandboxSpec, folder: Path) -> Started:
        """Create and start a sandbox whose host-side files live in ``folder``."""

    @abc.abstractmethod
    async def connect(self, handle: dict[str, Any]) -> Channel:
        """Open a new channel to a running sandbox (possibly from another process)."""

    async def dial_local(self, handle: dict[str, Any]) -> socket.socket | None:
        """A raw connection to the agent when its socket is on this machine (the agent can
        then hand accepted sockets over); None where it is not (ssh, a server)."""
        return None

    @abc.abstractmethod
    async def destroy(self, handle: dict[str, Any]) -> None:
        """Stop everything the sandbox runs and release its resources. Idempotent."""

    @abc.abstractmethod
    def is_alive(self, handle: dict[str, Any]) -> bool:
        """Whether the sandbox's processes still run."""

    # -- pause and resume (where the provider can) -----------------------------------------

    def can_pause(self, handle: dict[str, Any]) -> bool:
        """Whether :meth:`pause` can stop this sandbox (cheap, local: no engine is asked)."""
        return False

    async def pause(self, handle: dict[str, Any]) -> None:
        """Stop every process of the sandbox where it is, until :meth:`resume`. While paused
        its agent does not answer; a command that was running goes on after the resume, its
        output complete. Returns once everything has stopped. Idempotent; a paused sandbox
        can still be destroyed."""
        raise self.cannot_pause(handle)

    async def resume(self, handle: dict[str, Any]) -> None:
        """Let a paused sandbox run again. Idempotent (resuming a running sandbox is a no-op)."""
        raise self.cannot_pause(handle)

    def is_paused(self, handle: dict[str, Any]) -> bool:
        """Whether the sandbox is paused (or its pause is under way)."""
        return False

    async def paused(self, handle: dict[str, Any]) -> bool:
        """:meth:`is_paused`, for providers that must ask over the network to know."""
        return self.is_paused(handle)

    def cannot_pause(self, handle: dict[str, Any], why: str | None = None) -> InvalidArgumentError:
        """The error for a pause or resume this provider cannot do."""
        reason = why or "this provider does not support it"
        return InvalidArgumentError(
            f"the {self.name} provider cannot pause or resume a sandbox: {reason}",
            provider=self.name,
        )

    def fallback(self, spec: SandboxSpec) -> str | None:
        """A provider to create the sandbox with instead when this one is unavailable."""
        return None

    async def list_instances(self) -> list[str]:
        """Ids of sandboxes that hold resources of this provider on this host (for gc).

        Only resources that are certainly this state folder's, and old enough that no
        create still in progress can own them (a grace period), may be listed."""
        return []

    async def cleanup_orphan(self, sandbox_id: str) -> None:
        """Release resources of a sandbox that :meth:`list_instances` found with no record."""

    async def settle(self) -> None:
        """Wait for clean-up work that :meth:`destroy` left running in the background."""

    async def close(self) -> None:
        """Release what the provider itself holds (connections to an engine or a host),
        once its manager is done: after its sandboxes were killed or let go."""
