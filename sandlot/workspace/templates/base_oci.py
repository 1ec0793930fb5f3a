"""``oci:REF``: an image pulled from an OCI or Docker registry with no Docker engine.

skopeo (Debian's ``skopeo``) fetches the image into an OCI layout and umoci (``umoci``)
unpacks its layers into a root filesystem. Why these two: both are maintained, need no
engine or daemon, speak Docker v2 and OCI manifests (and manifest lists), and
``umoci unpack --rootless`` applies layers and their whiteouts without root, resolving
every path inside the tree (securejoin). What comes out is still checked by
:func:`~.tree.check_tree`: umoci keeps setuid bits, for one.

The digest recorded is the sha256 of the manifest the registry serves for REF (the manifest
list's for a multi-platform image: what ``docker pull`` prints), and the pull is made by
that digest so a tag moved meanwhile cannot mix two images. The host's registry
credentials (``REGISTRY_AUTH_FILE``, containers' ``auth.json``, ``~/.docker/config.json``)
and proxy variables reach skopeo through the environment, untouched. TLS is verified except
for loopback registries and those listed in ``SANDLOT_INSECURE_REGISTRIES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ...errors import ImageNotFoundError, InvalidArgumentError, ProviderUnavailableError
from .limits import BaseLimits
from .tree import Refused

# A reference as docker and skopeo spell it: [registry[:port]/]path[:tag][@sha256:hex].
_REF = re.compile(
    r"^(?:(?P<registry>(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
STDERR_LIMIT = 2000
TAG = "base"


class OciRef:
    """A parsed ``oci:`` reference."""

    def __init__(self, ref: str) -> None:
        match = _REF.match(ref) if len(ref) <= 512 else None
        if match is None:
            raise InvalidArgumentError(
                f"{ref!r} is not an image reference (expected [registry/]name[:tag][@sha256:...])"
            )
        registry = match["registry"]
        if registry and not ("." in registry or ":" in registry or registry == "localhost"):
            registry = None  # "library/python": a path, not a registry
            path = ref.split("@")[0].rsplit(":", 1)[0] if match["tag"] else ref.split("@")[0]
        else:
            path = match["path"]
        self.ref = ref
        self.registry = registry  # None: the host's default registry (containers' config)
        self.name = f"{registry}/{path}" if registry else path
        self.pinned = match["digest"]

    def by_digest(self, digest: str) -> str:
        return f"{self.name}@{digest}"


def _tls_args(ref: OciRef, limits: BaseLimits, flag: str) -> list[str]:
    if ref.registry is not None and not limits.verify_tls(ref.registry):
        return [f"{flag}=false"]
    return []


async def _run(
    args: list[str], timeout: float, what: str, ref: str, unpacking: bool = False
) -> bytes:
    """Run a tool; its failure becomes the sandlot error for pulling ``ref`` (or, for an
    image that cannot be unpacked, a refusal of its content)."""
    if shutil.which(args[0]) is None:
        raise ProviderUnavailableError(
            f"oci: bases need {args[0]} (Debian: apt-get install skopeo umoci)", provider="oci"
        )
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        raise ImageNotFoundError(
            f"cannot {what} {ref!r}: no answer within {timeout:g} s", image=ref
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else f"{args[0]} exited with {proc.returncode}"
        if unpacking:
            raise Refused(f"{args[0]} cannot {what} it: {why[:STDERR_LIMIT]}")
        raise ImageNotFoundError(f"cannot {what} {ref!r}: {why[:STDERR_LIMIT]}", image=ref)
    return out


async def manifest_digest(ref: OciRef, limits: BaseLimits) -> str:
    """The digest of the manifest the registry serves for the reference (one small request,
    no layers): what the cache is keyed on."""
    if ref.pinned:
        return ref.pinned
    raw = await _run(
        [
            "skopeo",
            "inspect",
            "--raw",
            *_tls_args(ref, limits, "--tls-verify"),
            f"docker://{ref.ref}",
        ],
        limits.pull_timeout,
        "find the image",
        ref.ref,
    )
    return "sha256:" + hashlib.sha256(raw).hexdigest()


async def pull(
    ref: OciRef, digest: str, work: Path, limits: BaseLimits
) -> tuple[Path, dict[str, Any]]:
    """Fetch the image by digest into ``work`` and unpack it; return its root filesystem
    (still to be checked) and its image config (``Env``, ``WorkingDir``, ...)."""
    layout = work / "layout"
    await _run(
        [
            "skopeo",
            "copy",
            "--quiet",
            *_tls_args(ref, limits, "--src-tls-verify"),
            f"docker://{ref.by_digest(digest)}",
            f"oci:{layout}:{TAG}",
        ],
        limits.pull_timeout,
        "pull",
        ref.ref,
    )
    blobs = sum(f.stat().st_size for f in (layout / "blobs").rglob("*") if f.is_file())
    if blobs > limits.max_bytes:
        raise Refused(f"larger than the limit of {limits.max_bytes} bytes")
    config = _image_config(layout)
    # "raw unpack": the root filesystem only, no runtime bundle (whose mtree of every file's
    # hash would cost more than the unpack itself).
    rootfs = work / "rootfs"
    await _run(
        ["umoci", "raw", "unpack", "--rootless", "--image", f"{layout}:{TAG}", str(rootfs)],
        limits.pull_timeout,
        "unpack",
        ref.ref,
        unpacking=True,
    )
    shutil.rmtree(layout)
    return rootfs, config


def _image_config(layout: Path) -> dict[str, Any]:
    """The image's config (``config`` of its config blob) from the OCI layout skopeo wrote."""

    def blob(digest: str) -> Any:
        algo, _, hexa = digest.partition(":")
        if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexa):
            raise InvalidArgumentError(f"the image names a bad blob {digest!r}")
        path = layout / "blobs" / "sha256" / hexa
        if path.stat().st_size > 4 << 20:
            raise InvalidArgumentError("the image's manifest or config is over 4 MiB")
        return json.loads(path.read_bytes())

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    config = blob(manifest["config"]["digest"]).get("config") or {}
    return config if isinstance(config, dict) else {}


def env_of(config: dict[str, Any]) -> dict[str, str]:
    """An image config's ``Env`` list as a dict (malformed entries ignored)."""
    env: dict[str, str] = {}
    for item in config.get("Env") or []:
        if isinstance(item, str) and "=" in item:
            key, _, value = item.partition("=")
            if key:
                env[key] = value
    return env


def workdir_of(config: dict[str, Any]) -> str | None:
    workdir = config.get("WorkingDir")
    return workdir if isinstance(workdir, str) and workdir.startswith("/") else None


def platform() -> str:
    """The platform skopeo picks from a manifest list on this host (part of the cache key)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
