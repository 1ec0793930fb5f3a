"""Remote mode: the SDK talking to a ``sandlot serve`` over HTTP (aiohttp, imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client


def __getattr__(name: str) -> Any:
    # Loaded when first used (PEP 562): the CLI imports submodules of this package without
    # needing the client (and asyncio) at its start.
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Client"]
