"""Sandbox lifecycle on this host (embedded mode).

:class:`Manager` is imported when first used (PEP 562): the SDK names this package for its
records (:class:`GcReport`) without loading the providers, the stores and the egress proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from .base import GcReport, LiveSandbox

if TYPE_CHECKING:
    from .manager import Manager


__all__ = ["GcReport", "LiveSandbox", "Manager"]
__getattr__, __dir__ = lazy_names(__name__, {"Manager": ".manager"}, __all__)
