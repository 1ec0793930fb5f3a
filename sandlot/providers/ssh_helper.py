"""The host side of the ssh provider's helper (:mod:`.ssh_remote`, one per connection,
interpreter and remote folder): it is started over SSH from its source, then answers JSON
requests by id (install the agent, launch, kill, is it alive, its log)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import shlex
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, ProviderUnavailableError, SandboxStartError
from . import agent_files, ssh_remote

HELLO_TIMEOUT = 30.0
CALL_TIMEOUT = 120.0  # a helper request (a kill waits up to ~15 s for the tree to die)


@functools.cache
def _helper_source() -> str:
    return Path(ssh_remote.__file__).read_text()


class Helper:
    """The host side of one :mod:`.ssh_remote` helper: JSON requests and answers by id."""

    def __init__(self, process: Any, hello: dict[str, Any], where: str) -> None:
        self.process = process
        self.hello = hello
        self.where = where
        self.installed: set[str] = set(hello.get("installed", []))
        self.dead: str | None = None
        self.stderr = b""  # its last words, should it ever have any
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())
        # stdout and stderr share the channel's window: unread stderr would stall both.
        self._drain = asyncio.ensure_future(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        with contextlib.suppress(Exception):
            while chunk := await self.process.stderr.read(4096):
                self.stderr = (self.stderr + chunk)[-4096:]

    @classmethod
    async def start(cls, conn: Any, python: str, root: str, where: str) -> Helper:
        command = f"exec {shlex.quote(python)} -I -S -c {shlex.quote(_helper_source())} "
        command += shlex.quote(root)
        process = await conn.create_process(command, encoding=None)
        try:
            while True:  # a login shell's rc files may print before the helper does
                line = await asyncio.wait_for(process.stdout.readline(), HELLO_TIMEOUT)
                if not line:
                    break
                text = line.decode("utf-8", "replace")
                if text.startswith(ssh_remote.MARKER):
                    return cls(process, json.loads(text[len(ssh_remote.MARKER) :]), where)
        except TimeoutError:
            process.close()
            raise ProviderUnavailableError(f"{python} on {where} did not start in time") from None
        try:
            detail = await asyncio.wait_for(process.stderr.read(8192), 5)
            detail = detail.decode("utf-8", "replace").strip()
        except TimeoutError:
            detail = ""
        process.close()
        raise ProviderUnavailableError(
            f"cannot run {python} on {where}: {detail or 'it exited at once'}"
            " (the agent needs Python 3.8+ there; set python=...)",
            reason="no_python",
        )

    async def _read(self) -> None:
        try:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    break
                answer = json.loads(line)
                future = self._pending.pop(answer.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except Exception as exc:  # the connection broke under us
            self.dead = str(exc) or type(exc).__name__
        self.dead = self.dead or "the SSH session ended"
        error = ProviderUnavailableError(f"lost the connection to {self.where}: {self.dead}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        if self.dead is not None:
            raise ProviderUnavailableError(f"lost the connection to {self.where}: {self.dead}")
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        line = json.dumps({"id": rid, "op": op, **args}, separators=(",", ":")) + "\n"
        self.process.stdin.write(line.encode())
        try:
            answer = await asyncio.wait_for(future, CALL_TIMEOUT)
        except TimeoutError:
            self._pending.pop(rid, None)
            raise ProviderUnavailableError(f"{op} on {self.where} did not answer") from None
        if "error" not in answer:
            return answer
        message = f"{op} on {self.where}: {answer['error']}"
        kind = answer.get("kind")
        if kind == "argument":
            raise InvalidArgumentError(message)
        if kind == "unavailable":
            raise ProviderUnavailableError(message)
        raise SandboxStartError(message)

    async def install_agent(self, python: str) -> tuple[str, bool]:
        """Copy the agent's files for ``python`` over, once per version: its folder name
        (a digest) and whether anything was sent."""
        digest = _digest(python)
        if digest in self.installed:
            return digest, False
        answer = await self.call(
            "install", digest=digest, files=_agent_files(), vendor=_vendor_files(), python=python
        )
        self.installed.add(digest)
        return digest, bool(answer.get("installed"))

    def close(self) -> None:
        self.process.close()
        self._reader.cancel()
        self._drain.cancel()


@functools.cache
def _agent_files() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in agent_files._sources()}


@functools.cache
def _vendor_files() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in agent_files.vendored()}


def _digest(python: str) -> str:
    """The agent's remote folder name: changes with its sources and the interpreter."""
    digest = hashlib.sha256(python.encode())
    for name, text in sorted(_agent_files().items()) + sorted(_vendor_files().items()):
        digest.update(name.encode())
        digest.update(text.encode())
    return digest.hexdigest()[:16]
