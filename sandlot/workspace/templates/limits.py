"""What an imported base may bring in: its size, its file count, and which registries may be
reached without TLS verification. Read from the environment (operator settings, never a
caller's)."""

from __future__ import annotations

import ipaddress
import os

from pydantic import BaseModel, ConfigDict, Field

GiB = 1024**3


class BaseLimits(BaseModel):
    """Bounds on one base image or tree, checked while it is imported."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(default=16 * GiB, gt=0)
    """Total size of the base's files (``SANDLOT_TEMPLATE_MAX_BASE_BYTES``)."""
    max_files: int = Field(default=1_000_000, gt=0)
    """Number of entries in the base (``SANDLOT_TEMPLATE_MAX_BASE_FILES``)."""
    insecure_registries: frozenset[str] = frozenset()
    """Registries (``host`` or ``host:port``) pulled from without TLS verification, besides
    loopback ones (``SANDLOT_INSECURE_REGISTRIES``, comma-separated)."""
    pull_timeout: float = Field(default=1800.0, gt=0)
    """Seconds a pull or an export may take (``SANDLOT_TEMPLATE_PULL_TIMEOUT``)."""

    @classmethod
    def from_env(cls) -> BaseLimits:
        env = os.environ
        values: dict[str, object] = {}
        for key, name in (
            ("max_bytes", "SANDLOT_TEMPLATE_MAX_BASE_BYTES"),
            ("max_files", "SANDLOT_TEMPLATE_MAX_BASE_FILES"),
            ("pull_timeout", "SANDLOT_TEMPLATE_PULL_TIMEOUT"),
        ):
            if env.get(name):
                values[key] = env[name]
        raw = env.get("SANDLOT_INSECURE_REGISTRIES", "")
        values["insecure_registries"] = frozenset(r.strip() for r in raw.split(",") if r.strip())
        return cls.model_validate(values)

    def verify_tls(self, registry: str) -> bool:
        """Whether pulls from ``registry`` (``host[:port]``) verify TLS: always, except for
        loopback registries and the ones the operator listed."""
        if registry in self.insecure_registries:
            return False
        if registry.startswith("["):
            host = registry[1:].split("]", 1)[0]
        else:
            host = registry.split(":", 1)[0]
        if host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return True
