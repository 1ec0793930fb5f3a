"""Remote mode: the SDK talking to a ``sandlot serve`` over HTTP (aiohttp, imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .breaker import CircuitBreaker, breaker_for
    from .client import Client


__all__ = ["CircuitBreaker", "Client", "breaker_for"]

# Loaded when first used: the CLI imports submodules of this package without needing the
# client (and asyncio) at its start.
__getattr__, __dir__ = lazy_names(
    __name__,
    {"CircuitBreaker": ".breaker", "Client": ".client", "breaker_for": ".breaker"},
    __all__,
)
