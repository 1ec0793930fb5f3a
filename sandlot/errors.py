"""sandlot's exceptions: one tree, each class with a stable ``code``.

The code is what crosses the wire (agent -> host, and later server -> client); the client
re-raises the same class by looking the code up in an allowlist, never by importing a name.
Builtins are mixed in where they fit, so ``except TimeoutError`` and ``except ValueError``
work as a Python user expects::

    SandlotError                        sandlot_error
    ├── InvalidArgumentError (ValueError)        invalid_argument
    ├── NotFoundError (LookupError)              not_found
    │   ├── SandboxNotFoundError                 sandbox_not_found
    │   ├── ProviderNotFoundError                provider_not_found
    │   ├── ProcessNotFoundError                 process_not_found
    │   ├── CodeContextNotFoundError             code_context_not_found
    │   ├── ImageNotFoundError                   image_not_found
    │   ├── SecretNotFoundError                  secret_not_found
    │   ├── SessionNotFoundError                 session_not_found
    │   └── TemplateNotFoundError                template_not_found
    ├── ProviderUnavailableError                 provider_unavailable
    │   └── HostKeyError                         host_key_rejected
    ├── SandboxError                             sandbox_error
    │   ├── SandboxStartError                    sandbox_start_failed
    │   ├── SandboxClosedError                   sandbox_closed
    │   └── PortError                            port_error
    ├── ProtocolError                            protocol_error
    ├── CommandError                             command_error
    │   └── CommandTimeoutError (TimeoutError)   command_timeout
    ├── CodeError                                code_error
    │   ├── CodeTimeoutError (TimeoutError)      code_timeout
    │   ├── CodeContextBusyError                 code_context_busy
    │   ├── CodeContextFailedError               code_context_failed
    │   └── InstallError                         install_failed
    ├── ServerError                              server_error
    │   ├── AuthenticationError                  unauthenticated
    │   ├── ForbiddenError (PermissionError)     forbidden
    │   ├── IdempotencyConflictError             idempotency_conflict
    │   ├── ExecutionLostError                   execution_lost
    │   ├── RemoteUnavailableError               remote_unavailable
    │   └── ServerRunningError                   server_running
    ├── ProvisionError                           provision_failed
    ├── SecretError                              secret_error
    ├── EgressError                              egress_error
    ├── SessionError                             session_error
    │   ├── SessionBusyError                     session_busy
    │   └── RunCancelledError                    run_cancelled
    ├── TemplateBuildError                       template_build_failed
    ├── RelayError                               relay_error
    │   ├── RelayDown                            relay_down
    │   ├── RelayValidationError (ValueError)    relay_validation
    │   ├── RelayRejected                        relay_rejected
    │   ├── RelayTimeout (TimeoutError)          relay_timeout
    │   └── RelayCrashed                         relay_crashed
    └── FileError (OSError)                      file_error
        ├── FileNotFoundInSandboxError (FileNotFoundError)   file_not_found
        ├── FileExistsInSandboxError (FileExistsError)       file_exists
        ├── IsADirectoryInSandboxError (IsADirectoryError)   is_a_directory
        ├── NotADirectoryInSandboxError (NotADirectoryError) not_a_directory
        ├── DirectoryNotEmptyError                           directory_not_empty
        ├── PermissionDeniedError (PermissionError)          permission_denied
        ├── NoSpaceError                                     no_space
        └── FileTooLargeError                                file_too_large
"""

from __future__ import annotations

from typing import Any, ClassVar


class SandlotError(Exception):
    """Root of every error sandlot raises."""

    code: ClassVar[str] = "sandlot_error"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidArgumentError(SandlotError, ValueError):
    code = "invalid_argument"


class NotFoundError(SandlotError, LookupError):
    code = "not_found"


class SandboxNotFoundError(NotFoundError):
    code = "sandbox_not_found"


class ProviderNotFoundError(NotFoundError):
    code = "provider_not_found"


class ProcessNotFoundError(NotFoundError):
    code = "process_not_found"


class CodeContextNotFoundError(NotFoundError):
    code = "code_context_not_found"


class ImageNotFoundError(NotFoundError):
    """A container image that is not on the engine (and was not, or could not be, pulled)."""

    code = "image_not_found"


class SecretNotFoundError(NotFoundError):
    """A ``{"secret": NAME}`` reference names a secret that is not stored."""

    code = "secret_not_found"


class SessionNotFoundError(NotFoundError):
    """No session with that id (or it was deleted)."""

    code = "session_not_found"


class TemplateNotFoundError(NotFoundError):
    """A template name (or ``sha256:`` digest) that this owner's template store does not hold."""

    code = "template_not_found"


class ProviderUnavailableError(SandlotError):
    """The provider cannot isolate on this host; ``reason`` says why."""

    code = "provider_unavailable"


class HostKeyError(ProviderUnavailableError):
    """An SSH host whose key is unknown or does not match known_hosts: never a prompt."""

    code = "host_key_rejected"


class SandboxError(SandlotError):
    code = "sandbox_error"


class SandboxStartError(SandboxError):
    code = "sandbox_start_failed"


class SandboxClosedError(SandboxError):
    """The sandbox is gone: killed, timed out, or its agent died."""

    code = "sandbox_closed"


class PortError(SandboxError):
    """A port cannot be exposed (pool exhausted, bad number) or nothing listens on it."""

    code = "port_error"


class ProtocolError(SandlotError):
    code = "protocol_error"


class CommandError(SandlotError):
    code = "command_error"


class _WithOutput(SandlotError):
    """Carries what the process printed before it failed."""

    def __init__(
        self, message: str = "", *, stdout: str = "", stderr: str = "", **details: Any
    ) -> None:
        super().__init__(message, **details)
        self.stdout = stdout
        self.stderr = stderr


class CommandTimeoutError(_WithOutput, CommandError, TimeoutError):
    """A command ran past its timeout and was killed. Carries the output it produced."""

    code = "command_timeout"


class CodeError(SandlotError):
    """A code context could not run a cell. An exception *raised by* the cell is not one of
    these: it is ``Execution.error``."""

    code = "code_error"


class CodeTimeoutError(CodeError, TimeoutError):
    """A cell ran past its timeout (total or inactivity) and was interrupted. ``execution``
    holds what it produced; unless ``execution.state_lost``, the context kept its state."""

    code = "code_timeout"

    def __init__(self, message: str = "", *, execution: Any = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.execution = execution


class CodeContextBusyError(CodeError):
    """The context is running another cell: wait for it or interrupt it."""

    code = "code_context_busy"


class CodeContextFailedError(CodeError):
    """The context's Python could not start (the message carries what it printed)."""

    code = "code_context_failed"


class InstallError(_WithOutput, CodeError):
    """``install`` failed; the message says why, ``stdout``/``stderr`` hold pip's output."""

    code = "install_failed"


class ServerError(SandlotError):
    """The sandlot server failed, or refused the call as a whole (not the sandbox's doing)."""

    code = "server_error"


class AuthenticationError(ServerError):
    """No API key, or one the server does not accept (unknown, wrong or revoked)."""

    code = "unauthenticated"


class ForbiddenError(ServerError, PermissionError):
    """The key is valid but may not do this (e.g. manage keys without being an admin key)."""

    code = "forbidden"


class IdempotencyConflictError(ServerError):
    """An idempotency key was reused for a different request."""

    code = "idempotency_conflict"


class ExecutionLostError(ServerError):
    """The server restarted while a command or cell ran and could not carry its record on
    (its sandbox or process is gone, or it was a code cell): its outcome was not recorded."""

    code = "execution_lost"


class RemoteUnavailableError(ServerError):
    """The sandlot server cannot be reached, or its circuit breaker is open."""

    code = "remote_unavailable"


class ServerRunningError(ServerError):
    """Another process already serves this state folder (a second ``sandlot serve`` on it,
    or a process adopting its sandboxes); ``pid`` and ``address`` name it."""

    code = "server_running"


class ProvisionError(SandlotError):
    """``sandlot remote up``/``down`` could not do its job; ``exit_code`` says which kind of
    failure, ``log_tail`` carries the end of the remote server's log when there is one."""

    code = "provision_failed"

    def __init__(self, message: str = "", exit_code: int = 1, log_tail: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.log_tail = log_tail


class SecretError(SandlotError):
    """The secret store cannot be used: a bad or missing key, or a value that does not decrypt
    with it."""

    code = "secret_error"


class EgressError(SandlotError):
    """A network policy or callback bridge cannot be applied to this sandbox."""

    code = "egress_error"


class SessionError(SandlotError):
    """A durable session's workspace, lease or lifetime could not do what was asked."""

    code = "session_error"


class SessionBusyError(SessionError):
    """Another run holds the session's lock; details name the ``holder`` and ``since``
    (epoch seconds). Pass ``force=True`` to cancel that run and take over."""

    code = "session_busy"


class RunCancelledError(SessionError):
    """This run was cancelled: another caller took the session over with ``force=True``."""

    code = "run_cancelled"


class TemplateBuildError(SandlotError):
    """A template build step failed; the message names the step and ends with its log's tail."""

    code = "template_build_failed"


class RelayError(SandlotError):
    """The air-gapped relay could not carry out a request (see :mod:`sandlot.relay`)."""

    code = "relay_error"


class RelayDown(RelayError):
    """No daemon serves the queue: its heartbeat is missing or stale."""

    code = "relay_down"


class RelayValidationError(RelayError, ValueError):
    """The daemon refused the request before running anything; ``rule`` names the check."""

    code = "relay_validation"


class RelayRejected(RelayError):
    """A person rejected the request, or nobody decided before it expired."""

    code = "relay_rejected"


class RelayTimeout(RelayError, TimeoutError):
    """The operation ran past its timeout, or no answer came in time."""

    code = "relay_timeout"


class RelayCrashed(RelayError):
    """The daemon died while the request was running; it was not run again."""

    code = "relay_crashed"


class FileError(SandlotError, OSError):
    code = "file_error"

    def __init__(self, message: str = "", **details: Any) -> None:
        SandlotError.__init__(self, message, **details)


class FileNotFoundInSandboxError(FileError, FileNotFoundError):
    code = "file_not_found"


class FileExistsInSandboxError(FileError, FileExistsError):
    code = "file_exists"


class IsADirectoryInSandboxError(FileError, IsADirectoryError):
    code = "is_a_directory"


class NotADirectoryInSandboxError(FileError, NotADirectoryError):
    code = "not_a_directory"


class DirectoryNotEmptyError(FileError):
    code = "directory_not_empty"


class PermissionDeniedError(FileError, PermissionError):
    code = "permission_denied"


class NoSpaceError(FileError):
    code = "no_space"


class FileTooLargeError(FileError):
    code = "file_too_large"


def _collect(cls: type[SandlotError]) -> dict[str, type[SandlotError]]:
    found = {cls.code: cls} if "code" in vars(cls) else {}  # mixins have no code of their own
    for sub in cls.__subclasses__():
        found.update(_collect(sub))
    return found


ERRORS_BY_CODE: dict[str, type[SandlotError]] = _collect(SandlotError)


def from_dict(payload: Any) -> SandlotError:
    """Rebuild an error from its wire form. Unknown codes become a plain SandlotError."""
    if not isinstance(payload, dict):
        return ProtocolError(f"malformed error payload: {payload!r:.200}")
    code = str(payload.get("code", "sandlot_error"))
    message = str(payload.get("message", ""))
    details = {k: v for k, v in payload.items() if k not in ("code", "message")}
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        return SandlotError(message, code=code, **details)
    return cls(message, **details)
