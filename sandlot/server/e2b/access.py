"""Who may use a sandbox through the E2B gateway.

The control plane takes sandlot API keys as ``X-API-KEY`` (E2B's header). The sandbox side
takes the sandbox's access token, which the create and connect calls return as
``envdAccessToken``: an HMAC of the sandbox id under the server's secret (the one signed port
URLs use, with its own context), so it needs no storage, survives restarts, and is worthless
for any other sandbox or any other use of the secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from ...errors import AuthenticationError, SandboxNotFoundError
from ..signing import Signer
from ..state import LOCAL_TENANT, Principal, Served, ServerState

CONTEXT = b"sandlot-e2b-access-v1."
MAX_ID = 200  # a sandbox id longer than this is not one of ours: refused before any lookup
# The envd version reported to the SDKs: the newest whose features (envd/versions.py in the
# e2b package: stdin, CloseStdin, octet-stream uploads, file metadata, watch entry info)
# the gateway serves, so the SDKs take their full-featured paths.
ENVD_VERSION = "0.6.4"
ENVD_PORT = 49983  # envd: processes, files, /health
INTERPRETER_PORT = 49999  # the code interpreter: /execute, /contexts


def signer_of(state: ServerState, app_state: Any) -> Signer:
    signer: Signer | None = getattr(app_state, "port_signer", None)
    if signer is None:
        signer = app_state.port_signer = Signer(state.settings.resolved_home())
    return signer


def access_token(signer: Signer, sandbox_id: str) -> str:
    mac = hmac.new(signer.key(), CONTEXT + sandbox_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


async def api_caller(state: ServerState, api_key: str | None) -> Principal:
    """The control plane's caller, by ``X-API-KEY``: the rules of the server's own API
    (no key needed while none exists, on loopback only; a key sent must be valid)."""
    if api_key:
        found = await state.authenticate(api_key.strip())
        if found is None:
            raise AuthenticationError("the API key is not valid (unknown, wrong or revoked)")
        return found
    if await state.auth_required():
        raise AuthenticationError("an API key is required: send it as X-API-KEY")
    return Principal(LOCAL_TENANT, admin=True)


@dataclass
class SandboxCall:
    """A sandbox-side request, authenticated: the sandbox, its tenant, the port asked for."""

    state: ServerState
    principal: Principal
    served: Served
    port: int

    @property
    def sandbox_id(self) -> str:
        return self.served.record.id


async def sandbox_call(conn: HTTPConnection) -> SandboxCall:
    """Authenticate a request that names a sandbox: its access token must be the one this
    server gave for that id. The tenant is the sandbox's own (the token stands for it).
    Raises AuthenticationError (no or wrong token) or a not-found/closed error."""
    state: ServerState = conn.app.state.sandlot
    sandbox_id = conn.headers.get("e2b-sandbox-id", "")
    if not sandbox_id or len(sandbox_id) > MAX_ID:
        raise SandboxNotFoundError(f"no sandbox with id {sandbox_id[:MAX_ID]!r}")
    # The code interpreter's SDK sends only E2B-Traffic-Access-Token on its /contexts calls:
    # the control plane returns the same token as trafficAccessToken, so either header will do.
    headers = conn.headers
    given = headers.get("x-access-token") or headers.get("e2b-traffic-access-token", "")
    expected = access_token(signer_of(state, conn.app.state), sandbox_id)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise AuthenticationError("the sandbox's access token is missing or wrong")
    port_text = conn.headers.get("e2b-sandbox-port", str(ENVD_PORT))
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else -1
    served = state.served.get(sandbox_id)
    tenant = served.record.tenant if served is not None else None
    if tenant is None:  # ended, or never ours: the record says which (and whose)
        record = await _any_record(state, sandbox_id)
        tenant = record.tenant
    principal = Principal(tenant, admin=False)
    return SandboxCall(state, principal, await state.get(principal, sandbox_id), port)


async def _any_record(state: ServerState, sandbox_id: str) -> Any:
    record = await asyncio.to_thread(state.records.get_sandbox, sandbox_id)
    if record is None:
        raise SandboxNotFoundError(f"no sandbox with id {sandbox_id!r}", id=sandbox_id)
    return record
