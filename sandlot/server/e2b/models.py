"""The E2B control plane's bodies, as E2B's REST API names them (camelCase aliases).

Requests ignore fields they do not know (E2B adds some with each SDK release) but bound and
type-check every field they read. Answers carry what the SDKs parse
(``e2b/api/client/models/sandbox.py``, ``sandbox_detail.py``, ``listed_sandbox.py``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ...models import MAX_LIFETIME

DEFAULT_TIMEOUT = 300  # seconds: E2B's default lifetime of a sandbox
MAX_TEMPLATE = 200  # characters of a templateID
MAX_METADATA = 64  # entries; E2B metadata is a few string labels
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1024
MAX_ENV = 256  # variables
MAX_ENV_VALUE = 32 * 1024  # characters of one value (a whole environment stays well below ARG_MAX)
MAX_RULES = 256  # network rules each way
MAX_RULE = 300  # characters of one rule (a name is at most 253, plus a port)

Timeout = Annotated[int, Field(gt=0, le=int(MAX_LIFETIME), strict=True)]  # true is no number
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY)]
MetaValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)]
EnvKey = Annotated[str, StringConstraints(min_length=1, max_length=256)]
EnvValue = Annotated[str, StringConstraints(max_length=MAX_ENV_VALUE)]
RuleText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_RULE)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, defer_build=True)


class NetworkIn(_Body):
    """``network`` of a create call, and the body of ``PUT /sandboxes/{id}/network``."""

    allow_out: list[RuleText] | None = Field(None, alias="allowOut", max_length=MAX_RULES)
    deny_out: list[RuleText] | None = Field(None, alias="denyOut", max_length=MAX_RULES)
    dns_servers: list[RuleText] | None = Field(None, alias="dnsServers", max_length=10)
    egress_proxy: dict[str, Any] | None = Field(None, alias="egressProxy")
    rules: dict[str, Any] | None = None
    allow_public_traffic: bool | None = Field(None, alias="allowPublicTraffic")
    mask_request_host: str | None = Field(None, alias="maskRequestHost", max_length=300)
    https_ports: list[int] | None = Field(None, alias="httpsPorts", max_length=100)
    # Only in the update body (SandboxNetworkUpdateConfig).
    allow_internet_access: bool | None = None


class AutoResume(_Body):
    enabled: bool = False


class NewSandbox(_Body):
    """``POST /v2/sandboxes`` (NewSandboxV2) and ``POST /sandboxes`` (NewSandbox, with
    ``secure``)."""

    template_id: str | None = Field(None, alias="templateID", max_length=MAX_TEMPLATE)
    timeout: Timeout | None = None
    auto_pause: bool | None = Field(None, alias="autoPause")
    auto_pause_memory: bool | None = Field(None, alias="autoPauseMemory")
    auto_resume: AutoResume | None = Field(None, alias="autoResume")
    secure: bool | None = None
    allow_internet_access: bool | None = None
    network: NetworkIn | None = None
    metadata: dict[MetaKey, MetaValue] | None = Field(None, max_length=MAX_METADATA)
    env_vars: dict[EnvKey, EnvValue] | None = Field(None, alias="envVars", max_length=MAX_ENV)
    mcp: dict[str, Any] | None = None
    iam: dict[str, Any] | None = None
    volume_mounts: list[Any] | None = Field(None, alias="volumeMounts", max_length=100)


class ConnectIn(_Body):
    """``POST /v2/sandboxes/{id}/connect``, ``/sandboxes/{id}/connect`` and the older
    ``/sandboxes/{id}/resume`` (ResumedSandbox)."""

    timeout: Timeout | None = None
    memory: bool | None = None
    auto_pause: bool | None = Field(None, alias="autoPause")


class TimeoutIn(_Body):
    timeout: Timeout


class PauseIn(_Body):
    memory: bool | None = None
    require_healthy_guest: bool | None = Field(None, alias="requireHealthyGuest")


class RefreshIn(_Body):
    duration: Annotated[int, Field(ge=0, le=3600)] | None = None


class _SandboxIdentity(BaseModel):
    """What every answer naming a sandbox carries."""

    model_config = ConfigDict(populate_by_name=True, defer_build=True)

    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    alias: str | None = None
    client_id: str = Field(serialization_alias="clientID")
    envd_version: str = Field(serialization_alias="envdVersion")
    envd_access_token: str | None = Field(None, serialization_alias="envdAccessToken")
    domain: str | None = None


class SandboxOut(_SandboxIdentity):
    """What create, connect and resume answer (E2B's ``Sandbox``)."""

    traffic_access_token: str | None = Field(None, serialization_alias="trafficAccessToken")


class SandboxDetailOut(_SandboxIdentity):
    """``GET /sandboxes/{id}`` (E2B's ``SandboxDetail``); a listing leaves out the token
    (E2B's ``ListedSandbox``)."""

    started_at: datetime = Field(serialization_alias="startedAt")
    end_at: datetime = Field(serialization_alias="endAt")
    cpu_count: int = Field(serialization_alias="cpuCount")
    memory_mb: int = Field(serialization_alias="memoryMB")
    disk_size_mb: int = Field(serialization_alias="diskSizeMB")
    metadata: dict[str, str] = Field(default_factory=dict)
    state: Literal["running", "paused"]
    allow_internet_access: bool | None = Field(None, serialization_alias="allowInternetAccess")
    volume_mounts: list[Any] = Field(default_factory=list, serialization_alias="volumeMounts")
    # A sandlot sandbox ends at its timeout, and nothing resumes it but a call.
    lifecycle: dict[str, Any] = Field(
        default_factory=lambda: {"onTimeout": "kill", "autoResume": False}
    )

    def wire(self, *, token: bool) -> dict[str, Any]:
        exclude = (
            None if token else {"envd_access_token", "domain", "allow_internet_access", "lifecycle"}
        )
        return self.model_dump(mode="json", by_alias=True, exclude=exclude)
