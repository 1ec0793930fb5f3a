"""What a docker sandbox is made of: the provider's settings (:class:`DockerConfig`) and the
engine's container settings for one sandbox (:func:`container_settings`), with the labels
that tie a container to its sandbox and state folder."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from ..models import SandboxSpec, mounted_volumes
from . import agent_files, userns
from .base import ProviderConfig

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's own
RUN_MOUNT = "/.sandlot-run"  # the bind-mounted host folder that holds the agent's socket
SOCKET_NAME = "agent.sock"
SECCOMP_NAME = "seccomp.bpf"
# What commands may change (the agent's Landlock domain, where Docker's seccomp profile and
# the kernel allow one).
WRITABLE = ("/workspace", "/tmp", "/dev/shm", "/dev")
LABEL_SANDBOX = "sandlot.sandbox"
LABEL_HOME = "sandlot.home"
LABEL_OWNER = "sandlot.owner"
LABEL_CREATED = "sandlot.created"
LABEL_EXPIRES = "sandlot.expires"


def default_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


class DockerConfig(ProviderConfig):
    # Built on first use: gc imports this module in every process, docker or not.
    model_config = ConfigDict(extra="forbid", defer_build=True)

    image: str = Field(
        "",
        description="the image to run; it needs a Python 3 interpreter (required unless the "
        "sandbox starts from a template, whose own image replaces it)",
    )
    pull: Literal["never", "missing", "always"] = Field(
        "missing",
        description="never: only local images; missing: pull when not on the engine; "
        "always: pull before every create",
    )
    pull_timeout: float = Field(300.0, gt=0, le=3600, description="seconds a pull may take")
    runtime: str | None = Field(
        None, description="OCI runtime the engine knows (e.g. runsc for gVisor); default: its own"
    )
    python: str = Field("python3", description="the image's interpreter that runs the agent")
    user: str | None = Field(
        None,
        description="UID:GID the sandbox runs as (numeric; owns /workspace); default: when "
        "sandlot runs as root, a fresh unprivileged uid per sandbox (sandboxes share no "
        "per-user kernel counters), else sandlot's own",
    )
    docker_host: str = Field(
        default_factory=default_host,
        description="the engine's Unix socket, unix:///path (default $DOCKER_HOST or "
        + DEFAULT_HOST
        + "); it must be on this machine, which bind-mounts its folders",
    )

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if value and (any(c.isspace() for c in value) or value.startswith("-")):
            raise ValueError("give an image reference such as 'python:3.12-slim'")
        return value

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        if not value or any(c.isspace() or c == "\0" for c in value):
            raise ValueError("give the interpreter's name on the image's PATH, or its path")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{1,10}:\d{1,10}", value):
            raise ValueError("give a numeric UID:GID such as '1000:1000'")
        return value

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", value):
            raise ValueError("give the name of a runtime the engine knows, such as 'runsc'")
        return value

    @field_validator("docker_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.startswith("unix:///"):
            raise ValueError(
                "the docker provider needs the engine on this machine (unix:///path/to/socket): "
                "it bind-mounts host folders into the container"
            )
        return value

    def ids(self) -> tuple[int, int]:
        """The user asked for, else a fresh host uid (as root) or sandlot's own."""
        if self.user is not None:
            uid, _, gid = self.user.partition(":")
            return int(uid), int(gid)
        if os.geteuid() == 0:
            fresh = userns.fresh_user()
            return fresh.uid, fresh.gid
        return os.geteuid(), os.getegid()


def container_settings(
    sandbox_id: str,
    spec: SandboxSpec,
    config: DockerConfig,
    mounts: tuple[Path, Path, Path],
    home_hash: str,
    owner: int,
) -> dict[str, Any]:
    """The engine's container settings (``POST /containers/create``). ``mounts``: the host
    folders of the workspace, the agent and its run folder; ``owner``: the pid labelled as
    the container's owner (0: none, a detached create)."""
    workspace, agent_root, run = mounts
    argv = _agent_argv(spec, config)
    now = int(time.time())
    env = {"PATH": DEFAULT_PATH, "HOME": "/workspace", "LANG": "C.UTF-8", **spec.plain_env}
    return {
        "Image": config.image,
        "Entrypoint": argv[:1],  # replaces the image's, so the agent is what runs
        "Cmd": argv[1:],
        "WorkingDir": "/workspace",
        "Hostname": "sandlot",
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": {
            LABEL_SANDBOX: sandbox_id,
            LABEL_HOME: home_hash,
            LABEL_OWNER: str(owner),
            LABEL_CREATED: str(now),
            LABEL_EXPIRES: str(now + int(spec.timeout) + 1),
        },
        "HostConfig": _host_config(spec, config, workspace, agent_root, run),
    }


def _agent_argv(spec: SandboxSpec, config: DockerConfig) -> list[str]:
    return agent_files.command(
        config.python,
        agent_files.MOUNT_POINT,
        "--socket", f"{RUN_MOUNT}/{SOCKET_NAME}",
        "--workdir", spec.workdir,
        "--deadline", str(spec.timeout),
        "--rlimit", "core=0",
        *(arg for path in _writable(spec) for arg in ("--writable", path)),
        "--reap-all",
    )  # fmt: skip


def _writable(spec: SandboxSpec) -> tuple[str, ...]:
    alias = spec.workspace_alias
    rw = tuple(b.path for b in [*spec.binds, *mounted_volumes(spec)] if b.mode == "rw")
    return (*WRITABLE, *rw) if alias is None else (*WRITABLE, alias, *rw)


def _host_config(
    spec: SandboxSpec, config: DockerConfig, workspace: Path, agent_root: Path, run: Path
) -> dict[str, Any]:
    """The walls: network, capabilities, read-only root, mounts and limits."""
    resources = spec.resources
    memory = resources.memory_mb << 20
    host_config: dict[str, Any] = {
        "NetworkMode": "bridge" if spec.network == "full" else "none",
        "Init": True,  # docker-init as PID 1 reaps orphans and passes signals on
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "ReadonlyRootfs": True,
        "IpcMode": "private",
        "Mounts": [
            _bind(workspace, "/workspace"),
            # The same folder at the alias: the engine makes the mount point (and its
            # parents) in the container's root, resolved within it, before it is read-only.
            *([_bind(workspace, spec.workspace_alias)] if spec.workspace_alias else []),
            _bind(agent_root, agent_files.MOUNT_POINT, read_only=True),
            _bind(run, RUN_MOUNT),
            # The caller's binds, resolved by the manager (the engine follows symlinks in
            # them again: see docs/security.md).
            *(_bind(Path(b.host), b.path, read_only=b.mode == "ro") for b in spec.binds),
            # Named volumes: their folders, resolved by the manager (workspace/volumes.py).
            *(_bind(Path(v.host), v.path, read_only=v.mode == "ro") for v in mounted_volumes(spec)),
        ],
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={resources.tmp_mb}m,mode=1777"},
        "Memory": memory,
        "MemorySwap": memory,  # equal: no swap
        "NanoCpus": int(resources.cpus * 1e9),
        "PidsLimit": resources.pids,
        # The agent's own output only (commands have their own pipes); capped.
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
    }
    if config.runtime:
        host_config["Runtime"] = config.runtime
    return host_config


def _bind(source: Path, target: str, read_only: bool = False) -> dict[str, Any]:
    return {"Type": "bind", "Source": str(source), "Target": target, "ReadOnly": read_only}
