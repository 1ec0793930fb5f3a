"""ssh: sandboxes on another machine, reached over SSH (``pip install 'sandlot[ssh]'``).

``Sandbox.create(provider="ssh", host="gpu-box")`` connects with asyncssh (host details from
``~/.ssh/config`` or the settings), starts a small helper there (:mod:`.ssh_remote`, one per
connection), copies the agent once per version into ``REMOTE_DIR/agent/DIGEST`` and starts
it detached from the SSH session: under bubblewrap, with the bwrap provider's defaults, when
the remote host has a working bwrap (``isolation="auto"`` or ``"bwrap"``), otherwise as the
``process`` provider would. The agent listens on a Unix socket in the sandbox's remote folder;
the channel runs over the SSH connection itself (a direct-streamlocal channel bridged to a
local socketpair), so the remote host needs no open port and no route back.

Host keys are checked strictly against known_hosts (never a prompt): an unknown or changed
key raises :class:`~sandlot.errors.HostKeyError`. One SSH connection per host is shared by
its sandboxes; when it drops, each channel dials again (reopening the connection) for
``reconnect_for`` seconds, and commands keep running meanwhile. The handle holds everything
needed to reach and destroy the sandbox from another process: connection settings, remote
paths, and the agent's pid and start time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, field_validator

from ..channel import Channel
from ..errors import (
    HostKeyError,
    ProviderUnavailableError,
    SandboxClosedError,
    SandboxNotFoundError,
    SandboxStartError,
    SandlotError,
)
from ..models import SandboxSpec, alias_of
from . import agent_files, bwrap, etc, quota, ssh_connect
from .base import Provider, ProviderConfig, Started
from .process import refuse_alias, refuse_template
from .ssh_bridge import open_bridge
from .ssh_helper import HELLO_TIMEOUT, Helper

KEEPALIVE = 15.0  # seconds between keepalives: a dead link is noticed within ~3 of them
ALIVE_RECHECK = 5.0  # is_alive asks the remote host at most this often per sandbox
VISIBLE_IN_SANDBOX = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/")


class SshConfig(ProviderConfig):
    host: str = Field(description="host name or ~/.ssh/config alias of the remote machine")
    user: str | None = Field(None, description="remote account (default: ssh config, then you)")
    port: int | None = Field(None, ge=1, le=65535, description="SSH port (default: ssh config, 22)")
    known_hosts: str | None = Field(
        None, description="known_hosts file (default: ssh config, then ~/.ssh/known_hosts)"
    )
    client_keys: list[str] | None = Field(
        None, description="private key files (default: ssh config, ssh-agent, ~/.ssh/id_*)"
    )
    ssh_config: list[str] | None = Field(
        None, description="OpenSSH client config files to read (default: ~/.ssh/config)"
    )
    python: str = Field("python3", description="interpreter on the remote host")
    isolation: Literal["auto", "bwrap", "none"] = Field(
        "auto",
        description="bwrap: bubblewrap on the remote host (refused if it has none); none: the "
        "agent runs unisolated there, as with the process provider; auto: bwrap if it works",
    )
    remote_dir: str = Field(
        ".cache/sandlot", description="sandlot's folder on the remote host (relative: to $HOME)"
    )
    connect_timeout: float = Field(15.0, gt=0, le=600, description="seconds to connect")
    reconnect_for: float = Field(
        60.0, ge=0, le=86400, description="seconds a dropped connection is dialled again"
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value) or value.startswith("-"):
            raise ValueError("give a host name or ssh config alias")
        return value

    @field_validator("ssh_config", "client_keys", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("python", "remote_dir")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if not value or "\0" in value or "\n" in value:
            raise ValueError("must be a non-empty single line")
        return value


@dataclass(frozen=True)
class _Target:
    """How to reach a host: from the settings at create, from the handle afterwards."""

    host: str
    port: int | None
    user: str | None
    known_hosts: str | None
    client_keys: tuple[str, ...] | None
    ssh_config: tuple[str, ...] | None
    connect_timeout: float

    @classmethod
    def of(cls, source: dict[str, Any]) -> _Target:
        keys, configs = source.get("client_keys"), source.get("ssh_config")
        return cls(
            host=source["host"],
            port=source.get("port"),
            user=source.get("user"),
            known_hosts=source.get("known_hosts"),
            client_keys=None if keys is None else tuple(keys),
            ssh_config=None if configs is None else tuple(configs),
            connect_timeout=float(source.get("connect_timeout") or 15.0),
        )

    def __str__(self) -> str:
        where = f"{self.user}@{self.host}" if self.user else self.host
        return f"{where}:{self.port}" if self.port else where

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "known_hosts": self.known_hosts,
            "client_keys": None if self.client_keys is None else list(self.client_keys),
            "ssh_config": None if self.ssh_config is None else list(self.ssh_config),
            "connect_timeout": self.connect_timeout,
        }


# -- connections ---------------------------------------------------------------------------


class _Host:
    """One SSH connection to a host (opened on demand, reopened after a drop) and its
    helpers (one per interpreter and remote folder)."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.conn: Any = None
        self.helpers: dict[tuple[str, str], Helper] = {}
        self._lock = asyncio.Lock()

    def open(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    async def connection(self) -> Any:
        if self.open():
            return self.conn
        async with self._lock:
            if not self.open():
                self.conn = await _connect(self.target)
                self.helpers.clear()  # they ended with the old connection
            return self.conn

    async def helper(self, python: str, root: str) -> Helper:
        key = (python, root)
        found = self.helpers.get(key)
        if found is not None and found.dead is None and self.open():
            return found
        conn = await self.connection()
        async with self._lock:
            found = self.helpers.get(key)
            if found is None or found.dead is not None:
                found = await Helper.start(conn, python, root, str(self.target))
                self.helpers[key] = found
            return found

    def close(self) -> None:
        for helper in self.helpers.values():
            helper.close()
        self.helpers.clear()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


async def _connect(target: _Target) -> Any:
    """Open an SSH connection; every failure becomes a sandlot error that says what to do."""
    try:
        import asyncssh
    except ImportError:
        raise ProviderUnavailableError(
            "the ssh provider needs asyncssh: pip install 'sandlot[ssh]'"
        ) from None
    kwargs: dict[str, Any] = {
        "host": target.host,
        "config": () if target.ssh_config is None else list(target.ssh_config),
        "connect_timeout": target.connect_timeout,
        "keepalive_interval": KEEPALIVE,
        "keepalive_count_max": 3,
        "agent_forwarding": False,
    }
    if target.port is not None:
        kwargs["port"] = target.port
    if target.user is not None:
        kwargs["username"] = target.user
    if target.client_keys is not None:
        kwargs["client_keys"] = list(target.client_keys)
    if target.known_hosts is not None:
        path = Path(target.known_hosts).expanduser()
        if not path.is_file():
            raise HostKeyError(
                f"no known_hosts file at {path}: the host key of {target} cannot be checked",
                host=target.host,
            )
        kwargs["known_hosts"] = str(path)
    try:
        return await ssh_connect.connect(asyncssh, kwargs)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyError(
            f"the host key of {target} is not trusted ({exc.reason}): add the right key to "
            "known_hosts (e.g. after checking `ssh-keyscan` output)",
            host=target.host,
        ) from None
    except asyncssh.PermissionDenied as exc:
        raise ProviderUnavailableError(
            f"SSH authentication to {target} failed ({exc.reason}): check user and client_keys",
            reason="auth",
        ) from None
    except asyncssh.DisconnectError as exc:
        raise ProviderUnavailableError(f"SSH to {target} failed: {exc.reason}") from None
    except (OSError, TimeoutError, asyncssh.Error, ValueError, KeyError) as exc:
        # ValueError/KeyError: unreadable key or config files.
        detail = str(exc) or type(exc).__name__
        raise ProviderUnavailableError(f"cannot reach {target} over SSH: {detail}") from None


class SshProvider(Provider):
    name = "ssh"
    # Per sandbox: bwrap when the remote host has it, else unisolated (the handle's
    # "isolation" says which), so the provider as a whole does not promise isolation.
    isolated = False
    capabilities = frozenset({"reconnect", "remote", "isolation"})
    config_model = SshConfig

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self._hosts: dict[_Target, _Host] = {}
        self._known: dict[tuple[str, str], tuple[float, bool]] = {}  # is_alive's memory
        self._probes: set[asyncio.Future[Any]] = set()
        self.uploads = 0  # agent copies this provider sent (tests check it stays at one)

    def unavailable_reason(self) -> str | None:
        try:
            import asyncssh  # noqa: F401
        except ImportError:
            return "asyncssh is not installed: pip install 'sandlot[ssh]'"
        return None

    def _host(self, target: _Target) -> _Host:
        host = self._hosts.get(target)
        if host is None:
            host = self._hosts[target] = _Host(target)
        return host

    # -- create -----------------------------------------------------------------------------

    async def create(self, sandbox_id: str, spec: SandboxSpec, folder: Path) -> Started:
        config = self.parse_config(spec.config)
        assert isinstance(config, SshConfig)
        quota.refuse(spec.resources.disk_mb, self.name)
        refuse_template(spec, "ssh hosts")
        target = _Target.of(config.model_dump())
        host = self._host(target)
        helper = await host.helper(config.python, config.remote_dir)
        facts = helper.hello
        isolation = _isolation(config, facts, str(target))
        if isolation == "none":
            refuse_alias(spec, "the ssh provider with isolation='none'")
        python = _agent_python(config, facts, isolation, str(target))
        root = facts["root"]
        digest, uploaded = await helper.install_agent(python)
        self.uploads += int(uploaded)
        agent_root = f"{root}/agent/{digest}"
        remote = f"{root}/sandboxes/{sandbox_id}"
        argv, env, slots = _agent_command(spec, isolation, python, agent_root, remote)
        request: dict[str, Any] = {"dir": remote, "argv": argv, "env": env, "slots": slots}
        request["workdir"] = _workdir_parts(alias_of(spec.workdir, spec.workspace_alias))
        if isolation == "bwrap":
            files = etc.synthetic(bwrap.SANDBOX_UID, bwrap.SANDBOX_GID)
            request["etc"] = {"allowlist": list(etc.ALLOWLIST), "files": files}
        launched = await helper.call("launch", **request)
        handle = {
            **target.to_dict(),
            "python": config.python,
            "remote_dir": config.remote_dir,
            "reconnect_for": config.reconnect_for,
            "root": root,
            "dir": remote,
            "socket": launched["socket"],
            "pid": launched["pid"],
            "started": launched["started"],
            "isolation": isolation,
            "isolated": isolation == "bwrap",
        }
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            channel = await self._channel(handle, exited)
        except BaseException as exc:
            log = ""
            try:
                log = (await helper.call("log", dir=remote))["log"]
                await helper.call("kill", dir=remote, pid=handle["pid"], started=handle["started"])
            except SandlotError:
                pass
            if isinstance(exc, SandlotError):
                what = "bwrap" if isolation == "bwrap" else "the agent"
                raise SandboxStartError(
                    f"{what} failed to start on {target}: {log or exc}"
                ) from None
            raise
        self._known[_key(handle)] = (time.monotonic(), True)
        return Started(handle=handle, channel=channel, exited=exited)

    # -- connect ----------------------------------------------------------------------------

    async def _channel(
        self, handle: dict[str, Any], exited: asyncio.Future[int] | None = None
    ) -> Channel:
        target = _Target.of(handle)
        path = handle["socket"]
        holder: list[Channel] = []

        async def dial() -> socket.socket:
            host = self._host(target)
            conn = await host.connection()
            try:
                return await open_bridge(conn, path)
            except Exception as exc:
                import asyncssh

                if not isinstance(exc, asyncssh.ChannelOpenError) or conn.is_closed():
                    # The connection dropped under us: worth dialling again.
                    raise ProviderUnavailableError(f"SSH to {target} failed: {exc}") from None
                if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                    raise ProviderUnavailableError(
                        f"sshd on {target} refuses forwarding to Unix sockets "
                        "(set AllowStreamLocalForwarding yes)"
                    ) from None
            # sshd could not connect to the socket. If the agent's process is gone too (its
            # deadline, a kill from elsewhere), there is no point in dialling again.
            if await self._still_running(host, handle):
                raise ProviderUnavailableError(f"the sandbox's agent on {target} did not accept")
            self._known[_key(handle)] = (time.monotonic(), False)
            error = SandboxClosedError("the sandbox's agent is no longer running")
            if holder:
                holder[0].fail(error)  # stop redialling: requests waiting fail now
            if exited is not None and not exited.done():
                exited.set_result(-1)
            raise error

        channel = await Channel.connect_with(
            dial, timeout=HELLO_TIMEOUT, redial_for=float(handle.get("reconnect_for", 60.0))
        )
        holder.append(channel)
        return channel

    async def _still_running(self, host: _Host, handle: dict[str, Any]) -> bool:
        """Whether the agent's process lives (True when that cannot be found out now)."""
        try:
            helper = await host.helper(*_helper_key(handle))
            pid, started = handle.get("pid"), handle.get("started")
            return bool((await helper.call("alive", pid=pid, started=started))["alive"])
        except SandlotError:
            return True

    async def connect(self, handle: dict[str, Any]) -> Channel:
        try:
            return await self._channel(handle)
        except SandboxClosedError:
            if self._known.get(_key(handle), (0, True))[1]:
                raise
            raise SandboxNotFoundError("the sandbox is no longer running") from None

    # -- destroy ----------------------------------------------------------------------------

    async def destroy(self, handle: dict[str, Any]) -> None:
        if "dir" not in handle or "host" not in handle:
            return  # the create failed before anything started remotely
        target = _Target.of(handle)
        helper = await self._host(target).helper(*_helper_key(handle))
        await helper.call(
            "kill",
            dir=handle["dir"],
            pid=handle.get("pid"),
            started=handle.get("started"),
            term=handle.get("isolation") != "bwrap",
        )
        self._known[_key(handle)] = (time.monotonic(), False)

    def is_alive(self, handle: dict[str, Any]) -> bool:
        """The last known state, never a network wait: refreshed in the background (over an
        already open connection only) when older than a few seconds."""
        if "socket" not in handle:
            return False
        key = _key(handle)
        checked, alive = self._known.get(key, (0.0, True))
        if alive and time.monotonic() - checked > ALIVE_RECHECK:
            self._refresh(handle, key)
        return alive

    def _refresh(self, handle: dict[str, Any], key: tuple[str, str]) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        host = self._hosts.get(_Target.of(handle))
        helper = None if host is None else host.helpers.get(_helper_key(handle))
        if host is None or not host.open() or helper is None or helper.dead is not None:
            return
        self._known[key] = (time.monotonic(), True)  # one probe at a time

        async def probe() -> None:
            pid, started = handle.get("pid"), handle.get("started")
            answer = await helper.call("alive", pid=pid, started=started)
            self._known[key] = (time.monotonic(), bool(answer.get("alive")))

        task = asyncio.ensure_future(probe())
        self._probes.add(task)
        task.add_done_callback(self._probe_done)

    def _probe_done(self, task: asyncio.Future[Any]) -> None:
        self._probes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed probe leaves the last known state

    async def settle(self) -> None:
        if self._probes:
            await asyncio.gather(*self._probes, return_exceptions=True)

    async def close(self) -> None:
        """Close the SSH connections (sandboxes keep running until killed or timed out)."""
        for host in self._hosts.values():
            host.close()
        self._hosts.clear()


def _key(handle: dict[str, Any]) -> tuple[str, str]:
    return (str(handle.get("host")), str(handle.get("socket")))


def _helper_key(handle: dict[str, Any]) -> tuple[str, str]:
    return (handle.get("python") or "python3", handle.get("remote_dir") or ".cache/sandlot")


def _isolation(config: SshConfig, facts: dict[str, Any], where: str) -> str:
    problem = facts.get("bwrap")
    if config.isolation == "none" or (config.isolation == "auto" and problem):
        return "none"
    if problem:
        raise ProviderUnavailableError(
            f"bwrap cannot isolate on {where}: {problem} (or set isolation='none')",
            reason=problem,
        )
    return "bwrap"


def _agent_python(config: SshConfig, facts: dict[str, Any], isolation: str, where: str) -> str:
    """The interpreter that runs the agent: the configured one, resolved on the remote host.
    Under bwrap it must be visible in the sandbox (which sees /usr, not e.g. ~/.pyenv)."""
    python = str(facts["python"])
    if isolation == "none" or python.startswith(VISIBLE_IN_SANDBOX):
        return python
    if config.python == "python3" and facts.get("has", {}).get("/usr/bin/python3"):
        return "/usr/bin/python3"  # the default named a python outside /usr: use the system's
    raise ProviderUnavailableError(
        f"{python} on {where} is not visible inside a bwrap sandbox (only /usr is): set "
        "python to an interpreter under /usr, or isolation='none'"
    )


def _workdir_parts(workdir: str) -> list[str]:
    inner = PurePosixPath(workdir)
    if inner.is_relative_to("/workspace") and ".." not in inner.parts:
        return list(inner.relative_to("/workspace").parts)
    return []


def _agent_command(
    spec: SandboxSpec, isolation: str, python: str, agent_root: str, remote: str
) -> tuple[list[str], dict[str, str], dict[str, int]]:
    """argv, environment and slots of the remote agent. The slots are argv positions the
    helper fills in over there: ``fd`` (the listening socket it binds), ``etc`` (the /etc
    snapshot it builds) and ``top`` (replaced by binds of the host's /bin, /lib, ...)."""
    workspace = f"{remote}/workspace"
    agent_args = ["--workdir", spec.workdir, "--deadline", str(spec.timeout)]
    if isolation == "none":
        env = {"PATH": bwrap.DEFAULT_PATH, "HOME": workspace, "LANG": "C.UTF-8", **spec.plain_env}
        agent_args += ["--map", f"/workspace={workspace}"]
        argv = agent_files.command(python, agent_root, *agent_args, "--listen-fd")
        return [*argv, "-"], env, {"fd": len(argv)}
    # The bwrap provider's defaults, minus what needs the remote host's root: no cgroups
    # (rlimits instead) and no user switch (the sandbox runs as the SSH account).
    resources = spec.resources
    agent_args += ["--rlimit", f"as={resources.memory_mb * 1024 * 1024}"]
    agent_args += ["--rlimit", f"nproc={resources.pids}", "--rlimit", "core=0"]
    agent_args += bwrap.writable_args(spec.workspace_alias)  # as in a local bwrap sandbox
    agent_args += ["--reap-all"]
    # Detached from the SSH session: the agent's own deadline ends it, not a parent.
    argv = bwrap.isolation_args(None, die_with_parent=False, full_network=spec.network == "full")
    slots = {"top": len(argv)}
    argv += ["-", "--ro-bind"]
    slots["etc"] = len(argv)
    argv += ["-", "/etc"]
    argv += bwrap.mount_args(workspace, agent_root, resources.tmp_mb, spec.workspace_alias)
    argv += bwrap.environment_args(spec.plain_env)
    argv += ["--", *agent_files.command(python, agent_files.MOUNT_POINT, *agent_args)]
    argv += ["--listen-fd"]
    slots["fd"] = len(argv)
    return [*argv, "-"], {"PATH": bwrap.DEFAULT_PATH}, slots
