"""``/v1/keys``: API keys, for admin keys only (the CLI's ``sandlot keys`` works on the store
directly, for the first key)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..errors import NotFoundError
from ..store.keys import ApiKey, NewKey
from .deps import Admin, State

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    tenant: str | None = Field(None, max_length=64, description="default: a new tenant")
    admin: bool = False


@router.post("", status_code=201, response_model=NewKey)
async def create_key(body: KeyRequest, state: State, caller: Admin) -> NewKey:
    """A new key; its token is in this answer only (the server keeps a hash)."""
    created = await state.hub.write(state.keys.create, body.name, body.tenant, body.admin)
    state.forget_auth()
    return created


@router.get("", response_model=list[ApiKey])
async def list_keys(state: State, caller: Admin, include_revoked: bool = False) -> list[ApiKey]:
    return await asyncio.to_thread(state.keys.list, None, include_revoked)


@router.delete("/{key_id}", status_code=204)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=64)], state: State, caller: Admin
) -> Response:
    if not await state.hub.write(state.keys.revoke, key_id):
        raise NotFoundError(f"no active key {key_id!r}", id=key_id)
    state.forget_auth()
    return Response(status_code=204)
