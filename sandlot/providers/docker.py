"""docker: one container per sandbox, on the local Docker engine, through its HTTP API.

The image only needs a Python 3 interpreter: the agent is not baked in but bind-mounted
read-only from the state folder and started as the container's command, under Docker's
init (which reaps zombies). The channel is a Unix socket the agent creates in a host folder
bind-mounted into the container, so it works with the network off and a restarted control
plane reconnects by path. The engine's pause (the container's cgroup freezer) pauses a
sandbox. Safe by default: no network, every capability dropped,
``no-new-privileges``, a non-root user, a read-only root with a writable ``/workspace`` (a
host folder) and a size-capped ``/tmp``, and memory (no swap), CPU and process limits.

Every container carries labels naming its sandbox, the state folder it belongs to (a hash),
its owner process and its lifetime, so gc removes this state folder's leftovers and never
touches anything else on the engine, whatever its name.

The API client is aiodocker: asyncio on the aiohttp the SDK already uses, so no thread pool
and no second, synchronous implementation. It is imported only when a container is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..channel import Channel
from ..channel.handoff import dial_unix
from ..errors import (
    InvalidArgumentError,
    ProviderUnavailableError,
    SandboxClosedError,
    SandboxError,
    SandboxStartError,
    SandlotError,
)
from ..models import ProviderInfo, SandboxSpec, volume_uid
from . import agent_files, docker_templates, quota, seccomp, spawn, templated, userns
from .base import Provider, Started
from .docker_config import (
    LABEL_EXPIRES,
    LABEL_HOME,
    LABEL_SANDBOX,
    RUN_MOUNT,
    SECCOMP_NAME,
    SOCKET_NAME,
    DockerConfig,
    container_settings,
    default_host,
)
from .docker_engine import MISSING, START_TIMEOUT, Client, engine_get, probe, slow
from .docker_images import Images
from .docker_templates import TemplateImages

log = logging.getLogger("sandlot")

POLL = 0.001  # while waiting for the agent's socket
LOG_LIMIT = 2000  # characters of a failed container's output quoted in the error
# Runtimes every engine has: others (runsc, kata, ...) are worth a capability.
STOCK_RUNTIMES = frozenset({"runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux"})


class DockerProvider(Provider):
    name = "docker"
    isolated = True
    capabilities = frozenset({"isolation", "limits", "reconnect", "no-network", "images", "pause"})
    binds = "local"
    config_model = DockerConfig
    caller_settings = frozenset({"image"})
    # Containers younger than this are never orphans: a create may still be filling in
    # their record. Tests lower it.
    ORPHAN_GRACE: ClassVar[float] = 30.0

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.home_hash = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
        self._loop: asyncio.AbstractEventLoop | None = None
        # An async generator the loop closes when it shuts down (see _until_loop_ends).
        self._guard: AsyncGenerator[None, None] | None = None
        self._clients: dict[str, Client] = {}
        self._busy = 0  # engine calls in flight
        self._owned: dict[str, str] = {}  # container -> engine: ours to kill when we end
        self._watches: dict[str, asyncio.Task[None]] = {}  # container -> its exit watcher
        self._removing: dict[str, str] = {}  # container -> engine: destroyed, not yet gone
        self._removals: dict[str, asyncio.Task[None]] = {}
        self._images = Images()
        self._template_images = TemplateImages()

    # -- availability -----------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("aiodocker") is None:
            return MISSING
        return probe(default_host()).reason

    def info(self) -> ProviderInfo:
        info = super().info()
        if info.available:
            runtimes = probe(default_host(), runtimes=True).runtimes or frozenset()
            extra = {"runtime"} if runtimes - STOCK_RUNTIMES else set()
            if "runsc" in runtimes:
                extra.add("gvisor")
            if quota.unavailable_reason() is None:
                extra.add("disk-quota")
            info = info.model_copy(update={"capabilities": sorted({*info.capabilities, *extra})})
        return info

    # -- the client, and the end of its event loop ------------------------------------------

    @contextlib.asynccontextmanager
    async def _engine(self, host: str) -> AsyncIterator[Client]:
        """The client for ``host`` (created on first use), counted as busy meanwhile; engine
        failures come out as sandlot errors."""
        self._adopt_loop()
        client = self._clients.get(host)
        if client is None:
            client = self._clients[host] = Client(host)
        self._busy += 1
        try:
            yield client
        except client.docker_error as exc:
            if exc.status == 900:  # aiodocker's code for "cannot connect"
                raise ProviderUnavailableError(
                    f"cannot reach the Docker engine at {host}: {exc.message}", provider="docker"
                ) from None
            raise SandboxError(f"the Docker engine at {host} failed: {exc.message}") from None
        except client.errors as exc:
            raise ProviderUnavailableError(
                f"the Docker engine at {host} failed: {exc}", provider="docker"
            ) from None
        finally:
            self._busy -= 1
            client.remember_version()

    def _adopt_loop(self) -> None:
        """Bind to the running event loop on first use. A manager lives on one loop; should
        this provider be used from another, whatever the old loop left is picked up here."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        # Clients, watchers and removal tasks of an old loop cannot be used (or closed) here.
        self._clients.clear()
        self._watches.clear()
        self._removals.clear()
        self._images.forget()
        self._template_images.forget()
        self._loop = loop
        self._guard = self._until_loop_ends()
        # Step it to its ``yield`` now (it awaits nothing before): the loop registers it on
        # its first step and closes it at shutdown, which runs its ``finally``.
        with contextlib.suppress(StopIteration):
            self._guard.asend(None).send(None)
        for container, host in list(self._removing.items()):
            del self._removing[container]
            self._drop(container, host)

    async def _until_loop_ends(self) -> AsyncGenerator[None, None]:
        """Closed by the event loop's ``shutdown_asyncgens`` (``asyncio.run`` and the like
        call it, after cancelling every task): kill what this process still owns, finish
        removals that were cut short, and close the clients, so that a program which never
        closed its manager leaks neither containers nor connections."""
        try:
            yield
        finally:
            for container, host in list(self._owned.items()):
                self._removing.setdefault(container, host)
            self._owned.clear()
            for container, host in list(self._removing.items()):
                await self._remove(container, host)
            await self._close_clients()

    async def _close_clients(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    # -- lifecycle --------------------------------------------------------------------------

    async def create(self, sandbox_id: str, spec: SandboxSpec, folder: Path) -> Started:
        template = None
        if spec.template is not None:
            # The template's image replaces any image setting (see docker_templates).
            template = docker_templates.resolve(self.home, spec.template)
            spec = templated.apply(spec, template)
            settings = {**spec.config, "image": docker_templates.image_name(template)}
            config = self.parse_config({**settings, "pull": "never", "python": template.python})
        else:
            config = self.parse_config(spec.config)
        assert isinstance(config, DockerConfig)
        if not config.image:
            raise InvalidArgumentError(
                "invalid settings for provider 'docker': image: required unless the sandbox "
                "starts from a template (e.g. image='python:3.12-slim')"
            )
        uid, gid = _ids(spec, config)
        if os.geteuid() != 0 and uid != os.geteuid():
            raise InvalidArgumentError(
                f"sandlot runs as uid {os.geteuid()}, not root: it can only hand the workspace "
                f"and the agent's socket to itself; set user='{os.geteuid()}:{os.getegid()}'"
            )
        agent_root = agent_files.prepare(self.home, _compiler())
        run = folder / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        os.chown(run, uid, gid)
        socket_path = run / SOCKET_NAME
        if len(str(socket_path).encode()) > spawn.MAX_SOCKET_PATH:
            raise InvalidArgumentError(
                f"the state folder path is too long for a Unix socket ({socket_path}); set "
                "SANDLOT_HOME to a shorter path"
            )
        await quota.cap(folder / "workspace", spec.resources.disk_mb, self.home)
        workspace = spawn.make_workspace(
            folder, spec.workdir, spawn.HostUser(uid, gid), spec.workspace_alias
        )
        owner = 0 if self.detached else os.getpid()
        body = container_settings(
            sandbox_id, spec, config, (workspace, agent_root, run), self.home_hash, owner
        )
        body["User"] = f"{uid}:{gid}"
        if _write_filter(run / SECCOMP_NAME, uid, gid):
            body["Cmd"] += ["--seccomp", f"{RUN_MOUNT}/{SECCOMP_NAME}"]
        host = config.docker_host
        async with self._engine(host) as client:
            if template is not None:
                await self._template_images.ensure(client, template, self.home)
                docker_templates.store(self.home).pin(sandbox_id, template.digest)
            container = await self._images.create_container(
                client, body, f"sandlot-{sandbox_id}", config
            )
            exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            try:
                await self._start(client, container, config)
                if not self.detached:
                    self._owned[container] = host
                # The engine tells us when the container stops: a fast failure at start-up,
                # and the manager's cue to release a sandbox whose agent ended.
                self._watches[container] = asyncio.ensure_future(
                    self._watch(client, container, exited)
                )
                channel = await self._connect_started(
                    client, container, socket_path, exited, config
                )
                socket_path = _hide_socket(socket_path, folder / SOCKET_NAME)
            except BaseException:
                self._drop(container, host)
                if template is not None:
                    docker_templates.store(self.home).unpin(sandbox_id)
                raise
        if self.detached:  # nobody here waits for its end: the next process adopts it
            self._stop_watching(container)
        handle: dict[str, Any] = {
            "container": container,
            "socket": str(socket_path),
            "docker_host": host,
        }
        if config.user is None and os.geteuid() == 0:
            handle["host_uid"] = uid
        if template is not None:  # pinned: template gc keeps its layers while it runs
            handle["template"] = {"sandbox": sandbox_id, "digest": template.digest}
        return Started(handle=handle, channel=channel, exited=None if self.detached else exited)

    async def _start(self, client: Client, container: str, config: DockerConfig) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await client.docker.containers.container(container).start()
        except TimeoutError:
            raise SandboxStartError(slow("start the container")) from None
        except client.docker_error as exc:
            if exc.status == 900:
                raise
            raise SandboxStartError(
                f"the Docker engine cannot start a container of image {config.image!r}: "
                f"{exc.message}",
                image=config.image,
            ) from None

    async def _watch(self, client: Client, container: str, exited: asyncio.Future[int]) -> None:
        try:
            answer = await client.docker.containers.container(container).wait()
        except client.errors:
            return  # lost touch with the engine: the manager's expiry timer still ends it
        finally:
            if self._watches.get(container) is asyncio.current_task():
                del self._watches[container]
        self._owned.pop(container, None)
        if not exited.done():
            exited.set_result(int(answer.get("StatusCode", -1)))

    def _stop_watching(self, container: str) -> None:
        watch = self._watches.pop(container, None)
        if watch is not None:
            watch.cancel()

    async def _connect_started(
        self,
        client: Client,
        container: str,
        socket_path: Path,
        exited: asyncio.Future[int],
        config: DockerConfig,
    ) -> Channel:
        """Connect as soon as the agent's socket appears; if the container stops first,
        say why, with its output."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            with _agent_socket(str(socket_path)) as path:
                if path is not None:
                    try:
                        return await Channel.connect_unix(path, timeout=START_TIMEOUT)
                    except SandboxClosedError:
                        pass  # bound but not listening yet, or it died: the watcher will say
            if exited.done():
                break
            if loop.time() > deadline:
                raise SandboxStartError(
                    f"the agent did not start within {START_TIMEOUT:g} s in image "
                    f"{config.image!r}: {await self._logs(client, container)}",
                    image=config.image,
                )
            await asyncio.wait([exited], timeout=POLL)
        logs = await self._logs(client, container)
        code = exited.result()
        if code == 127 or f"exec {config.python} failed" in logs:
            raise SandboxStartError(
                f"image {config.image!r} has no {config.python!r}: the sandbox's agent needs a "
                f"Python 3 interpreter in the image (or set python= to its path). Output: {logs}",
                image=config.image,
            )
        raise SandboxStartError(
            f"the agent did not start in image {config.image!r} (exit status {code}): {logs}",
            image=config.image,
        )

    async def _logs(self, client: Client, container: str) -> str:
        try:
            lines = await client.docker.containers.container(container).log(
                stdout=True, stderr=True
            )
        except client.errors as exc:
            return f"(no output: {exc})"
        text = "".join(lines).strip()[-LOG_LIMIT:]
        return text or "(no output)"

    async def connect(self, handle: dict[str, Any]) -> Channel:
        with _agent_socket(handle["socket"]) as path:
            if path is None:
                raise SandboxClosedError("the sandbox's agent is not listening (no socket)")
            return await Channel.connect_unix(path)

    async def dial_local(self, handle: dict[str, Any]) -> socket.socket | None:
        with _agent_socket(handle["socket"]) as path:
            if path is None:
                raise SandboxClosedError("the sandbox's agent is not listening (no socket)")
            return await dial_unix(path)

    async def destroy(self, handle: dict[str, Any]) -> None:
        """SIGKILL and remove the container. The engine takes ~65 ms to stop one, which
        nobody needs to wait for: the removal runs in the background, ``is_alive`` says False
        at once, and :meth:`settle` (which ``Manager.close`` awaits) waits for it."""
        userns.release_handle(handle)
        used = handle.get("template")
        if isinstance(used, dict) and isinstance(used.get("sandbox"), str):
            with contextlib.suppress(SandlotError, OSError, ValueError):
                docker_templates.unpin(self.home, used["sandbox"])
        container = handle.get("container")
        if container:
            self._drop(container, handle.get("docker_host") or default_host())

    def _drop(self, container: str, host: str) -> None:
        self._adopt_loop()
        self._owned.pop(container, None)
        self._stop_watching(container)
        if container in self._removing:
            return
        self._removing[container] = host
        task = asyncio.ensure_future(self._remove(container, host))
        self._removals[container] = task
        task.add_done_callback(lambda _: self._removals.pop(container, None))

    async def _remove(self, container: str, host: str) -> None:
        try:
            async with self._engine(host) as client:
                try:
                    await client.docker.containers.container(container).delete(force=True)
                except client.docker_error as exc:
                    # 404: gone already; 409: a removal is in progress (another process's)
                    if exc.status not in (404, 409):
                        log.warning("cannot remove container %s: %s", container[:12], exc)
        except SandlotError as exc:
            log.warning("cannot remove container %s: %s", container[:12], exc)
        # Cancelled (the loop is ending) it stays listed, and _until_loop_ends finishes it.
        self._removing.pop(container, None)

    async def settle(self) -> None:
        self._adopt_loop()
        while self._removals:
            await asyncio.gather(*list(self._removals.values()), return_exceptions=True)

    async def close(self) -> None:
        """The manager is done (its sandboxes killed, or let go of if detached): remove
        what this process still owns, stop watching, close the engine clients."""
        self._adopt_loop()
        for container, host in list(self._owned.items()):
            self._drop(container, host)
        await self.settle()
        for container in list(self._watches):
            self._stop_watching(container)
        await self._close_clients()

    def is_alive(self, handle: dict[str, Any]) -> bool:
        """Cheap and local: destroyed here means dead; otherwise the agent's socket answers
        a connect (the kernel completes it without the agent; it fails once the agent, and
        with it the container, is gone)."""
        if handle.get("container") in self._removing or not handle.get("socket"):
            return False
        with (
            _agent_socket(handle["socket"]) as path,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe,
        ):
            if path is None:
                return False
            probe.setblocking(False)
            try:
                probe.connect(path)
            except BlockingIOError:
                return True  # a full backlog: somebody is listening
            except OSError:
                return False
        return True

    # -- pause and resume: the engine's --------------------------------------------------

    def can_pause(self, handle: dict[str, Any]) -> bool:
        return bool(handle.get("container"))

    async def pause(self, handle: dict[str, Any]) -> None:
        await self._pause(handle, True)

    async def resume(self, handle: dict[str, Any]) -> None:
        await self._pause(handle, False)

    async def _pause(self, handle: dict[str, Any], pause: bool) -> None:
        """The engine's pause or unpause, which answers once the container's processes are
        frozen (or thawed). Done already (paused, or running) is no error."""
        container = handle.get("container")
        if not container:
            raise self.cannot_pause(handle, "the sandbox's handle names no container")
        if container in self._removing:
            raise SandboxClosedError("the sandbox is gone: it cannot be paused or resumed")
        host = handle.get("docker_host") or default_host()
        what = "pause the container" if pause else "unpause the container"
        async with self._engine(host) as client:
            target = client.docker.containers.container(container)
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    await (target.pause() if pause else target.unpause())
                return
            except TimeoutError:
                raise SandboxError(slow(what)) from None
            except client.docker_error as exc:
                if exc.status == 404:
                    raise SandboxClosedError(
                        "the sandbox is gone: its container was removed"
                    ) from None
                refused = exc.message
            # The engine refuses a pause of a paused container (409) and an unpause of a
            # running one (500): see whether it is where it was asked to be.
            try:
                state = (await target.show())["State"]
            except client.docker_error as exc:
                if exc.status == 404:
                    raise SandboxClosedError(
                        "the sandbox is gone: its container was removed"
                    ) from None
                raise
        if not state.get("Running"):
            raise SandboxClosedError(
                f"the sandbox is gone: its container is {state.get('Status', 'not running')}"
            )
        if bool(state.get("Paused")) != pause:
            raise SandboxError(f"the Docker engine at {host} cannot {what}: {refused}")

    def is_paused(self, handle: dict[str, Any]) -> bool:
        """The engine's word (one blocking request on its local socket, ~1 ms): this is the
        one question the container's files on the host cannot answer."""
        container = handle.get("container")
        if not container or container in self._removing:
            return False
        path = (handle.get("docker_host") or default_host()).removeprefix("unix://")
        try:
            answer = engine_get(path, f"/containers/{container}/json")
        except (OSError, ValueError):
            return False  # gone, or the engine does not answer: not paused by anyone's word
        return isinstance(answer, dict) and bool((answer.get("State") or {}).get("Paused"))

    # -- garbage ----------------------------------------------------------------------------

    def _labelled(self, sandbox_id: str | None = None) -> dict[str, Any]:
        labels = [f"{LABEL_HOME}={self.home_hash}"]
        labels.append(LABEL_SANDBOX if sandbox_id is None else f"{LABEL_SANDBOX}={sandbox_id}")
        return {"all": True, "filters": {"label": labels}}

    async def list_instances(self) -> list[str]:
        """This state folder's containers (by label) older than the grace period or past
        their lifetime. (The manager asks only if this state folder ever used docker.)"""
        if self.unavailable_reason() is not None:
            return []
        try:
            async with self._engine(default_host()) as client:
                found = await client.docker.containers.list(**self._labelled())
        except SandlotError as exc:
            log.warning("gc: cannot list Docker containers: %s", exc)
            return []
        finally:
            await self._close_if_idle()
        now = time.time()
        ids = set()
        for container in found:
            labels = container["Labels"] or {}
            sandbox_id = labels.get(LABEL_SANDBOX)
            if labels.get(LABEL_HOME) != self.home_hash or not sandbox_id:
                continue  # the engine filtered already; never trust a filter with a kill
            created = float(container["Created"] or 0)
            expires = _float(labels.get(LABEL_EXPIRES))
            if now - created >= self.ORPHAN_GRACE or (expires is not None and now > expires):
                ids.add(sandbox_id)
        return sorted(ids)

    async def cleanup_orphan(self, sandbox_id: str) -> None:
        host = default_host()
        async with self._engine(host) as client:
            found = await client.docker.containers.list(**self._labelled(sandbox_id))
        for container in found:
            labels = container["Labels"] or {}
            if labels.get(LABEL_HOME) == self.home_hash and labels.get(LABEL_SANDBOX) == sandbox_id:
                self._drop(container.id, host)
        with contextlib.suppress(SandlotError, OSError, ValueError):
            docker_templates.unpin(self.home, sandbox_id)  # a template's pin, if it had one
        await self.settle()
        await self._close_if_idle()

    async def _close_if_idle(self) -> None:
        """Close the engine clients when nothing of this process uses them: a process that
        only sweeps (its state folder once used Docker) holds no connection to the engine
        between sweeps, a minute apart."""
        if not (self._busy or self._owned or self._watches or self._removing):
            await self._close_clients()


def _compiler() -> str:
    """The host interpreter that byte-compiles the agent (for the image's, if the same
    version; otherwise the image's Python compiles it in memory at each start)."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


@contextlib.contextmanager
def _agent_socket(path: str) -> Iterator[str | None]:
    """A path to connect to the agent's socket by, or None if there is no socket there.

    The sandbox can write the folder that holds it: it could swap the socket for a symlink
    to some host socket. So the socket is opened without following links (``O_PATH |
    O_NOFOLLOW``) and reached through that descriptor, which no later swap can redirect."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        yield f"/proc/self/fd/{fd}" if stat.S_ISSOCK(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def _write_filter(path: Path, uid: int, gid: int) -> bool:
    """sandlot's seccomp program, for the agent to load for commands on top of Docker's own
    profile; False (Docker's profile only) where libseccomp is missing."""
    try:
        code = seccomp.program()
    except ProviderUnavailableError:
        return False
    path.write_bytes(code)
    os.chown(path, uid, gid)
    return True


def _hide_socket(shown: Path, hidden: Path) -> Path:
    """Move the agent's socket out of the folder the container sees, so that no command can
    dial the agent (a bound socket is reached through its inode, wherever its name goes).
    No command has run yet: only the agent has written that folder."""
    os.rename(shown, hidden)
    if not stat.S_ISSOCK(os.lstat(hidden).st_mode):
        raise SandboxStartError("the agent's socket was not a socket")
    return hidden


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _ids(spec: SandboxSpec, config: DockerConfig) -> tuple[int, int]:
    """The container's user. With binds: sandlot's own unless ``user`` is set (a fresh uid
    could not read the bound files, and what the sandbox writes must be the host user's); a
    read-write bind with another ``user`` is refused, its files would be that user's."""
    uid = volume_uid(spec)
    if uid is not None and os.geteuid() == 0:  # the volumes' owner (workspace/volumes.py)
        if spec.binds or config.user is not None:
            raise InvalidArgumentError(
                "volumes cannot be mounted together with binds or a set user when sandlot "
                "runs as root: their files belong to the volume owner's own uid"
            )
        return uid, uid
    if not spec.binds:
        return config.ids()
    if config.user is None:
        return os.geteuid(), os.getegid()
    uid, gid = config.ids()
    if uid != os.geteuid() and any(b.mode == "rw" for b in spec.binds):
        raise InvalidArgumentError(
            f"a read-write bind writes as the container's user ({config.user}), not as the "
            "user who runs sandlot: drop user or make the bind read-only"
        )
    return uid, gid
