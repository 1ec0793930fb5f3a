"""What the manager and its parts (pools, sessions) share, light enough for the SDK to import
without the manager itself: the records a create hands back and gc reports, and the rule
that fills in a spec's provider."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..channel import Channel
    from ..models import SandboxInfo, SandboxSpec
    from ..providers import Provider


class Side(Protocol):
    """What the SDK asks of the provider behind a live sandbox."""

    @property
    def isolated(self) -> bool: ...


class Live(Protocol):
    """A sandbox a backend hands the SDK: :class:`LiveSandbox` here, ``RemoteLive`` in
    remote mode. ``channel`` is a :class:`~sandlot.channel.Channel` or its stand-in."""

    @property
    def info(self) -> SandboxInfo: ...
    @property
    def channel(self) -> Any: ...
    @property
    def provider(self) -> Side: ...


@dataclass
class LiveSandbox:
    """A sandbox this process has a channel to."""

    info: SandboxInfo
    channel: Channel
    provider: Provider
    fell_back: dict[str, str] | None = None  # {"from", "to", "reason"} if created elsewhere


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)  # records of dead or expired sandboxes
    orphans: list[str] = field(default_factory=list)  # resources with no record


def default_provider(spec: SandboxSpec) -> SandboxSpec:
    """A spec that names no provider gets ``SANDLOT_PROVIDER`` (default: bwrap). A spec for
    that provider (named or not) gets the settings in ``SANDLOT_PROVIDER_CONFIG`` (a JSON
    object) under its own: an operator's defaults, e.g. ``{"pull": "never"}``."""
    from ..providers import DEFAULT

    name = os.environ.get("SANDLOT_PROVIDER") or DEFAULT
    if spec.provider is not None and spec.provider != name:
        return spec
    raw = os.environ.get("SANDLOT_PROVIDER_CONFIG")
    config: dict[str, object] = {}
    if raw:
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise InvalidArgumentError(f"SANDLOT_PROVIDER_CONFIG is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise InvalidArgumentError("SANDLOT_PROVIDER_CONFIG must be a JSON object")
        config = loaded
    return spec.model_copy(update={"provider": name, "config": {**config, **spec.config}})
