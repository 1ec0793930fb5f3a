"""Shared start-up for providers whose agent is a local child process (bwrap, process).

The host binds and listens on the agent's Unix socket itself and hands the listening socket to
the agent as an inherited descriptor: the host can connect at once (the connection waits in
the backlog until the agent accepts), nothing polls for a socket file to appear, and the
socket file is visible only on the host, never inside the sandbox.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..channel import Channel
from ..errors import InvalidArgumentError, SandboxStartError
from ..models import alias_of
from . import procinfo

SOCKET_NAME = "agent.sock"
LOG_NAME = "agent.log"
MAX_SOCKET_PATH = 107
HELLO_TIMEOUT = 30.0


def make_workspace(
    folder: Path, workdir: str, owner: HostUser | None = None, alias: str | None = None
) -> Path:
    """The sandbox's /workspace on the host, with the working folder inside it created,
    owned by the host user the sandbox runs as. A working folder beneath the workspace's
    ``alias`` is the same folder beneath /workspace."""
    workspace = folder / "workspace"
    made = [workspace]
    workspace.mkdir(exist_ok=True)
    inner = PurePosixPath(alias_of(workdir, alias))
    if inner.is_relative_to("/workspace") and ".." not in inner.parts:
        target = workspace
        for part in inner.relative_to("/workspace").parts:
            target = target / part
            target.mkdir(exist_ok=True)
            if target.is_symlink():  # never followed on the host (nor chowned through)
                raise InvalidArgumentError(f"workdir {workdir}: {part} is a symbolic link")
            made.append(target)
    if owner is not None:
        for path in made:
            os.chown(path, owner.uid, owner.gid)
    return workspace


def listen(folder: Path) -> socket.socket:
    path = str(folder / SOCKET_NAME)
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise InvalidArgumentError(
            f"the state folder path is too long for a Unix socket ({path}); set SANDLOT_HOME "
            "to a shorter path"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


class ChildProcess:
    """A spawned agent process (or the bwrap that wraps it) and a future for its exit."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.started = procinfo.start_time(popen.pid)
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        self._held: list[int] = []
        loop.add_reader(self._pidfd, self._on_exit)

    def hold(self, fd: int) -> None:
        """Keep ``fd`` open while the child lives (a lifeline's end), closed at its exit."""
        self._held.append(fd)

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        while self._held:
            os.close(self._held.pop())
        code = self.popen.wait()
        if not self.exited.done():
            self.exited.set_result(code)

    async def kill(self) -> None:
        if not self.exited.done():
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass
            await asyncio.shield(self.exited)


@dataclass(frozen=True)
class HostUser:
    """An unprivileged host account to run a sandbox as."""

    uid: int
    gid: int


def spawn(
    argv: list[str],
    folder: Path,
    listener: socket.socket,
    env: dict[str, str],
    extra_fds: tuple[int, ...] = (),
) -> ChildProcess:
    """Start the agent (from the event loop's thread: ``--die-with-parent`` binds to it)."""
    with open(folder / LOG_NAME, "ab") as log:
        try:
            popen = subprocess.Popen(
                argv,
                pass_fds=(listener.fileno(), *extra_fds),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxStartError(f"cannot start {argv[0]}: {exc}") from None
    return ChildProcess(popen)


async def connect_started(folder: Path, child: ChildProcess, what: str) -> Channel:
    """Connect to a just-started agent, failing fast (with its log) if it dies first."""
    connecting = asyncio.ensure_future(
        Channel.connect_unix(str(folder / SOCKET_NAME), timeout=HELLO_TIMEOUT)
    )
    waiting: set[asyncio.Future[Any]] = {connecting, child.exited}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if connecting.done() and connecting.exception() is None:
        return connecting.result()
    if not connecting.done():
        connecting.cancel()
    # Retrieved whenever it ends (it may fail after the cancel), so asyncio does not log it.
    connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
    await child.kill()
    raise SandboxStartError(f"{what} failed to start: {read_log(folder)}")


def read_log(folder: Path, limit: int = 2000) -> str:
    try:
        text = (folder / LOG_NAME).read_bytes()[-limit:].decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "(no output)"


def handle(child: ChildProcess, folder: Path, **extra: Any) -> dict[str, Any]:
    return {
        "pid": child.pid,
        "started": child.started,
        "socket": str(folder / SOCKET_NAME),
        **extra,
    }
