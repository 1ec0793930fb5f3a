"""Remote mode: the SDK talking to a ``sandlot serve`` over HTTP (aiohttp, imported lazily)."""

from .client import Client

__all__ = ["Client"]
