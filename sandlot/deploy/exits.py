"""The exit codes of ``sandlot remote``: each failure the user can act on has its own."""

from __future__ import annotations

from ..errors import HostKeyError, InvalidArgumentError, ProvisionError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_HOST_KEY = 4
EXIT_AUTH = 5
EXIT_PORT_IN_USE = 6
EXIT_INSTALL = 7
EXIT_NOT_READY = 8


def exit_code_for(exc: BaseException) -> int:
    """The ``sandlot remote`` exit code for an error raised here."""
    if isinstance(exc, ProvisionError):
        return exc.exit_code
    if isinstance(exc, HostKeyError):
        return EXIT_HOST_KEY
    if isinstance(exc, InvalidArgumentError):
        return EXIT_USAGE
    return EXIT_FAILED
