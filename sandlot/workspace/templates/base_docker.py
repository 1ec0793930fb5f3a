"""``docker:REF``: an image on the local Docker engine, exported as a root filesystem.

A container is created from the image (never started: nothing of the image runs), its
filesystem streamed out with the engine's export call into a file, and the container
removed. The tar is then unpacked by :mod:`.untar` like any other hostile tar. The digest is
the image id, so the same image is exported once."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any

from ...errors import ImageNotFoundError, ProviderUnavailableError, SandlotError
from ...providers.docker_config import default_host
from ...providers.docker_engine import Client
from .base_oci import OciRef
from .limits import BaseLimits
from .tree import Refused

EXPORT_LABEL = "sandlot.template-export"


class DockerImage:
    """What the engine says about the image: its id and config."""

    def __init__(self, ref: str, image_id: str, config: dict[str, Any]) -> None:
        self.ref = ref
        self.id = image_id
        self.config = config


@contextlib.asynccontextmanager
async def _client(ref: str) -> Any:
    host = default_host()
    client = Client(host)
    try:
        yield client
    except client.docker_error as exc:
        if exc.status == 900:
            raise ProviderUnavailableError(
                f"docker: base {ref!r} needs the Docker engine at {host}: {exc.message}",
                provider="docker",
            ) from None
        raise SandlotError(f"the Docker engine failed to export {ref!r}: {exc.message}") from None
    except client.errors as exc:
        raise ProviderUnavailableError(
            f"docker: base {ref!r}: the Docker engine at {host} failed: {exc}", provider="docker"
        ) from None
    finally:
        await client.close()


_IMAGE_ID = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")


def check_ref(ref: str) -> None:
    """A reference as ``docker pull`` spells it, or an image id: nothing else reaches the
    engine's API paths."""
    if not _IMAGE_ID.match(ref):
        OciRef(ref)  # InvalidArgumentError naming it


async def inspect(ref: str) -> DockerImage:
    check_ref(ref)
    async with _client(ref) as client:
        try:
            found = await client.docker.images.inspect(ref)
        except client.docker_error as exc:
            if exc.status == 404:
                raise ImageNotFoundError(
                    f"image {ref!r} is not on the Docker engine (docker: bases are not pulled; "
                    "pull or build it first, or use oci:)",
                    image=ref,
                ) from None
            raise
    config = found.get("Config") or {}
    return DockerImage(ref, str(found["Id"]), config if isinstance(config, dict) else {})


async def export(image: DockerImage, target: Path, limits: BaseLimits) -> None:
    """Write the image's filesystem as a tar to ``target`` (at most ``max_bytes`` plus the
    tar's headers: a bigger one is cut off and refused)."""
    cap = limits.max_bytes + limits.max_files * 1024
    async with _client(image.ref) as client:
        body = {
            "Image": image.id,
            "Cmd": ["/nonexistent"],  # never started; an image without a command needs one
            "Entrypoint": [],
            "NetworkDisabled": True,
            "Labels": {EXPORT_LABEL: "1"},
        }
        container = await client.docker.containers.create(body)
        try:
            async with (
                asyncio.timeout(limits.pull_timeout),
                client.docker._query(f"containers/{container.id}/export") as response,
            ):
                written = 0
                with open(target, "wb") as out:
                    async for chunk in response.content.iter_chunked(1 << 20):
                        written += len(chunk)
                        if written > cap:
                            raise Refused(f"larger than the limit of {limits.max_bytes} bytes")
                        await asyncio.to_thread(out.write, chunk)
        except TimeoutError:
            raise SandlotError(
                f"the Docker engine did not export {image.ref!r} within {limits.pull_timeout:g} s"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                await container.delete(force=True)
