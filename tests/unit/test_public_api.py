"""``sandlot``'s public names: the list is pinned, every name resolves, and importing the
package (or the SDK) loads none of the heavy parts (egress proxy, secret store, stores,
server, providers), which load when a sandbox needs them."""

from __future__ import annotations

import json
import subprocess
import sys

import sandlot

PUBLIC = [
    "AsyncCommandHandle",
    "AsyncExecutionHandle",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncSession",
    "AuthenticationError",
    "BridgeConfig",
    "Client",
    "CodeContext",
    "CodeContextBusyError",
    "CodeContextFailedError",
    "CodeContextNotFoundError",
    "CodeError",
    "CodeEvent",
    "CodeTimeoutError",
    "CommandError",
    "CommandHandle",
    "CommandResult",
    "CommandTimeoutError",
    "DirectoryNotEmptyError",
    "EgressError",
    "EndEvent",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "ExecutionHandle",
    "ExecutionLostError",
    "FileError",
    "FileExistsInSandboxError",
    "FileNotFoundInSandboxError",
    "FileTooLargeError",
    "ForbiddenError",
    "HostKeyError",
    "IdempotencyConflictError",
    "ImageNotFoundError",
    "InstallError",
    "InvalidArgumentError",
    "IsADirectoryInSandboxError",
    "Logs",
    "NetworkPolicy",
    "NoSpaceError",
    "NotADirectoryInSandboxError",
    "NotFoundError",
    "OutputEvent",
    "PermissionDeniedError",
    "PortError",
    "ProcessInfo",
    "ProcessNotFoundError",
    "ProgressEvent",
    "ProtocolError",
    "ProviderInfo",
    "ProviderNotFoundError",
    "ProviderUnavailableError",
    "ProvisionError",
    "PtyHandle",
    "RelayCrashed",
    "RelayDown",
    "RelayError",
    "RelayRejected",
    "RelayTimeout",
    "RelayValidationError",
    "RemoteUnavailableError",
    "Resources",
    "Result",
    "ResultEvent",
    "RunCancelledError",
    "Sandbox",
    "SandboxClosedError",
    "SandboxError",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxSpec",
    "SandboxStartError",
    "SandlotError",
    "SecretError",
    "SecretNotFoundError",
    "SecretRef",
    "ServerError",
    "ServerRunningError",
    "Session",
    "SessionBusyError",
    "SessionError",
    "SessionEvent",
    "SessionInfo",
    "SessionNotFoundError",
    "TemplateBuildError",
    "TemplateNotFoundError",
    "__version__",
]

# Loaded when used, never by importing the package or the SDK.
HEAVY = (
    "sandlot.egress.proxy",
    "sandlot.secrets.store",
    "sandlot.store",
    "sandlot.server",
    "sandlot.providers",
    "sandlot.manager.manager",
)


def test_all_is_pinned() -> None:
    assert sandlot.__all__ == PUBLIC


def test_every_name_resolves_to_its_definition() -> None:
    from sandlot import errors, models, remote, sdk

    for name in PUBLIC:
        assert getattr(sandlot, name) is not None, name
    assert sandlot.Sandbox is sdk.Sandbox
    assert sandlot.AsyncSandbox is sdk.AsyncSandbox
    assert sandlot.SandboxSpec is models.SandboxSpec
    assert sandlot.SandlotError is errors.SandlotError
    assert sandlot.Client is remote.Client
    assert set(PUBLIC) <= set(dir(sandlot))


def test_unknown_names_raise_attribute_error() -> None:
    try:
        sandlot.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("sandlot.NoSuchThing resolved")


def _loaded_by(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return [m for m in json.loads(out) if m.startswith("sandlot")]


def test_import_sandlot_loads_nothing_heavy() -> None:
    assert _loaded_by("import sandlot") == ["sandlot", "sandlot._lazy"]


def test_the_sdk_loads_nothing_heavy() -> None:
    loaded = _loaded_by("from sandlot import AsyncSandbox, Sandbox, Session, SandboxSpec")
    assert "sandlot.sdk.sync" in loaded
    heavy = [m for m in loaded if m.startswith(HEAVY)]
    assert heavy == []
