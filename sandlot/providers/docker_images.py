"""Docker images for sandboxes: the pull policy applied at create, and pulls shared, one at a
time per image and engine, however many creates ask for it."""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import ImageNotFoundError, InvalidArgumentError, SandboxStartError
from .docker_config import DockerConfig
from .docker_engine import START_TIMEOUT, Client, slow


class Images:
    """The pulls in flight on one event loop."""

    def __init__(self) -> None:
        self._pulls: dict[tuple[str, str], asyncio.Future[None]] = {}

    def forget(self) -> None:
        """Drop the pulls of an event loop this provider no longer uses."""
        self._pulls.clear()

    async def create_container(
        self, client: Client, body: dict[str, Any], name: str, config: DockerConfig
    ) -> str:
        """Create the container, pulling its image as the pull policy says. Without a pull,
        one call: a missing image is the engine's 404, not an inspect made every time."""
        if config.pull == "always":
            await self.pull(client, config)
        pulled = config.pull == "always"
        while True:
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    return str((await client.docker.containers.create(body, name=name)).id)
            except TimeoutError:
                raise SandboxStartError(slow("create the container")) from None
            except client.docker_error as exc:
                if exc.status != 404 or pulled:
                    raise _refused(exc) from None
            if config.pull == "never":
                raise ImageNotFoundError(
                    f"image {config.image!r} is not on the Docker engine, and pull is 'never' "
                    "(build or load it first, or set pull='missing')",
                    image=config.image,
                )
            await self.pull(client, config)
            pulled = True

    async def pull(self, client: Client, config: DockerConfig) -> None:
        """Pull the image, once at a time per image however many creates ask for it."""
        key = (client.host, config.image)
        pending = self._pulls.get(key)
        if pending is None:
            pending = asyncio.ensure_future(_pull_once(client, config))
            self._pulls[key] = pending
            pending.add_done_callback(lambda _: self._pulls.pop(key, None))
        await asyncio.shield(pending)


async def _pull_once(client: Client, config: DockerConfig) -> None:
    image = config.image
    try:
        async with asyncio.timeout(config.pull_timeout):
            await client.docker.images.pull(image)
    except TimeoutError:
        why = f"no answer within {config.pull_timeout:g} s"
    except client.errors as exc:
        if getattr(exc, "status", None) == 900:
            raise
        why = getattr(exc, "message", None) or str(exc)
    else:
        return
    raise ImageNotFoundError(f"cannot pull image {image!r}: {why}", image=image)


def _refused(exc: Any) -> Exception:
    """The engine refused to create the container (one it cannot reach stays as it is:
    :meth:`DockerProvider._engine` says so)."""
    if exc.status == 900:
        return exc
    if exc.status == 400:
        return InvalidArgumentError(
            f"the Docker engine refused the sandbox's settings: {exc.message}"
        )
    return SandboxStartError(f"the Docker engine cannot create the container: {exc.message}")
