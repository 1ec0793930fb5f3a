"""remote: sandboxes on another sandlot server, through its HTTP API.

The manager keeps a local record (so ``connect``, ``list`` and ``kill`` work as for any
provider); the handle holds the server's URL and the sandbox's id there, never the API key.
The key a sandbox was created with is kept in memory by the provider that created it and used
for everything it does with that sandbox later (connect, kill, pause); another process finds
it again by the secret's name it was given as (``{"secret": NAME}``), else in
``SANDLOT_REMOTE_API_KEY``.

Calls wait for a server that restarts (the client's ``retry_for``). With a ``fallback``
provider (e.g. ``bwrap``) configured, creating goes through a circuit breaker instead (one per
provider and server): while the server is failing, the fallback takes new sandboxes at once
(see :meth:`Manager.create <sandlot.manager.Manager.create>`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from ..channel import Channel
from ..errors import SandboxNotFoundError
from ..models import SandboxSpec
from .base import Provider, ProviderConfig, Started


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


class RemoteConfig(ProviderConfig):
    url: str = Field(
        default_factory=lambda: _env("SANDLOT_REMOTE_URL") or "",
        description="the sandlot server, e.g. http://gpu-box:8787 (default $SANDLOT_REMOTE_URL)",
    )
    api_key: str | None = Field(
        default_factory=lambda: _env("SANDLOT_REMOTE_API_KEY"),
        repr=False,
        description='its API key (default $SANDLOT_REMOTE_API_KEY), or {"secret": NAME}; '
        "never stored",
        json_schema_extra={"secret": True},
    )
    provider: str | None = Field(None, description="the provider on the server's side")
    fallback: str | None = Field(
        default_factory=lambda: _env("SANDLOT_REMOTE_FALLBACK"),
        description="a local provider for new sandboxes while the server is unavailable",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("give the server's URL (http://host:port), or set SANDLOT_REMOTE_URL")
        return value.rstrip("/")


class RemoteProvider(Provider):
    name = "remote"
    capabilities = frozenset({"reconnect", "remote"})
    serves_egress = False  # the server serves them
    binds = "forward"
    config_model = RemoteConfig
    caller_settings = frozenset({"provider"})  # which provider the far server uses

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self._clients: dict[tuple[str, str | None, bool], Any] = {}
        self._breakers: dict[str, Any] = {}  # url -> the breaker its fallback waits behind
        self._keys: dict[tuple[str, str], str | None] = {}  # (url, id) -> key created with

    def _client(self, url: str, api_key: str | None, *, fallback: bool = False) -> Any:
        from ..remote import CircuitBreaker, Client

        key = (url, api_key, fallback)
        if key not in self._clients:
            breaker = None
            if fallback:
                breaker = self._breakers.get(url) or CircuitBreaker(url)
                self._breakers[url] = breaker
            self._clients[key] = Client(url=url, api_key=api_key or "", breaker=breaker)
        return self._clients[key]

    def unavailable_reason(self) -> str | None:
        if not _env("SANDLOT_REMOTE_URL"):
            return "no server configured: pass url=... or set SANDLOT_REMOTE_URL"
        return None

    def fallback(self, spec: SandboxSpec) -> str | None:
        config = self.parse_config(spec.config)
        assert isinstance(config, RemoteConfig)
        return config.fallback

    async def create(self, sandbox_id: str, spec: SandboxSpec, folder: Path) -> Started:
        from ..remote.backend import RemoteBackend

        config = self.parse_config(spec.config)
        assert isinstance(config, RemoteConfig)
        remote_spec = spec.model_copy(update={"provider": config.provider, "config": {}})
        client = self._client(config.url, config.api_key, fallback=bool(config.fallback))
        live = await RemoteBackend(client).create(remote_spec)
        handle = {"url": config.url, "id": live.info.id}
        self._keys[(config.url, live.info.id)] = config.api_key
        return Started(handle=handle, channel=live.channel)  # type: ignore[arg-type]

    async def _key(self, handle: dict[str, Any]) -> str | None:
        """The key again, for a later call: the one this provider created the sandbox with,
        else from the secret it was given as (the manager notes which in the handle), else
        the environment."""
        created_with = (str(handle.get("url")), str(handle.get("id")))
        if created_with in self._keys:
            return self._keys[created_with]
        name = (handle.get("secret_config") or {}).get("api_key")
        if name:
            from ..secrets.store import LocalSecrets

            return await LocalSecrets(self.home).get(name)
        return _env("SANDLOT_REMOTE_API_KEY")

    async def connect(self, handle: dict[str, Any]) -> Channel:
        from ..remote.backend import RemoteBackend

        client = self._client(handle["url"], await self._key(handle))
        live = await RemoteBackend(client).connect(handle["id"])
        return live.channel  # type: ignore[return-value]

    async def destroy(self, handle: dict[str, Any]) -> None:
        from ..remote.backend import RemoteBackend

        if "url" not in handle:
            return
        client = self._client(handle["url"], await self._key(handle))
        try:
            await RemoteBackend(client).kill(handle["id"])
        except SandboxNotFoundError:
            pass
        self._keys.pop((str(handle["url"]), str(handle.get("id"))), None)

    async def _backend(self, handle: dict[str, Any]) -> Any:
        from ..remote.backend import RemoteBackend

        return RemoteBackend(self._client(handle["url"], await self._key(handle)))

    def can_pause(self, handle: dict[str, Any]) -> bool:
        return True  # the server answers for its own provider

    async def pause(self, handle: dict[str, Any]) -> None:
        await (await self._backend(handle)).pause(handle["id"])

    async def resume(self, handle: dict[str, Any]) -> None:
        await (await self._backend(handle)).resume(handle["id"])

    async def paused(self, handle: dict[str, Any]) -> bool:
        return bool(await (await self._backend(handle)).is_paused(handle["id"]))

    def is_alive(self, handle: dict[str, Any]) -> bool:
        """Not known without a call: assumed alive until a call says otherwise."""
        return bool(handle.get("id"))
