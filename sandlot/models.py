"""Pydantic models for everything that crosses a boundary (SDK, CLI, store, later HTTP)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_TIMEOUT = 300.0  # sandbox lifetime, seconds
DEFAULT_COMMAND_TIMEOUT = 60.0
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def describe(error: ValidationError, what: str) -> str:
    """One line per problem: ``invalid sandbox settings: timeout: must be > 0; ...``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(x) for x in item["loc"]) or "value"
        parts.append(f"{where}: {item['msg']}")
    return f"invalid {what}: " + "; ".join(parts)


def check_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
    return env


class Resources(BaseModel):
    """Limits for one sandbox. Enforced with cgroups where the host has them, else rlimits."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(512, ge=16, description="memory limit (RAM, no swap)")
    pids: int = Field(256, ge=8, description="maximum number of processes and threads")
    cpus: float = Field(1.0, gt=0, description="CPU time, in cores")
    tmp_mb: int = Field(256, ge=1, description="size of the writable /tmp")


class SandboxSpec(BaseModel):
    """What to create. Provider-specific settings go in ``config``, validated by the provider."""

    model_config = ConfigDict(extra="forbid")

    provider: str | None = None
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0, description="lifetime in seconds")
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/workspace"
    metadata: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_env(value)

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("provider must be a name, or None for the default")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("workdir must be an absolute path")
        return value


SandboxState = Literal["running", "stopped"]


class SandboxInfo(BaseModel):
    """A sandbox's record, as the store keeps it."""

    id: str
    provider: str
    state: SandboxState = "running"
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime
    owner_pid: int
    handle: dict[str, Any] = Field(default_factory=dict, repr=False)


class CommandResult(BaseModel):
    """How a command ended, and what it printed.

    ``stdout``/``stderr`` are decoded as UTF-8 with replacement; the raw bytes are in
    ``stdout_bytes``/``stderr_bytes``. Output beyond the result cap keeps only its tail, and
    ``truncated`` says so (the streaming callbacks still saw every byte).
    """

    exit_code: int
    signal: int | None = None
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    truncated: bool = False
    pid: int | None = None

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


EntryType = Literal["file", "dir", "symlink", "other"]


class EntryInfo(BaseModel):
    """One file-system entry inside a sandbox (``lstat``: symlinks are not followed)."""

    name: str
    path: str
    type: EntryType
    size: int
    mode: int
    mtime: float
    symlink_target: str | None = None


class ProviderInfo(BaseModel):
    """Whether a provider can run here, and if not, why."""

    name: str
    available: bool
    reason: str | None = None
    isolated: bool
    capabilities: list[str] = Field(default_factory=list)
