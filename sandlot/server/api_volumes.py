"""``/v1/volumes``: the caller's tenant's named volumes (docs/volumes.md). A tenant sees,
mounts and removes only its own: names are looked up among its volumes, so another's is
"not found". Quotas: ``volume_count`` and ``volume_total_mb`` of the server's settings."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..models import VolumeInfo
from .deps import Caller, State

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])

VolumeName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=63,
        description="a-z, 0-9, '.', '_', '-', starting with a letter or digit",
    ),
]


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63, description="the volume's name, unique per tenant")
    size_mb: int | None = Field(
        None,
        description="its size cap in MiB (default 10 GiB); refused where the server cannot "
        "enforce one",
    )


@router.post("", status_code=201, response_model=VolumeInfo)
async def create_volume(body: VolumeCreate, state: State, caller: Caller) -> VolumeInfo:
    """Create an empty volume (409 ``volume_error`` if it exists or a quota is full)."""
    settings = state.settings
    return await asyncio.to_thread(
        state.manager.volumes.create,
        body.name,
        body.size_mb,
        caller.tenant,
        max_count=settings.volume_count,
        max_total_mb=settings.volume_total_mb,
    )


@router.get("", response_model=list[VolumeInfo])
async def list_volumes(state: State, caller: Caller) -> list[VolumeInfo]:
    """The tenant's volumes, by name."""
    return await asyncio.to_thread(state.manager.volumes.list, caller.tenant)


@router.get("/{name}", response_model=VolumeInfo)
async def show_volume(name: VolumeName, state: State, caller: Caller) -> VolumeInfo:
    """One volume: size, bytes used, the live sandboxes that mount it."""
    return await asyncio.to_thread(state.manager.volumes.get, name, caller.tenant)


@router.delete("/{name}", status_code=204)
async def delete_volume(
    name: VolumeName,
    state: State,
    caller: Caller,
    force: Annotated[
        bool, Query(description="remove it even while mounted (its sandboxes keep the files)")
    ] = False,
) -> Response:
    """Delete a volume and its files (409 ``volume_in_use`` while mounted, unless forced)."""
    await asyncio.to_thread(state.manager.volumes.remove, name, caller.tenant, force)
    return Response(status_code=204)
