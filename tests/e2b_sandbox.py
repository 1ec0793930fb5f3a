"""A sandbox for the E2B SDKs made without the E2B control plane: created through sandlot's
own API, then the SDK's ``Sandbox`` built as ``Sandbox.connect`` builds it, with the access
token the control plane would hand out (computed from the server's secret)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from e2b import ConnectionConfig
from packaging.version import Version

from sandlot.server.e2b.access import ENVD_PORT, ENVD_VERSION, access_token
from sandlot.server.signing import Signer

T = TypeVar("T")


def token_for(home: Path, sandbox_id: str) -> str:
    return access_token(Signer(home), sandbox_id)


def e2b_sandbox(cls: type[T], server: Any, sandbox_id: str, api_key: str) -> T:
    token = token_for(server.home, sandbox_id)
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(ENVD_PORT)}
    headers["X-Access-Token"] = token
    config = ConnectionConfig(
        api_key=api_key, api_url=server.url, sandbox_url=server.url, extra_sandbox_headers=headers
    )
    return cls(  # type: ignore[call-arg]
        sandbox_id=sandbox_id,
        sandbox_domain=None,
        envd_version=Version(ENVD_VERSION),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )
