"""``/v1/secrets``: the caller's tenant's secrets. Values go in and are used on the server
(``{"secret": "NAME"}`` references); no answer ever carries one, only names and dates.

Values are encrypted at rest with AES-256-GCM under the server's key: ``SANDLOT_SECRET_KEY``
(32 bytes, urlsafe base64) or else ``secret.key`` in the server's state folder, created on
first use with mode 0600. Servers sharing one database need the same key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..secrets.store import (
    MAX_VALUE_BYTES,
    DatabaseSecrets,
    SecretInfo,
    check_name,
    check_value,
    secret_not_found,
)
from .deps import Caller, State
from .state import Principal, ServerState

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])

SecretName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        description="letters, digits, '_', '.', '-', starting with a letter or '_'",
    ),
]


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(
        max_length=MAX_VALUE_BYTES,
        description=f"the value: text, at most {MAX_VALUE_BYTES} bytes as UTF-8, no NUL",
    )

    def __repr__(self) -> str:
        return "SecretValue(value=<hidden>)"  # never in a log or a traceback

    __str__ = __repr__


def _store(state: ServerState, caller: Principal) -> DatabaseSecrets:
    return DatabaseSecrets(
        state.db,
        caller.tenant,
        home=state.settings.resolved_home(),
        writer=state.hub.write,
    )


@router.put("/{name}", status_code=204)
async def set_secret(name: SecretName, body: SecretValue, state: State, caller: Caller) -> Response:
    """Store a secret (replacing the value of one of that name)."""
    await _store(state, caller).set(check_name(name), check_value(body.value))
    return Response(status_code=204)


@router.get("", response_model=list[SecretInfo])
async def list_secrets(state: State, caller: Caller) -> list[SecretInfo]:
    """The tenant's secrets by name, with when they were created and last set; never values."""
    return await _store(state, caller).list()


@router.delete("/{name}", status_code=204)
async def delete_secret(name: SecretName, state: State, caller: Caller) -> Response:
    """Forget a secret (404 ``secret_not_found`` when the tenant has none of that name)."""
    if not await _store(state, caller).delete(check_name(name)):
        raise secret_not_found(name)
    return Response(status_code=204)
