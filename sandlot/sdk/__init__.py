"""The Python SDK: :class:`AsyncSandbox` (the implementation) and :class:`Sandbox` (sync)."""

from .commands import AsyncCommandHandle, AsyncCommands
from .files import AsyncFiles
from .sandbox import AsyncSandbox
from .sync import CommandHandle, Commands, Files, Sandbox

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncSandbox",
    "CommandHandle",
    "Commands",
    "Files",
    "Sandbox",
]
