"""bubblewrap: the default provider on Linux.

New user, PID, network, IPC, UTS and mount namespaces; all capabilities dropped; the root is
an empty, read-only tmpfs with an allowlist of host paths bound read-only (/usr and its
symlinks, a minimal /etc with no secrets); a host folder per sandbox is the writable
``/workspace``; ``/tmp`` is a size-capped tmpfs; the environment holds only what the caller
passed. Memory, process and CPU limits come from cgroups (v1 or v2) when the host lets us
create groups, otherwise from rlimits set by the agent. Where there are groups, the cgroup
freezer pauses and resumes a sandbox.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from ..channel import Channel
from ..channel.handoff import dial_unix
from ..errors import (
    InvalidArgumentError,
    ProviderUnavailableError,
    SandboxClosedError,
    SandboxError,
)
from ..models import ProviderInfo, Resources, SandboxSpec, overlaps
from ..supervisor import Supervisor
from . import (
    agent_files,
    binds,
    cgroups,
    etc,
    idmap,
    procinfo,
    quota,
    rootfs,
    seccomp,
    spawn,
    templated,
    userns,
)
from .base import AgentPythonConfig, Provider, Started

SANDBOX_UID = 1000
SANDBOX_GID = 1000
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SHM_BYTES = 64 * 1024 * 1024
ADOPT_TIMEOUT = 2.0
# Spare user namespaces are made this long after a sandbox took one: after its start, not
# competing with it for the CPU.
REPLENISH_AFTER = 0.05
NOBODY = 65534
# What commands may change (the agent's Landlock domain): the read-write mounts, and /dev's
# character devices (null, tty, ...).
WRITABLE = ("/workspace", "/tmp", "/dev/shm", "/dev")


class BwrapConfig(AgentPythonConfig):
    python: str = Field("/usr/bin/python3", description="host interpreter that runs the agent")
    ro_binds: list[str] = Field(
        default_factory=list, description="extra host paths to expose read-only at the same path"
    )

    host_user: str | int | None = Field(
        None,
        description="host account the sandbox runs as; default: when sandlot runs as root, a "
        "fresh unprivileged uid per sandbox (so an escape lands unprivileged and sandboxes "
        "share no per-user kernel counters or keyrings), else the current user",
    )

    root_upper: str | None = Field(
        None,
        description="build mode, for the operator and template builds only (never from a "
        "server's caller): the template's root becomes writable, its changes landing in this "
        "host folder (an overlayfs upper folder), and the sandbox runs as uid 0",
    )

    @field_validator("root_upper")
    @classmethod
    def _absolute_upper(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or ".." in value.split("/")):
            raise ValueError(f"{value!r} is not an absolute, normalised path")
        return value

    @field_validator("ro_binds")
    @classmethod
    def _absolute_binds(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"{path!r} is not an absolute, normalised path")
        return value


class BwrapProvider(Provider):
    name = "bwrap"
    isolated = True
    capabilities = frozenset({"isolation", "limits", "reconnect", "no-network"})
    binds = "local"
    config_model = BwrapConfig

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self._children: dict[int, spawn.ChildProcess] = {}  # pid -> bwrap we started
        self._cleanups: set[asyncio.Future[bool]] = set()

    # -- availability -----------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        reason = _static_reason()
        if reason is None and not os.access("/usr/bin/python3", os.X_OK):
            reason = "no /usr/bin/python3 on the host (it runs the agent inside the sandbox)"
        return reason or _probe()

    def info(self) -> ProviderInfo:
        info = super().info()
        system = self._cgroups if info.available else None
        if system is not None and (system.version == 2 or "freezer" in system.roots):
            info = info.model_copy(update={"capabilities": sorted({*info.capabilities, "pause"})})
        if info.available and quota.unavailable_reason() is None:
            extra = {*info.capabilities, "disk-quota"}
            info = info.model_copy(update={"capabilities": sorted(extra)})
        return info

    @functools.cached_property
    def _cgroups(self) -> cgroups.CgroupSystem | None:
        scope = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return cgroups.detect(scope)

    # -- lifecycle --------------------------------------------------------------------------

    async def create(self, sandbox_id: str, spec: SandboxSpec, folder: Path) -> Started:
        config = self.parse_config(spec.config)
        assert isinstance(config, BwrapConfig)
        reason = _static_reason()
        if reason is not None:
            raise ProviderUnavailableError(f"bwrap cannot isolate here: {reason}", reason=reason)
        _check_alias(spec.workspace_alias, config.ro_binds)
        host_user = _check_binds(spec, config)
        template = None
        if spec.template is not None:
            rootfs.require()
            template = templated.resolve(self.home, spec.template)
            spec = templated.apply(spec, template)
        elif config.root_upper is not None:
            raise InvalidArgumentError("root_upper (build mode) needs a template")
        agent_root = agent_files.prepare(self.home, config.python)
        await quota.cap(folder / "workspace", spec.resources.disk_mb, self.home)
        build = config.root_upper is not None
        namespace = await (_build_namespace() if build else _namespace_for(host_user))
        user = namespace.user if namespace is not None else None
        if user is not None:
            self._open_path_to(folder)
            if template is not None:
                templated.open_path(self.home, template.lowers)
        spawn.make_workspace(folder, spec.workdir, user, spec.workspace_alias)
        system = self._cgroups
        groups = system.folders(sandbox_id) if system else []
        child: spawn.ChildProcess | None = None
        limiting: asyncio.Future[set[int]] | None = None
        root = None
        pinning: asyncio.Future[None] | None = None
        try:
            if template is not None:
                # Written (with an fsync) by a worker while bwrap starts; there before the
                # sandbox is handed out.
                pinning = asyncio.get_running_loop().run_in_executor(
                    None, templated.pin, self.home, sandbox_id, template.digest
                )
                root = self._root(template, config, folder, namespace)
            child = self._start(spec, config, folder, agent_root, namespace, bool(groups), root)
            self._children[child.pid] = child
            if system is not None:
                # Creating the groups and joining them (which can wait a whole RCU grace
                # period, ~15 ms on this v1 host) happen in a worker thread while bwrap and
                # Python start up. No command runs before the agent's tree has joined.
                loop = asyncio.get_running_loop()
                limiting = loop.run_in_executor(
                    None, _limit_tree, system, sandbox_id, spec.resources, child.pid
                )
            try:
                channel = await spawn.connect_started(folder, child, "bwrap")
            except Exception as exc:
                if _static_reason() is None and (probe := _probe()) is not None:
                    raise ProviderUnavailableError(f"bwrap cannot isolate here: {probe}") from exc
                raise
            if system is not None and limiting is not None:
                moved = await limiting
                # Whatever the worker missed (it gives up after a while) joins now, still
                # before the agent has been asked to run anything.
                missed = [p for p in procinfo.descendants(child.pid) if p not in moved]
                if missed:
                    system.add(groups, missed)
            if pinning is not None:
                await pinning
        except BaseException:
            if template is not None:
                if pinning is not None:
                    await asyncio.gather(pinning, return_exceptions=True)
                templated.unpin(self.home, sandbox_id)
                if config.root_upper is not None:
                    rootfs.tidy_upper(Path(config.root_upper), template.lowers)
            if user is not None:
                userns.release(user)
            if child is not None:
                self._children.pop(child.pid, None)
                await child.kill()
            if limiting is not None:
                await asyncio.gather(limiting, return_exceptions=True)
            await cgroups.remove(groups)
            raise
        child.exited.add_done_callback(lambda _: self._children.pop(child.pid, None))
        handle = spawn.handle(child, folder, cgroups=[str(g) for g in groups])
        if user is not None:
            handle["host_uid"] = user.uid
        if template is not None:
            handle["template"] = templated.handle(sandbox_id, template, config.root_upper)
        return Started(handle=handle, channel=channel, exited=child.exited)

    def _root(
        self,
        template: Any,
        config: BwrapConfig,
        folder: Path,
        namespace: userns.Namespace | None,
    ) -> rootfs.Root:
        """The wrapper and bwrap root arguments of a template's sandbox."""
        upper = Path(config.root_upper) if config.root_upper is not None else None
        uid, gid = (0, 0) if upper is not None else (SANDBOX_UID, SANDBOX_GID)
        etc_folder = etc.snapshot(self.home, uid, gid)
        idmapped = None
        if upper is not None and namespace is not None:
            idmapped = (config.python, namespace.fd)
        shared = self.home / rootfs.SHARED_DIR
        root = rootfs.plan(template, folder, etc_folder, upper, idmapped, shared)
        root.python = template.python
        return root

    def _open_path_to(self, folder: Path) -> None:
        """Let an unprivileged bwrap reach the folders it binds: search permission only
        (0711) on the way down, so nothing can be listed; the state database stays 0600."""
        for path in (self.home, folder.parent, folder):
            if path.stat().st_mode & 0o111 != 0o111:
                path.chmod(0o711)

    def _start(
        self,
        spec: SandboxSpec,
        config: BwrapConfig,
        folder: Path,
        agent_root: Path,
        namespace: userns.Namespace | None,
        limited: bool,
        root: rootfs.Root | None = None,
    ) -> spawn.ChildProcess:
        """bwrap started with the agent, handed the listening socket, the seccomp filter,
        the user namespace and (unless detached) the lifeline; every descriptor of ours that
        bwrap has its own copy of is closed here, whether it started or not."""
        try:
            bind_fds = binds.open_all(spec.binds)
        except BaseException:
            if namespace is not None:
                os.close(namespace.fd)  # as _spawn would have
            raise
        try:
            return self._spawn(spec, config, folder, agent_root, namespace, limited, bind_fds, root)
        finally:
            binds.close_all(bind_fds)  # bwrap has its own copies (or failed)

    def _spawn(
        self,
        spec: SandboxSpec,
        config: BwrapConfig,
        folder: Path,
        agent_root: Path,
        namespace: userns.Namespace | None,
        limited: bool,
        bind_fds: list[int],
        root: rootfs.Root | None = None,
    ) -> spawn.ChildProcess:
        listener = filter_fd = lifeline = None
        child = None
        try:
            listener = spawn.listen(folder)
            filter_fd = seccomp.memfd()
            # The agent exits when this process dies, however it dies (bwrap's own
            # --die-with-parent does not survive the uid change inside); the sandbox's PID
            # namespace, setsid'd daemons included, ends with it.
            lifeline = None if self.detached else os.pipe2(os.O_CLOEXEC)
            ns_fd = None if namespace is None else namespace.fd
            argv = self._argv(
                spec, config, folder, agent_root, listener.fileno(), limited, ns_fd, root
            )
            argv[1:1] = ["--seccomp", str(filter_fd)]
            argv[argv.index("--remount-ro") : argv.index("--remount-ro")] = bind_args(
                spec, bind_fds
            )
            extra = [filter_fd, *bind_fds] if ns_fd is None else [filter_fd, ns_fd, *bind_fds]
            if lifeline is not None:
                argv += ["--lifeline", str(lifeline[0])]
                extra.append(lifeline[0])
            if root is not None:
                argv[:0] = root.wrapper
            child = spawn.spawn(argv, folder, listener, {"PATH": DEFAULT_PATH}, tuple(extra))
        finally:
            if listener is not None:
                listener.close()
            if filter_fd is not None:
                os.close(filter_fd)
            if namespace is not None:
                # bwrap has its own copy (or failed): ours to close, detached or not. A
                # descriptor kept would keep the namespace alive: one per sandbox, for the
                # process's life (issue 16: a server leaked one per sandbox).
                os.close(namespace.fd)
            if lifeline is not None:
                os.close(lifeline[0])
                if child is None:
                    os.close(lifeline[1])
        if lifeline is not None:
            child.hold(lifeline[1])
        return child

    def _argv(
        self,
        spec: SandboxSpec,
        config: BwrapConfig,
        folder: Path,
        agent_root: Path,
        listen_fd: int,
        limited: bool,
        namespace: int | None = None,
        root: rootfs.Root | None = None,
    ) -> list[str]:
        build = config.root_upper is not None
        uid, gid = (0, 0) if build else (SANDBOX_UID, SANDBOX_GID)
        argv = isolation_args(
            namespace,
            die_with_parent=not self.detached,
            full_network=spec.network == "full",
            usr=root is None,
            uid=uid,
            gid=gid,
        )
        if root is not None and root.joined:
            at = argv.index("--userns")  # the wrapper runs bwrap inside it already
            del argv[at : at + 2]
        if namespace is None and _can_disable_userns():
            # bwrap's own namespace: nested ones are refused by the kernel too, not only by
            # the seccomp filter (with --userns, ours has no room for one: see userns.py).
            argv.append("--disable-userns")
        if root is None:
            etc_folder = etc.snapshot(self.home, SANDBOX_UID, SANDBOX_GID)
            argv += [*_top_level_binds()]
            argv += ["--ro-bind", str(etc_folder), "/etc"]
        else:
            argv += root.args
        alias = spec.workspace_alias
        argv += mount_args(str(folder / "workspace"), str(agent_root), spec.resources.tmp_mb, alias)
        for path in config.ro_binds:  # last, so /tmp or /workspace cannot hide them
            argv += ["--ro-bind", path, path]
        environment = environment_args(spec.plain_env)
        if build and root is not None and root.args[-1:] == ["/"]:
            at = environment.index("--remount-ro")  # the root is the writable overlay
            del environment[at : at + 2]
        argv += environment
        agent_args = ["--listen-fd", str(listen_fd), "--deadline", str(spec.timeout)]
        agent_args += writable_args(spec.workspace_alias)
        if build:
            agent_args += ["--writable", "/"]
        agent_args += [a for b in spec.binds if b.mode == "rw" for a in ("--writable", b.path)]
        agent_args += ["--reap-all"]
        agent_args += ["--workdir", spec.workdir]
        if not limited:
            resources = spec.resources
            agent_args += ["--rlimit", f"as={resources.memory_mb * 1024 * 1024}"]
            agent_args += ["--rlimit", f"nproc={resources.pids}"]
        agent_args += ["--rlimit", "core=0"]
        python = config.python if root is None else root.python
        return [*argv, "--", *agent_files.command(python, agent_files.MOUNT_POINT, *agent_args)]

    async def connect(self, handle: dict[str, Any]) -> Channel:
        return await Channel.connect_unix(handle["socket"])

    async def dial_local(self, handle: dict[str, Any]) -> socket.socket | None:
        return await dial_unix(handle["socket"])

    async def destroy(self, handle: dict[str, Any]) -> None:
        userns.release_handle(handle)
        await self._destroy(handle)
        templated.release(self.home, handle.get("template"))  # once its processes are gone

    async def _destroy(self, handle: dict[str, Any]) -> None:
        groups = [Path(g) for g in handle.get("cgroups", [])]
        cgroups.kill_all(groups)  # every process of the sandbox at once, not one by one
        child = self._children.get(handle.get("pid", -1))
        if child is not None:
            await child.kill()
        else:
            await _kill_foreign(handle.get("pid", -1), handle.get("started"))
        # Everything is SIGKILLed and bwrap has exited; the groups can only be removed once
        # the last process is gone (~2 ms): nobody needs to wait for that.
        task = Supervisor.current().spawn(cgroups.remove(groups), "remove-cgroups")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def settle(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        self._prune_scope()

    async def close(self) -> None:
        self._prune_scope()

    def _prune_scope(self) -> None:
        """Remove this state folder's cgroup scope once its last group is gone (a gc, the
        manager's close): the next create makes it again. Only if the groups were ever
        looked up: a provider that made no sandbox has nothing to prune."""
        system = self.__dict__.get("_cgroups")  # the cached property, if computed
        if system is not None and not self._children:
            system.prune()

    def is_alive(self, handle: dict[str, Any]) -> bool:
        # bwrap's monitor may be gone while the sandbox lives on (it was killed on its own):
        # what still runs in the sandbox's groups is the sandbox, and listed as alive.
        if procinfo.is_running(handle.get("pid", -1), handle.get("started")):
            return True
        return bool(cgroups.procs([Path(g) for g in handle.get("cgroups", [])]))

    # -- pause and resume: the cgroup freezer -----------------------------------------------

    def _freezer(self, handle: dict[str, Any]) -> Path | None:
        return cgroups.freezer_folder([Path(g) for g in handle.get("cgroups", [])])

    def can_pause(self, handle: dict[str, Any]) -> bool:
        return self._freezer(handle) is not None

    def _frozen_group(self, handle: dict[str, Any]) -> Path:
        if not self.is_alive(handle):
            raise SandboxClosedError("the sandbox is gone: it cannot be paused or resumed")
        folder = self._freezer(handle)
        if folder is None:
            raise self.cannot_pause(
                handle,
                "the sandbox has no cgroup freezer (the host let sandlot create no cgroups, "
                "or none with a freezer, when it was made)",
            )
        return folder

    async def pause(self, handle: dict[str, Any]) -> None:
        folder = self._frozen_group(handle)
        try:
            await cgroups.freeze(folder)
        except TimeoutError as exc:
            raise SandboxError(f"cannot pause the sandbox: {exc}") from None
        except OSError as exc:
            raise SandboxError(f"cannot pause the sandbox ({folder}): {exc}") from None

    async def resume(self, handle: dict[str, Any]) -> None:
        folder = self._frozen_group(handle)
        try:
            cgroups.thaw(folder)
        except OSError as exc:
            raise SandboxError(f"cannot resume the sandbox ({folder}): {exc}") from None

    def is_paused(self, handle: dict[str, Any]) -> bool:
        folder = self._freezer(handle)
        return folder is not None and cgroups.is_frozen(folder)

    async def list_instances(self) -> list[str]:
        system = self._cgroups
        return sorted(cgroups.list_groups(system)) if system else []

    async def cleanup_orphan(self, sandbox_id: str) -> None:
        templated.unpin(self.home, sandbox_id)
        system = self._cgroups
        if system is not None:
            await cgroups.remove(system.folders(sandbox_id))


# The parts of a sandbox's bwrap command line that do not depend on the host it runs on: the
# ssh provider builds the same sandbox on a far host from them.


def isolation_args(
    user_namespace: int | None,
    die_with_parent: bool,
    full_network: bool = False,
    usr: bool = True,
    uid: int = SANDBOX_UID,
    gid: int = SANDBOX_GID,
) -> list[str]:
    """New user (or the given one), PID, network, IPC, UTS and cgroup namespaces, the
    sandbox's uid and gid, no capabilities, and /usr read-only (unless ``usr`` is False: a
    template's root brings its own). ``full_network`` (asked for by name) keeps the host's
    network namespace."""
    return [
        "bwrap",
        *(["--unshare-user"] if user_namespace is None else ["--userns", str(user_namespace)]),
        "--unshare-pid",
        *([] if full_network else ["--unshare-net"]),
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--uid", str(uid),
        "--gid", str(gid),
        "--hostname", "sandlot",
        *(["--die-with-parent"] if die_with_parent else []),
        "--new-session",
        "--cap-drop", "ALL",
        *(["--ro-bind", "/usr", "/usr"] if usr else []),
    ]  # fmt: skip


def mount_args(workspace: str, agent_root: str, tmp_mb: int, alias: str | None = None) -> list[str]:
    """/proc, /dev, a size-capped /dev/shm and /tmp, the writable /workspace (and at its
    ``alias`` too), and the agent read-only."""
    return [
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
        "--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp",
        "--bind", workspace, "/workspace",
        *alias_args(workspace, alias),
        "--ro-bind", agent_root, agent_files.MOUNT_POINT,
    ]  # fmt: skip


def alias_args(workspace: str, alias: str | None) -> list[str]:
    """The workspace's host folder bound a second time at ``alias`` (validated by the spec:
    beneath /home, /mnt, ...), its parents made as plain folders in the new root's tmpfs,
    read-only with it. bwrap makes them in the new root, before anything of the sandbox
    runs, so nothing the sandbox wrote (a symlink in its workspace) can redirect the mount."""
    if alias is None:
        return []
    args: list[str] = []
    parts = alias.split("/")[1:]
    for end in range(1, len(parts)):
        args += ["--perms", "0755", "--dir", "/" + "/".join(parts[:end])]
    return [*args, "--bind", workspace, alias]


def writable_args(alias: str | None) -> list[str]:
    """The agent's ``--writable`` folders (its Landlock walls): :data:`WRITABLE`, and the
    workspace's alias (the same files as /workspace)."""
    paths = (*WRITABLE, alias) if alias is not None else WRITABLE
    return [arg for path in paths for arg in ("--writable", path)]


def environment_args(env: dict[str, str]) -> list[str]:
    """Start in /workspace with the root and /dev read-only, and an environment holding only
    PATH, HOME, LANG and the caller's variables."""
    args = [
        "--chdir", "/workspace",
        "--remount-ro", "/",
        "--remount-ro", "/dev",
        "--clearenv",
        "--setenv", "PATH", DEFAULT_PATH,
        "--setenv", "HOME", "/workspace",
        "--setenv", "LANG", "C.UTF-8",
    ]  # fmt: skip
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def bind_args(spec: SandboxSpec, fds: list[int]) -> list[str]:
    """The caller's binds, from descriptors opened without following symlinks (see
    :mod:`.binds`); bwrap makes their mount points (and parents) in the new root."""
    args: list[str] = []
    for bind, fd in zip(spec.binds, fds, strict=True):
        args += ["--bind-fd" if bind.mode == "rw" else "--ro-bind-fd", str(fd), bind.path]
    return args


def _check_binds(spec: SandboxSpec, config: BwrapConfig) -> str | int | None:
    """The host user the sandbox runs as. With binds: sandlot's own (as root too, instead of
    a fresh uid), so it can read the bound files and what it writes is owned by the user who
    runs sandlot; another host_user is refused for a read-write bind (its files would be
    that user's). A bind may not overlap the operator's ro_binds."""
    for bind in spec.binds:
        for path in config.ro_binds:
            if overlaps(bind.path, path.rstrip("/") or "/"):
                raise InvalidArgumentError(f"bind path {bind.path} overlaps ro_binds {path}")
    if not spec.binds:
        return config.host_user
    if config.host_user is not None and _host_user(config.host_user) is not None:
        if any(b.mode == "rw" for b in spec.binds):
            raise InvalidArgumentError(
                f"a read-write bind writes as the sandbox's host user ({config.host_user}), "
                "not as the user who runs sandlot: drop host_user or make the bind read-only"
            )
        return config.host_user
    return pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None


def _check_alias(alias: str | None, ro_binds: list[str]) -> None:
    """A read-only bind of the operator's (bound last) over or beneath the alias would hide
    it or part of it: refused rather than a workspace that is not what it says."""
    if alias is None:
        return
    for path in ro_binds:
        bound = path.rstrip("/") or "/"
        if bound == "/" or alias == bound or alias.startswith(bound + "/"):
            raise InvalidArgumentError(f"workspace_alias {alias} is hidden by ro_binds {path}")
        if bound.startswith(alias + "/"):
            raise InvalidArgumentError(f"workspace_alias {alias} holds ro_binds {path}")


def _limit_tree(
    system: cgroups.CgroupSystem, sandbox_id: str, resources: Resources, pid: int
) -> set[int]:
    """Create the sandbox's groups, then move bwrap and each process it forks into them as
    they appear.

    Consecutive moves are cheap (the first pays the grace period), so following the tree
    while it grows costs one grace period in all, overlapped with the start-up. bwrap forks
    the namespace's init, which forks the agent: two descendants.
    """
    groups = system.create(sandbox_id, resources)
    system.add(groups, [pid])
    moved: set[int] = set()
    deadline = time.monotonic() + ADOPT_TIMEOUT
    while len(moved) < 2 and time.monotonic() < deadline:
        fresh = [p for p in procinfo.descendants(pid) if p not in moved]
        if fresh:
            system.add(groups, fresh)
            moved.update(fresh)
        elif procinfo.start_time(pid) is None:
            break  # bwrap failed; the caller reports why
        else:
            time.sleep(0.0005)
    return moved


async def _kill_foreign(pid: int, started: int | None, wait: float = 5.0) -> None:
    """Kill a bwrap another process started (and reaps); wait until it is gone."""
    if not procinfo.kill(pid, started):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while procinfo.is_running(pid, started) and loop.time() < deadline:
        await asyncio.sleep(0.002)


@functools.lru_cache(maxsize=1)
def _static_reason() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        return "user namespaces disabled (sysctl user.max_user_namespaces = 0)"
    if os.geteuid() != 0 and _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        return "unprivileged user namespaces disabled (sysctl kernel.unprivileged_userns_clone = 0)"
    return None


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    """Start a tiny sandbox with the namespaces we use; None if it works, else the error."""
    argv = [
        "bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
        "--unshare-uts", "--die-with-parent", "--ro-bind", "/usr", "/usr",
        *_top_level_binds(), "--proc", "/proc", "--dev", "/dev", "--", "/usr/bin/true",
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap does not run: {exc}"
    if done.returncode != 0:
        message = done.stderr.strip() or f"exit status {done.returncode}"
        if "namespace" in message.lower() or "permission" in message.lower():
            return f"user namespaces unavailable ({message})"
        return f"bubblewrap fails: {message}"
    return None


async def _namespace_for(setting: str | int | None) -> userns.Namespace | None:
    """As root, the sandbox's own user namespace (see :mod:`.userns`); None: bwrap makes
    one itself, as the current user."""
    fixed = _host_user(setting)
    if os.geteuid() != 0 or (setting is not None and fixed is None):
        return None  # not root, or host_user="root" asked for by name: bwrap unshares
    asyncio.get_running_loop().call_later(
        REPLENISH_AFTER, userns.replenish, SANDBOX_UID, SANDBOX_GID, fixed
    )
    found = userns.take(SANDBOX_UID, SANDBOX_GID, fixed)
    if found is not None:
        return found
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, userns.create, SANDBOX_UID, SANDBOX_GID, fixed)


async def _build_namespace() -> userns.Namespace | None:
    """Build mode: uid 0 inside. As root, in a namespace of its own mapping it onto a fresh
    unprivileged host uid, the template's folders idmapped onto it (see :mod:`.idmap`);
    on a kernel without idmapped mounts, bwrap's own namespace as root, where uid 0 is the
    host's (see docs/templates.md). Not root: bwrap's own namespace (uid 0 is the user)."""
    if os.geteuid() != 0 or not idmap.supported():
        return None
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, userns.create, 0, 0)


def _host_user(setting: str | int | None) -> spawn.HostUser | None:
    """The host account asked for, or None: as root, a fresh uid per sandbox; else
    ourselves (no switch)."""
    if setting is None:
        return None
    try:
        entry = pwd.getpwuid(setting) if isinstance(setting, int) else pwd.getpwnam(setting)
    except KeyError:
        if setting == "nobody":
            return spawn.HostUser(NOBODY, NOBODY)
        raise InvalidArgumentError(f"no host user {setting!r}") from None
    if entry.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise InvalidArgumentError("only root can run sandboxes as another host user")
    return spawn.HostUser(entry.pw_uid, entry.pw_gid)


@functools.cache
def _can_disable_userns() -> bool:
    """bubblewrap 0.8 and later have --disable-userns."""
    try:
        done = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--disable-userns" in done.stdout + done.stderr


@functools.cache
def _top_level_binds() -> list[str]:
    """/bin, /lib, ... as the host has them: symlinks into /usr (merged /usr) or folders."""
    args: list[str] = []
    for name in TOP_LEVEL:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    return args


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
