"""Talking to the Docker engine: the cheap blocking probe of whether it answers (providers
are listed without an event loop), and the aiodocker client, imported only when a container
is made."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from ..errors import ProviderUnavailableError

START_TIMEOUT = 60.0  # engine calls of a create, and the agent's socket appearing
PROBE_TIMEOUT = 2.0  # the synchronous availability check
PROBE_TTL = 10.0  # how long its answer is kept
MISSING = "the docker provider needs aiodocker: pip install 'sandlot[docker]'"


class Probe:
    # A plain class: a dataclass compiles its methods at import, and gc imports this module
    # in every process, docker or not.
    def __init__(self, reason: str | None, runtimes: frozenset[str] | None, until: float):
        self.reason = reason
        self.runtimes = runtimes  # None: not asked yet
        self.until = until


_probes: dict[str, Probe] = {}


def engine_get(path: str, target: str) -> Any:
    """GET ``target`` from the engine's socket with a plain HTTP/1.0 request (no aiohttp:
    this is the cheap, blocking check behind ``sandlot providers``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT)
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    if status_line.split(b" ", 2)[1:2] != [b"200"]:
        raise OSError(f"the engine answered {status_line.decode(errors='replace')!r}")
    return json.loads(body) if body.startswith((b"{", b"[")) else body


def probe(host: str, runtimes: bool = False) -> Probe:
    """Whether the engine at ``host`` answers (and its runtimes, if asked), kept a while."""
    now = time.monotonic()
    cached = _probes.get(host)
    if cached is not None and cached.until > now:  # noqa: SIM102 (one question each)
        if not runtimes or cached.reason is not None or cached.runtimes is not None:
            return cached
    path = host.removeprefix("unix://")
    reason: str | None = None
    found: frozenset[str] | None = None
    if not os.path.exists(path):
        reason = f"no Docker engine socket at {path} (is dockerd running?)"
    else:
        try:
            if runtimes:
                found = frozenset(engine_get(path, "/info").get("Runtimes") or {})
            else:
                engine_get(path, "/_ping")
        except PermissionError:
            reason = (
                f"no permission to use {path} (the Docker engine needs root or the docker group)"
            )
        except (OSError, ValueError, AttributeError) as exc:
            reason = f"the Docker engine at {path} does not answer: {exc}"
    answer = Probe(reason, found, now + PROBE_TTL)
    _probes[host] = answer
    return answer


# -- the lazily imported client -------------------------------------------------------------


def _modules() -> tuple[Any, Any]:
    try:
        import aiodocker
        import aiohttp
    except ImportError:
        raise ProviderUnavailableError(MISSING, provider="docker") from None
    return aiodocker, aiohttp


_API_VERSIONS: dict[str, str] = {}  # engine -> API version it answered, so asked only once


class Client:
    """An aiodocker client for one engine, on one event loop."""

    def __init__(self, host: str) -> None:
        aiodocker, aiohttp = _modules()
        self.host = host
        self.errors: tuple[type[BaseException], ...] = (aiodocker.DockerError, aiohttp.ClientError)
        self.docker_error = aiodocker.DockerError
        # No cap on connections: each watched container holds one for its wait request.
        self.connector = aiohttp.UnixConnector(path=host.removeprefix("unix://"), limit=0)
        self.docker = aiodocker.Docker(
            url="unix://localhost",
            connector=self.connector,
            api_version=_API_VERSIONS.get(host, "auto"),
        )

    def remember_version(self) -> None:
        if self.docker.api_version != "auto":
            _API_VERSIONS[self.host] = self.docker.api_version

    async def close(self) -> None:
        await self.docker.close()
        await self.connector.close()


def slow(what: str) -> str:
    """The error message for an engine call that outlived ``START_TIMEOUT``."""
    return f"the Docker engine did not {what} within {START_TIMEOUT:g} s"
