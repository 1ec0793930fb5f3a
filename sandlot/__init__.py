"""sandlot: disposable, isolated computers for AI agents, self-hosted.

    import sandlot

    with sandlot.Sandbox.create() as sb:
        print(sb.commands.run("echo hi").stdout)

See the README and docs/ for the full surface.
"""

from .errors import (
    CommandError,
    CommandTimeoutError,
    DirectoryNotEmptyError,
    FileError,
    FileExistsInSandboxError,
    FileNotFoundInSandboxError,
    FileTooLargeError,
    InvalidArgumentError,
    IsADirectoryInSandboxError,
    NoSpaceError,
    NotADirectoryInSandboxError,
    NotFoundError,
    PermissionDeniedError,
    ProcessNotFoundError,
    ProtocolError,
    ProviderNotFoundError,
    ProviderUnavailableError,
    SandboxClosedError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStartError,
    SandlotError,
)
from .models import CommandResult, EntryInfo, ProviderInfo, Resources, SandboxInfo, SandboxSpec
from .sdk import AsyncCommandHandle, AsyncSandbox, CommandHandle, Sandbox

__version__ = "0.1.0"

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "CommandError",
    "CommandHandle",
    "CommandResult",
    "CommandTimeoutError",
    "DirectoryNotEmptyError",
    "EntryInfo",
    "FileError",
    "FileExistsInSandboxError",
    "FileNotFoundInSandboxError",
    "FileTooLargeError",
    "InvalidArgumentError",
    "IsADirectoryInSandboxError",
    "NoSpaceError",
    "NotADirectoryInSandboxError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProcessNotFoundError",
    "ProtocolError",
    "ProviderInfo",
    "ProviderNotFoundError",
    "ProviderUnavailableError",
    "Resources",
    "Sandbox",
    "SandboxClosedError",
    "SandboxError",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxSpec",
    "SandboxStartError",
    "SandlotError",
    "__version__",
]
