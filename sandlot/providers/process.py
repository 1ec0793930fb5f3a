"""process: no isolation at all, for development and debugging.

The agent runs as a plain child process with the host's file system, network and user. Used
only when asked for by name; ``sandlot providers`` and the sandbox's info say it is unisolated.
``/workspace`` in file operations, working folders and ``HOME`` is mapped onto the sandbox's
host folder; commands that spell out ``/workspace`` in their own text see the real root.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from pydantic import Field

from ..channel import Channel
from ..channel.handoff import dial_unix
from ..models import SandboxSpec
from . import agent_files, procinfo, spawn
from .base import AgentPythonConfig, Provider, Started

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
TERM_GRACE = 1.0


_warned = False


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "the 'process' provider runs commands on the host without any isolation",
            RuntimeWarning,
            stacklevel=2,
        )


class ProcessConfig(AgentPythonConfig):
    python: str = Field(sys.executable, description="interpreter that runs the agent")


class ProcessProvider(Provider):
    name = "process"
    isolated = False
    capabilities = frozenset({"reconnect", "unisolated"})
    config_model = ProcessConfig

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self._children: dict[int, spawn.ChildProcess] = {}

    def unavailable_reason(self) -> str | None:
        return None

    async def create(self, sandbox_id: str, spec: SandboxSpec, folder: Path) -> Started:
        config = self.parse_config(spec.config)
        assert isinstance(config, ProcessConfig)
        agent_root = agent_files.prepare(self.home, config.python)
        workspace = spawn.make_workspace(folder, spec.workdir)
        _warn_once()
        env = {"PATH": DEFAULT_PATH, "HOME": str(workspace), "LANG": "C.UTF-8", **spec.plain_env}
        listener = spawn.listen(folder)
        try:
            argv = agent_files.command(
                config.python,
                str(agent_root),
                "--listen-fd", str(listener.fileno()),
                "--map", f"/workspace={workspace}",
                "--workdir", spec.workdir,
                "--deadline", str(spec.timeout),
                *([] if self.detached else ["--parent", str(os.getpid())]),
            )  # fmt: skip
            child = spawn.spawn(argv, folder, listener, env)
        finally:
            listener.close()
        self._children[child.pid] = child
        child.exited.add_done_callback(lambda _: self._children.pop(child.pid, None))
        channel = await spawn.connect_started(folder, child, "the agent")
        return Started(handle=spawn.handle(child, folder), channel=channel, exited=child.exited)

    async def connect(self, handle: dict[str, Any]) -> Channel:
        return await Channel.connect_unix(handle["socket"])

    async def dial_local(self, handle: dict[str, Any]) -> socket.socket | None:
        return await dial_unix(handle["socket"])

    async def destroy(self, handle: dict[str, Any]) -> None:
        # SIGTERM first: the agent then kills its commands' process groups before it exits.
        pid, started = handle.get("pid", -1), handle.get("started")
        procinfo.kill(pid, started, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TERM_GRACE
        child = self._children.get(pid)
        while procinfo.is_running(pid, started) and loop.time() < deadline:
            if child is not None:
                await asyncio.wait([child.exited], timeout=deadline - loop.time())
            else:
                await asyncio.sleep(0.005)
        if child is not None:
            await child.kill()
        else:
            procinfo.kill(pid, started)

    def is_alive(self, handle: dict[str, Any]) -> bool:
        return procinfo.is_running(handle.get("pid", -1), handle.get("started"))
