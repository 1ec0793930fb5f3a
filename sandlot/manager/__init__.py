"""Sandbox lifecycle on this host (embedded mode).

:class:`Manager` is imported when first used (PEP 562): the SDK names this package for its
records (:class:`GcReport`) without loading the providers, the stores and the egress proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import GcReport, LiveSandbox

if TYPE_CHECKING:
    from .manager import Manager


def __getattr__(name: str) -> Any:
    if name == "Manager":
        from .manager import Manager

        return Manager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GcReport", "LiveSandbox", "Manager"]
