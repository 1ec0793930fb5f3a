"""The Python SDK: :class:`AsyncSandbox` (the implementation) and :class:`Sandbox` (sync)."""

from .code import AsyncExecutionHandle
from .commands import AsyncCommandHandle, AsyncCommands
from .files import AsyncFiles
from .pty import AsyncPty, AsyncPtyHandle
from .sandbox import AsyncSandbox
from .session import AsyncSession
from .sync import CommandHandle, Commands, ExecutionHandle, Files, Pty, PtyHandle, Sandbox
from .sync_session import Session
from .volumes import AsyncVolumes, Volumes

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncExecutionHandle",
    "AsyncFiles",
    "AsyncPty",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncSession",
    "AsyncVolumes",
    "CommandHandle",
    "Commands",
    "ExecutionHandle",
    "Files",
    "Pty",
    "PtyHandle",
    "Sandbox",
    "Session",
    "Volumes",
]
