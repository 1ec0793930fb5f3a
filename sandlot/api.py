"""The HTTP API's request and response bodies, shared by the server and the SDK's remote mode.

Field names follow the agent's operations, so the server passes a validated body on to the
agent as it is, and the SDK builds the same body from the arguments it already checked.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .egress.policy import NetworkPolicy
from .models import (
    MAX_LIFETIME,
    SandboxInfo,
    SandboxSpec,
    SessionInfo,
    VolumeMount,
    check_env,
    check_env_refs,
    parse_network,
)
from .secrets.refs import MaybeSecret

NAME = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)  # stored as epoch seconds: far from datetime's end
MIN_PROCESS_BUFFER = 4096  # the output log the agent keeps for one process: its bounds
MAX_PROCESS_BUFFER = 64 << 20
FORCE_DESCRIPTION = (
    "on a durable session's sandbox: cancel the run that holds the session's run lock "
    "(its stream ends with a `run_cancelled` error) instead of answering 409"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_nul(value: str, what: str) -> str:
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL byte")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return _no_nul(value, "path")


class _ProcessStart(_Body):
    """What starts a process (a command, a terminal): the checks of its variables (``env``)
    and working folder (``cwd``), which each subclass declares where it wants them."""

    @field_validator("env", check_fields=False)
    @classmethod
    def _env(cls, value: dict[str, MaybeSecret] | None) -> dict[str, MaybeSecret] | None:
        return None if value is None else check_env_refs(value)

    @field_validator("cwd", check_fields=False)
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value)


class CommandRequest(_ProcessStart):
    """Run a command: ``cmd`` through the sandbox's shell, or ``argv`` as it is."""

    cmd: str | None = Field(None, min_length=1, max_length=1 << 20)
    argv: list[str] | None = Field(None, min_length=1, max_length=65536)
    env: dict[str, MaybeSecret] | None = Field(
        None, description='values are strings or {"secret": NAME} (the tenant\'s secret)'
    )
    cwd: str | None = None
    timeout: float | None = Field(
        None, gt=0, le=MAX_LIFETIME, description="seconds; kills the process group"
    )
    stdin: bool = Field(False, description="keep stdin open for POST .../stdin")
    buffer: int | None = Field(
        None, ge=MIN_PROCESS_BUFFER, le=MAX_PROCESS_BUFFER,
        description="output the sandbox keeps for reattaching (GET .../pty/{pid}), bytes",
    )  # fmt: skip
    force: bool = Field(False, description=FORCE_DESCRIPTION)

    @model_validator(mode="after")
    def _one_command(self) -> CommandRequest:
        if (self.cmd is None) == (self.argv is None):
            raise ValueError("give exactly one of cmd (a shell string) or argv (a list)")
        if self.cmd is not None:
            if not self.cmd.strip():
                raise ValueError("cmd is empty")
            _no_nul(self.cmd, "cmd")
        if self.argv is not None and (not self.argv[0] or any("\0" in a for a in self.argv)):
            raise ValueError("argv must be non-empty at [0] and NUL-free")
        return self


class CodeRunRequest(_Body):
    code: str = Field(max_length=16 << 20)
    context: str = Field("default", pattern=NAME)
    timeout: float | None = Field(None, gt=0, le=MAX_LIFETIME)
    inactivity_timeout: float | None = Field(None, gt=0, le=MAX_LIFETIME)
    grace: float | None = Field(
        None, gt=0, le=3600, description="seconds between SIGINT and SIGKILL"
    )
    max_output: int = Field(2 * 1024 * 1024, ge=2, le=1 << 30)
    force: bool = Field(False, description=FORCE_DESCRIPTION)

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        return _no_nul(value, "code")


class InstallRequest(_Body):
    packages: list[str] = Field(min_length=1, max_length=1000)
    upgrade: bool = False
    index_url: str | None = Field(None, pattern=r"^(https?|file)://")
    timeout: float | None = Field(None, gt=0, le=MAX_LIFETIME)
    force: bool = Field(False, description=FORCE_DESCRIPTION)

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.strip() or item.startswith("-") or "\0" in item or "\n" in item:
                raise ValueError(f"invalid package {item!r}")
        return value


class ContextRequest(_Body):
    cwd: str | None = None
    env: dict[str, str] | None = None
    name: str | None = Field(None, pattern=NAME)
    persist: bool = False
    setup: str | None = Field(None, max_length=256 * 1024)  # the agent bounds its bytes too
    cwd_on_path: bool = True

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else check_env(value)


class RestartRequest(_Body):
    forget_state: bool = False


class TimeoutRequest(_Body):
    seconds: float = Field(gt=0, le=MAX_LIFETIME)


class IdleTimeoutRequest(_Body):
    seconds: float | None = Field(
        gt=0, le=MAX_LIFETIME, description="seconds without activity before it stops; null: never"
    )


class NetworkRequest(_Body):
    """``"none"`` (refuse everything from now on) or ``{"allow": [...], "resolve": {...}}``."""

    network: Literal["none"] | NetworkPolicy

    @field_validator("network", mode="before")
    @classmethod
    def _network(cls, value: Any) -> Any:
        return parse_network(value, modes=("none",))


class SignalRequest(_Body):
    signal: int = Field(9, ge=1, le=64)


class MkdirRequest(_Body):
    path: str
    parents: bool = True
    exist_ok: bool = True

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _absolute(value)


class RenameRequest(_Body):
    src: str
    dst: str
    overwrite: bool = False

    @field_validator("src", "dst")
    @classmethod
    def _paths(cls, value: str) -> str:
        return _absolute(value)


class SandboxOut(SandboxInfo):
    """A sandbox as the server shows it: no host details (pids, paths) are exposed."""

    owner_pid: int = Field(0, exclude=True)
    handle: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)
    session_id: str
    isolated: bool = True


class ExecutionOut(BaseModel):
    """A command or code cell the server ran or runs."""

    id: str
    session_id: str
    sandbox_id: str
    kind: Literal["command", "code", "install"]
    state: Literal["running", "ended"]
    pid: int | None = None
    created_at: datetime
    ended_at: datetime | None = None
    outcome: dict[str, Any] | None = None


class SessionCreateRequest(_Body):
    """A durable session: a workspace and a transcript that outlive its sandboxes."""

    metadata: dict[str, str] = Field(default_factory=dict)
    workspace_store: str = Field(
        "local",
        max_length=600,
        description='where checkpoints go: "local" (the server\'s state folder) or '
        '"s3://bucket/prefix" (the server\'s S3 settings)',
    )
    idle_timeout: float | None = Field(
        None, gt=0, le=MAX_LIFETIME, description="seconds without activity before its "
        "sandbox is checkpointed and stopped",
    )  # fmt: skip
    checkpoint_every: float | None = Field(
        300.0, gt=0, le=MAX_LIFETIME,
        description="seconds between checkpoints while attached (null: only on detach and "
        "when asked)",
    )  # fmt: skip
    delete_after: datetime | None = Field(
        None, description="a time (with its zone) at which the session and its data are deleted"
    )
    volumes: list[VolumeMount] = Field(
        default_factory=list,
        max_length=16,
        description="named volumes (the caller's tenant's) every sandbox attached to it mounts",
    )

    @field_validator("workspace_store")
    @classmethod
    def _store(cls, value: str) -> str:
        from .workspace import check_store_url

        try:
            return check_store_url(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("delete_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("delete_after needs a time zone (e.g. 2030-01-01T00:00:00Z)")
        if not EPOCH <= value <= LATEST:
            raise ValueError("delete_after must be between 1970 and 9000")
        return value


class SessionOut(SessionInfo):
    """A durable session as the server shows it."""


class AttachRequest(SandboxSpec):
    """The sandbox to attach (the fields of ``POST /v1/sandboxes``), and the lease on it."""

    reuse: bool = Field(
        False, description="take the session's live sandbox if its spec matches exactly"
    )
    lease_ttl: float = Field(
        30.0, gt=0, le=86400, description="seconds the lease lives without a heartbeat"
    )

    def spec(self) -> SandboxSpec:
        return SandboxSpec.model_validate(self.model_dump(exclude={"reuse", "lease_ttl"}))


class AttachOut(BaseModel):
    """A sandbox attached to a session: use it under ``/v1/sandboxes/{id}``, heartbeat its
    lease, and detach it when done."""

    sandbox: SandboxOut
    lease_id: str
    lease_ttl: float
    reused: bool
    restored: dict[str, Any] | None = Field(
        None, description="what the restore of the workspace did (null: nothing restored)"
    )


class SessionEventOut(BaseModel):
    """One transcript entry: output as ``text`` (valid UTF-8) or ``b64``; others' JSON in
    ``data``."""

    seq: int
    kind: str
    execution_id: str | None = None
    created_at: datetime
    text: str | None = None
    b64: str | None = None
    data: Any = None


class ErrorBody(BaseModel):
    """Every error answer: the stable code of the exception class, and what went wrong."""

    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class Health(BaseModel):
    status: Literal["ok", "degraded", "unhealthy"] = Field(
        description="unhealthy (answered with 503): a problem below stops the server from "
        "serving; degraded: a remote server it forwards to is failing (its breaker is open)"
    )
    version: str
    database: str
    sandboxes: int
    breakers: dict[str, str] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list, description="what is wrong, when unhealthy")
    events_waiting: int = Field(0, description="events queued for the log, not yet committed")
    event_lag_seconds: float = Field(0.0, description="how long the oldest of them has waited")


# -- terminals and processes (see docs/server.md, "Terminals over WebSocket") ----------------

MAX_TERMINAL = 10000  # columns or rows, as the agent takes them


class PtyStart(_ProcessStart):
    """The terminal a ``/pty`` WebSocket starts: the first text message (or the query)."""

    type: Literal["start"] = "start"
    cmd: str | None = Field(None, min_length=1, max_length=1 << 16)
    argv: list[str] | None = Field(None, min_length=1, max_length=4096)
    cols: int = Field(80, ge=1, le=MAX_TERMINAL)
    rows: int = Field(24, ge=1, le=MAX_TERMINAL)
    env: dict[str, MaybeSecret] | None = Field(
        None, description='values are strings or {"secret": NAME} (the tenant\'s secret)'
    )
    cwd: str | None = None
    timeout: float | None = Field(None, gt=0, le=MAX_LIFETIME, description="seconds")
    buffer: int | None = Field(
        None,
        ge=MIN_PROCESS_BUFFER,
        le=MAX_PROCESS_BUFFER,
        description="output kept for reattaching, bytes",
    )

    @model_validator(mode="after")
    def _command(self) -> PtyStart:
        if self.cmd is not None and self.argv is not None:
            raise ValueError("give at most one of cmd (a shell string) or argv (a list)")
        if self.cmd is not None:
            _no_nul(self.cmd, "cmd")
        if self.argv is not None and (not self.argv[0] or any("\0" in a for a in self.argv)):
            raise ValueError("argv must be non-empty at [0] and NUL-free")
        return self


class ResizeRequest(_Body):
    """A terminal's new size (the process gets SIGWINCH)."""

    cols: int = Field(ge=1, le=MAX_TERMINAL)
    rows: int = Field(ge=1, le=MAX_TERMINAL)
