"""process: no isolation at all, for development and debugging.

The agent runs as a plain child process with the host's file system, network and user. Used
only when asked for by name; ``sandlot providers`` and the sandbox's info say it is unisolated.
``/workspace`` in file operations, working folders and ``HOME`` is mapped onto the sandbox's
host folder; commands that spell out ``/workspace`` in their own text see the real root.

Pause is SIGSTOP (and resume SIGCONT) to the agent and to the process group of each of its
descendants (every command runs in a session of its own): the same reach as a kill, which
ends those groups. A process that leaves the tree and its groups (a daemon that double-forks
into a new session) escapes both, as it escapes every other limit of this provider.
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
from ..errors import InvalidArgumentError, SandboxClosedError, SandboxError
from ..models import SandboxSpec
from . import agent_files, procinfo, quota, spawn
from .base import AgentPythonConfig, Provider, Started

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
TERM_GRACE = 1.0
STOP_TIMEOUT = 5.0  # seconds a pause may take to see every process stopped
STOPPED = frozenset("TtZX")  # /proc states of a process that runs no more code


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
    capabilities = frozenset({"reconnect", "unisolated", "pause"})
    config_model = ProcessConfig

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self._children: dict[int, spawn.ChildProcess] = {}

    def unavailable_reason(self) -> str | None:
        return None

    async def create(self, sandbox_id: str, spec: SandboxSpec, folder: Path) -> Started:
        config = self.parse_config(spec.config)
        assert isinstance(config, ProcessConfig)
        quota.refuse(spec.resources.disk_mb, self.name)
        refuse_alias(spec, "the process provider")
        refuse_template(spec, "process")
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
        # SIGTERM first: the agent then kills its commands' process groups before it exits
        # (a paused agent gets it when continued, and so do its commands).
        pid, started = handle.get("pid", -1), handle.get("started")
        procinfo.kill(pid, started, signal.SIGTERM)
        if self.is_paused(handle):
            _signal_tree(pid, signal.SIGCONT)
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

    # -- pause and resume: SIGSTOP and SIGCONT ----------------------------------------------

    def can_pause(self, handle: dict[str, Any]) -> bool:
        return "pid" in handle

    def _agent(self, handle: dict[str, Any]) -> int:
        pid, started = handle.get("pid", -1), handle.get("started")
        if not procinfo.is_running(pid, started):
            raise SandboxClosedError("the sandbox is gone: it cannot be paused or resumed")
        return int(pid)

    async def pause(self, handle: dict[str, Any]) -> None:
        """Stop the agent first (so it starts nothing more), then the groups of everything
        below it, again until a pass finds every process stopped: a process that forked
        into a new session before its stop arrived is caught by the next pass."""
        pid = self._agent(handle)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        delay = 0.0005
        while _signal_tree(pid, signal.SIGSTOP):
            if loop.time() >= deadline:
                _signal_tree(pid, signal.SIGCONT)
                raise SandboxError(
                    f"cannot pause the sandbox: its processes did not stop within "
                    f"{STOP_TIMEOUT:g} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def resume(self, handle: dict[str, Any]) -> None:
        _signal_tree(self._agent(handle), signal.SIGCONT)

    def is_paused(self, handle: dict[str, Any]) -> bool:
        pid, started = handle.get("pid", -1), handle.get("started")
        return procinfo.is_running(pid, started) and _state(pid) == "T"


def _state(pid: int) -> str | None:
    """The one-letter state of the process in /proc (R, S, D, T, Z, ...), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :][:1].decode()


def _signal_tree(pid: int, signum: int) -> bool:
    """Send ``signum`` to the agent's process group and to that of each of its descendants
    (never to this process's own group): the agent's first on a stop, so it starts nothing
    more, and last on a continue, so its commands go on before it looks at them. True if
    some process there was still running when the signal was sent."""
    groups: list[int] = []
    running = False
    for member in (pid, *procinfo.descendants(pid)):
        try:
            group = os.getpgid(member)
        except ProcessLookupError:
            continue
        if group not in groups:
            groups.append(group)  # the agent's is first
        state = _state(member)
        running = running or (state is not None and state not in STOPPED)
    if signum != signal.SIGSTOP:
        groups.reverse()
    for group in groups:
        if group > 1 and group != os.getpgrp():
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                continue
    return running


def refuse_alias(spec: SandboxSpec, what: str) -> None:
    """An unisolated agent has no mount namespace: it cannot show the workspace at a second
    path (and must not make one on the host)."""
    if spec.workspace_alias is not None:
        raise InvalidArgumentError(
            f"{what} cannot mount the workspace at a second path "
            "(workspace_alias): use an isolating provider (bwrap, docker)"
        )


def refuse_template(spec: SandboxSpec, provider: str) -> None:
    """Templates need a root file system of their own: a provider that cannot give one
    refuses them by name rather than start the host's system instead."""
    if spec.template is not None:
        raise InvalidArgumentError(
            f"templates run on bwrap, docker and remote; {provider}: not yet "
            f"(template {spec.template!r} asked for)"
        )
