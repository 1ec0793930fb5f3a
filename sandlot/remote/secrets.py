"""Remote mode's secret store: a sandlot server's ``/v1/secrets`` for the API key's tenant
(what ``sandlot secrets`` uses when ``SANDLOT_URL`` is set).

Here rather than beside the other stores in :mod:`sandlot.secrets.store`: remote mode builds
on the secrets package, never the other way round.
"""

from __future__ import annotations

import builtins

from ..errors import SecretError
from ..secrets.models import SecretInfo, check_name, check_value
from ..secrets.store import SecretStore
from .client import Client


class RemoteSecrets(SecretStore):
    """A sandlot server's secrets (the caller's tenant). Values go in and are used there;
    they never come back out, so :meth:`get` is refused."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client or Client()

    def __repr__(self) -> str:
        return f"RemoteSecrets({self.client.url!r})"

    async def set(self, name: str, value: str) -> None:
        await self.client.set_secret(check_name(name), check_value(value))

    async def get(self, name: str) -> str:
        check_name(name)
        raise SecretError(
            f"the value of {name!r} stays on the server at {self.client.url}: secrets are "
            "used there, never read back",
            name=name,
        )

    async def list(self) -> builtins.list[SecretInfo]:
        return await self.client.list_secrets()

    async def delete(self, name: str) -> bool:
        return await self.client.delete_secret(check_name(name))
