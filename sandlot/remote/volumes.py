"""Remote mode's named volumes: a sandlot server's ``/v1/volumes`` for the API key's tenant
(what ``sandlot.volumes`` and ``sandlot volume`` use when ``SANDLOT_URL`` is set)."""

from __future__ import annotations

import builtins
from urllib.parse import quote

from ..models import VolumeInfo, check_volume_name
from .client import Client


class RemoteVolumes:
    """The caller's tenant's volumes on a sandlot server."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client or Client()

    async def create(self, name: str, size_mb: int | None = None) -> VolumeInfo:
        body = {"name": check_volume_name(name), "size_mb": size_mb}
        answer = await self.client.call("POST", "/v1/volumes", json=body)
        return VolumeInfo.model_validate(answer)

    async def list(self) -> builtins.list[VolumeInfo]:
        answer = await self.client.call("GET", "/v1/volumes")
        return [VolumeInfo.model_validate(item) for item in answer or []]

    async def get(self, name: str) -> VolumeInfo:
        answer = await self.client.call("GET", _path(name))
        return VolumeInfo.model_validate(answer)

    async def remove(self, name: str, force: bool = False) -> None:
        params = {"force": "true" if force else "false"}
        await self.client.call("DELETE", _path(name), params=params)


def _path(name: str) -> str:
    return "/v1/volumes/" + quote(check_volume_name(name), safe="")
