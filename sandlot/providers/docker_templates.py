"""The docker provider's side of ``SandboxSpec.template``: a template becomes an engine image,
``sandlot-template:<first 12 hex of its manifest digest>``, made once per template and engine
by ``docker import`` of its merged layers (the same files a bwrap sandbox of it sees), and
the sandbox runs that image as it would any other.

Templates built on ``host`` have no root filesystem of their own (they are the host's system
plus layers) and are refused here: a container cannot be given the host's ``/usr``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError, SandboxStartError

if TYPE_CHECKING:
    from ..workspace.templates.store import ResolvedTemplate, TemplateStore
    from .docker_engine import Client

REPO = "sandlot-template"
IMPORT_TIMEOUT = 1800.0  # seconds: the engine reads a whole root filesystem


def store(home: Path) -> TemplateStore:
    from ..workspace.templates.store import TemplateStore  # only sandboxes of templates

    return TemplateStore(home)


def unpin(home: Path, sandbox_id: str) -> None:
    """Drop a sandbox's pin; nothing if it has none (or this state folder has no store)."""
    if (home / "templates").is_dir():
        store(home).unpin(sandbox_id)


def resolve(home: Path, ref: str) -> ResolvedTemplate:
    """The template ``ref`` names, if docker can run it."""
    template = store(home).resolve(ref)
    if template.host_base:
        raise InvalidArgumentError(
            f"template {ref!r} is built on the host's system (--from host), which a container "
            "cannot use: build it from an image (oci:, docker:, rootfs: or tar:) for the docker "
            "provider, or use the bwrap provider",
            template=ref,
        )
    return template


def image_name(template: ResolvedTemplate) -> str:
    return f"{REPO}:{template.digest[:12]}"


class TemplateImages:
    """The imports in flight on one event loop: one per image and engine, however many
    creates ask for it."""

    def __init__(self) -> None:
        self._imports: dict[tuple[str, str], asyncio.Future[None]] = {}

    def forget(self) -> None:
        self._imports.clear()

    async def ensure(self, client: Client, template: ResolvedTemplate, home: Path) -> str:
        """The template's image on the engine (imported now if it is not): its name."""
        image = image_name(template)
        key = (client.host, image)
        pending = self._imports.get(key)
        if pending is None:
            pending = asyncio.ensure_future(_import_once(client, image, template, home))
            self._imports[key] = pending
            pending.add_done_callback(lambda _: self._imports.pop(key, None))
        await asyncio.shield(pending)
        return image


async def _import_once(client: Client, image: str, template: ResolvedTemplate, home: Path) -> None:
    try:
        await client.docker.images.inspect(image)
        return  # imported before (by this process or another)
    except client.docker_error as exc:
        if exc.status != 404:
            raise
    from ..workspace.templates.layers import write_merged_tar
    from ..workspace.templates.store import remove_tree

    templates = store(home)
    work = templates.tmp_dir("docker-import-")
    try:
        tar = work / "root.tar"

        def write() -> None:
            with open(tar, "wb") as out:
                write_merged_tar(template.lowers, out)

        await asyncio.to_thread(write)
        repo, _, tag = image.partition(":")
        with open(tar, "rb") as data:
            try:
                async with (
                    asyncio.timeout(IMPORT_TIMEOUT),
                    client.docker._query(
                        "images/create",
                        method="POST",
                        params={"fromSrc": "-", "repo": repo, "tag": tag},
                        data=data,
                        headers={"Content-Type": "application/x-tar"},
                        timeout=None,
                    ) as response,
                ):
                    answer = await response.read()
            except TimeoutError:
                raise SandboxStartError(
                    f"the Docker engine did not import template {template.ref} within "
                    f"{IMPORT_TIMEOUT:g} s"
                ) from None
        # The engine streams JSON progress lines; a failure is a line with "error".
        for line in answer.splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("error"):
                raise SandboxStartError(
                    f"the Docker engine cannot import template {template.ref}: "
                    f"{str(message['error'])[:500]}"
                )
    finally:
        await asyncio.to_thread(remove_tree, work)
