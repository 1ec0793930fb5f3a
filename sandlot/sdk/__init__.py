"""The Python SDK: :class:`AsyncSandbox` (the implementation) and :class:`Sandbox` (sync)."""

from .code import AsyncExecutionHandle
from .commands import AsyncCommandHandle, AsyncCommands
from .files import AsyncFiles
from .sandbox import AsyncSandbox
from .sync import CommandHandle, Commands, ExecutionHandle, Files, Sandbox

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncExecutionHandle",
    "AsyncFiles",
    "AsyncSandbox",
    "CommandHandle",
    "Commands",
    "ExecutionHandle",
    "Files",
    "Sandbox",
]
