"""An E2B SDK ``Sandbox`` object for a sandbox made through sandlot's own API, as
``Sandbox.create`` makes it from the control plane's answer: the sandbox side's tests do not
depend on the control plane."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from e2b import ConnectionConfig, Sandbox
from packaging.version import Version
from remote.server import ServerProcess

from sandlot.server.e2b.access import ENVD_PORT, ENVD_VERSION, access_token
from sandlot.server.signing import Signer


def e2b_sandbox(server: ServerProcess, key: str, cls: Any = Sandbox) -> Any:
    """An E2B ``Sandbox`` object for a new sandlot sandbox, made as ``Sandbox.create`` makes
    it from the control plane's answer (the sandbox comes from sandlot's own API here, so
    these tests do not depend on the control plane)."""
    request = urllib.request.Request(
        server.url + "/v1/sandboxes",
        data=json.dumps({"timeout": 600}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        sandbox_id = json.load(answer)["id"]
    token = access_token(Signer(Path(server.home)), sandbox_id)
    headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(ENVD_PORT),
               "X-Access-Token": token}  # fmt: skip
    config = ConnectionConfig(
        api_key=key, api_url=server.url, sandbox_url=server.url, extra_sandbox_headers=headers
    )
    return cls(
        sandbox_id=sandbox_id,
        sandbox_domain=None,
        envd_version=Version(ENVD_VERSION),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )


def kill(server: ServerProcess, key: str, sandbox_id: str) -> None:
    request = urllib.request.Request(
        f"{server.url}/v1/sandboxes/{sandbox_id}",
        method="DELETE",
        headers={"Authorization": f"Bearer {key}"},
    )
    urllib.request.urlopen(request).close()
