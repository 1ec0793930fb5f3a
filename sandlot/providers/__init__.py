"""Providers: where sandboxes run. Built-ins are listed here; others are found through the
``sandlot.providers`` entry-point group (looked up only for names not built in)."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import InvalidArgumentError, ProviderNotFoundError
from .base import Provider, ProviderConfig, Started

BUILTIN = {
    "bwrap": "sandlot.providers.bwrap:BwrapProvider",
    "process": "sandlot.providers.process:ProcessProvider",
    "docker": "sandlot.providers.docker:DockerProvider",
}
# Built in, but not on this host: gc has no local resources of theirs to look for.
ELSEWHERE = {
    "remote": "sandlot.providers.remote:RemoteProvider",
    "ssh": "sandlot.providers.ssh:SshProvider",
}
DEFAULT = "bwrap"
ENTRY_POINT_GROUP = "sandlot.providers"


def _load(target: str) -> type[Provider]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def provider_class(name: str) -> type[Provider]:
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError("provider must be a non-empty name")
    if name in BUILTIN:
        return _load(BUILTIN[name])
    if name in ELSEWHERE:
        return _load(ELSEWHERE[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Provider)):
                raise ProviderNotFoundError(f"entry point {name!r} is not a sandlot Provider")
            return cls
    raise ProviderNotFoundError(
        f"unknown provider {name!r}; known: {', '.join(provider_names())}", provider=name
    )


def provider_names() -> list[str]:
    names = set(BUILTIN) | set(ELSEWHERE)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


__all__ = [
    "BUILTIN",
    "DEFAULT",
    "Provider",
    "ProviderConfig",
    "Started",
    "provider_class",
    "provider_names",
]
