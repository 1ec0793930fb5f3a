"""Lifecycle of sandboxes on this host: create, connect, list, kill, expire, collect garbage.

Records live in the store, so any process can find a sandbox; the process that created one
owns it (bwrap's ``--die-with-parent`` ties the sandbox to it) and enforces its lifetime with
a timer, backed by the agent's own deadline, and its idle timeout (:mod:`.idle`), backed by the
agent's own longer one. Whatever a dead owner left behind (records,
cgroups, folders) is removed by :meth:`Manager.gc`, which runs at every manager's start and
from ``sandlot gc``.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import os
import secrets
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..channel import Channel
from ..egress.policy import NetworkPolicy
from ..errors import (
    EgressError,
    InvalidArgumentError,
    ProtocolError,
    RemoteUnavailableError,
    SandboxNotFoundError,
    SandlotError,
)
from ..models import (
    MAX_LIFETIME,
    NetworkMode,
    SandboxInfo,
    SandboxSpec,
    check_seconds,
    with_volume_hosts,
)
from ..providers import DEFAULT, Provider, Started, binds, procinfo, provider_class, quota
from ..secrets.refs import SecretRef, as_ref
from ..secrets.resolve import has_refs, resolve_config, resolve_env
from ..secrets.store import SecretStore
from ..store import Store, default_home, owner
from ..supervisor import Loop, Supervisor
from .base import GcReport, Live, LiveSandbox, default_provider
from .egress import DialLocal, Egress, EventSink, check_network, new_settings
from .idle import IdleWatch, agent_limit
from .pool import Pools
from .ports import ChannelFor, PortForwards, check_port
from .workspaces import Workspaces

if TYPE_CHECKING:
    from ..workspace.volumes import VolumeStore

log = logging.getLogger("sandlot")
_OWNER_STARTED = procinfo.start_time(os.getpid())
NO_OWNER = 0  # a detached sandbox's owner_pid: it lives until its deadline or a kill
USED_FOLDER = "providers-used"  # in the state folder: a file per host provider used there
GC_INTERVAL = 60.0  # seconds between sweeps while a manager runs (SANDLOT_GC_INTERVAL)
UNFINISHED_CREATE = 120.0  # seconds after which a detached create with no handle is dead


def _dump_refs(refs: dict[str, SecretRef]) -> dict[str, Any]:
    return {key: ref.model_dump() for key, ref in refs.items()}


def new_id() -> str:
    return "sb-" + secrets.token_hex(6)


class Manager:
    """One per event loop; all state that matters is in the store."""

    _per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Manager] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, home: Path | None = None, *, detached: bool = False) -> None:
        self.home = home or default_home()
        # Detached (a server): sandboxes are not tied to this process; a new process adopts
        # them (:meth:`adopt`), and only their deadline or a kill ends them.
        self.detached = detached
        # Where binds may come from (a server's --allow-bind-root); None: anywhere (embedded,
        # the caller is the host's user). Checked after resolution, on this machine.
        self.bind_roots: builtins.list[str] | None = None
        self.store = Store(self.home)
        self.ports = PortForwards(self.store)
        self._providers: dict[str, Provider] = {}
        self._owned: dict[str, LiveSandbox] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.idle = IdleWatch(self._idle_channel, self._stop_idle, self._idle_timeout_of)
        self._check_channels: dict[str, Channel] = {}  # for idle checks, once the owner's closed
        # Called with the id of a sandbox about to be stopped for being idle.
        self.on_idle: builtins.list[Callable[[str], None]] = []
        self._collected = False
        self._sweeper: Loop | None = None
        self._marked: set[str] = set()  # providers this manager has noted as used here
        self._removals: set[asyncio.Future[None]] = set()
        self._adopting = False  # owns the state folder (see adopt)
        # Called with the id of every sandbox this manager released (killed, expired, exited).
        self.on_release: builtins.list[Callable[[str], None]] = []
        # Called for every connection a sandbox made through its proxy or bridge.
        self.on_egress_event: builtins.list[EventSink] = []
        # Called when a session sandbox's workspace was saved as it ended: (sandbox id,
        # session id, the checkpoint's info or the exception that stopped it).
        self.on_checkpoint: builtins.list[Callable[[str, str, Any], None]] = []
        self.workspaces = Workspaces(self.home)
        # Awaited first when the manager closes (e.g. the sessions it serves).
        self.on_close: builtins.list[Callable[[], Awaitable[None]]] = []
        # The secrets a sandbox's references are resolved from (a server: its tenant's).
        self.secrets_for: Callable[[str], SecretStore] = self._local_secrets
        self._egress: dict[str, Egress] = {}
        self._secret_stores: dict[str, SecretStore] = {}  # given at create (a server's tenant)
        self._secret_values: dict[str, builtins.list[str]] = {}
        # Warm pools: a create that matches one takes a member; members are made by a
        # detached manager of the same state folder.
        self.pools = Pools(self, lambda: Manager(self.home, detached=True))

    @functools.cached_property
    def volumes(self) -> VolumeStore:
        """The state folder's named volumes (imported on first use: most sandboxes have none)."""
        from ..workspace.volumes import VolumeStore

        return VolumeStore(self.home)

    @classmethod
    def current(cls) -> Manager:
        """The manager of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        manager = cls._per_loop.get(loop)
        home = default_home()
        if manager is None or manager.home != home:
            manager = cls(home)
            cls._per_loop[loop] = manager
        return manager

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            provider = provider_class(name)(self.home)
            provider.detached = self.detached
            self._providers[name] = provider
        return self._providers[name]

    def folder(self, sandbox_id: str) -> Path:
        return self.home / "sandboxes" / sandbox_id

    # -- create / connect -------------------------------------------------------------------

    async def create(
        self,
        spec: SandboxSpec,
        *,
        secrets: SecretStore | None = None,
        volume_owner: str = "",
        host_binds: bool = False,
    ) -> LiveSandbox:
        """A new sandbox. ``volume_owner``: whose named volumes ``spec.volumes`` names (a
        server: the caller's tenant; embedded: the local user, ""). ``host_binds``: the
        spec's binds are this host's own choice (a template build's package folders), not a
        caller's: a server's bind roots do not apply to them."""
        spec = default_provider(spec)
        name = spec.provider or DEFAULT
        provider = self.provider(name)
        if not self._collected:
            self._collected = True
            await self.gc(quick=True)
            self._sweeper = Supervisor.current().keep("gc-sweeper", self._sweep)
        spec = check_binds(provider, spec, None if host_binds else self.bind_roots)
        check_volumes(provider, spec, volume_owner)
        # A pool's members mount the local user's volumes: never a tenant's sandbox's.
        shared = not spec.volumes or volume_owner in ("", "local")
        taken = await self.pools.take(spec) if shared else None
        if taken is not None:
            return taken
        if isinstance(spec.network, NetworkPolicy):
            check_network(provider, spec.network)
        now = datetime.now(UTC)
        info = SandboxInfo(
            id=new_id(),
            provider=name,
            metadata=spec.metadata,
            created_at=now,
            expires_at=now + timedelta(seconds=spec.timeout),
            owner_pid=NO_OWNER if self.detached else os.getpid(),
            idle_timeout=spec.idle_timeout,
        )
        spec, secret_config = await self._resolve_config(provider, spec, secrets)
        # The record goes in first: a concurrent gc then sees a live owner, never an orphan.
        self.store.insert(info, _OWNER_STARTED)
        folder = self.folder(info.id)
        try:
            folder.mkdir(parents=True, mode=0o700)
            spec = await self._attach_volumes(info.id, provider, spec, volume_owner)
            started, provider, spec, fell_back = await self._start(info, provider, spec, folder)
        except BaseException:
            if spec.volumes:
                self.volumes.detach(info.id)
            self.store.delete(info.id)
            quota.remove_folder(folder)
            raise
        if spec.volumes:  # its mount records go when it does
            started.handle["volumes"] = [v.name for v in spec.volumes]
        if secret_config:  # which settings were secrets (names only), to resolve them again
            started.handle["secret_config"] = secret_config
        if spec.idle_timeout is not None:  # for a process that adopts it
            started.handle["idle_timeout"] = spec.idle_timeout
        info.handle = started.handle
        self.store.set_handle(info.id, started.handle)
        live = LiveSandbox(info, started.channel, provider, fell_back)
        self._owned[info.id] = live
        self._kill_on_violation(info.id, started.channel)
        self._schedule_expiry(info.id, spec.timeout)
        if started.exited is not None:
            started.exited.add_done_callback(lambda _: self._on_exit(info.id))
        if secrets is not None:
            self._secret_stores[info.id] = secrets
        try:
            await self.watch_idle(info.id, spec.idle_timeout, started.channel)
            if provider.serves_egress:
                await self._start_egress(info.id, spec, started.channel)
        except BaseException:
            await self.kill(info.id)
            raise
        return live

    async def _attach_volumes(
        self, sandbox_id: str, provider: Provider, spec: SandboxSpec, owner: str
    ) -> SandboxSpec:
        """Record the sandbox as a user of its volumes and hand their host folders (and, as
        root, their owner's uid) to the provider (see workspace/volumes.py)."""
        if not spec.volumes or provider.binds != "local":
            return spec
        loop = asyncio.get_running_loop()
        resolved = await loop.run_in_executor(
            None, self.volumes.attach, sandbox_id, spec.volumes, owner
        )
        uid = self.volumes.uid(owner) if os.geteuid() == 0 else None
        return with_volume_hosts(spec, [r.host for r in resolved], uid)

    async def _resolve_config(
        self, provider: Provider, spec: SandboxSpec, secrets: SecretStore | None
    ) -> tuple[SandboxSpec, dict[str, str]]:
        """``spec`` with the provider settings its schema marks secret resolved, and which
        settings those were (names only: a re-connect resolves them again)."""
        if not has_refs(spec.config):
            return spec, {}
        secret_config = {
            k: ref.secret for k, v in spec.config.items() if (ref := as_ref(v)) is not None
        }
        store = secrets or self._local_secrets("")
        config, _ = await resolve_config(provider.config_model, spec.config, store)
        return spec.model_copy(update={"config": config}), secret_config

    async def _start(
        self, info: SandboxInfo, provider: Provider, spec: SandboxSpec, folder: Path
    ) -> tuple[Started, Provider, SandboxSpec, dict[str, str] | None]:
        """The sandbox started by ``provider``, or by its fallback when it is a server that
        is down (or its breaker open); the provider and spec used, and the fall-back made."""
        name = info.provider
        self._mark_used(name)
        try:
            return await provider.create(info.id, spec, folder), provider, spec, None
        except RemoteUnavailableError as exc:
            # Binds name paths of the server's machine, not of this one.
            alternative = None if spec.binds or spec.volumes else provider.fallback(spec)
            if not alternative:
                raise
            fell_back = {"from": name, "to": alternative, "reason": str(exc)}
        log.warning(
            "provider %s is unavailable (%s): using %s", name, fell_back["reason"], alternative
        )
        provider = self.provider(alternative)
        self._mark_used(alternative)
        spec = spec.model_copy(update={"provider": alternative, "config": {}})
        info.provider = alternative
        self.store.set_provider(info.id, alternative)
        return await provider.create(info.id, spec, folder), provider, spec, fell_back

    # -- egress and secrets -------------------------------------------------------------------

    def _local_secrets(self, sandbox_id: str) -> SecretStore:
        from ..secrets.store import LocalSecrets

        return LocalSecrets(self.home)

    def _secrets(self, sandbox_id: str) -> SecretStore:
        return self._secret_stores.get(sandbox_id) or self.secrets_for(sandbox_id)

    async def command_env(
        self, sandbox_id: str, env: dict[str, Any]
    ) -> tuple[dict[str, str], builtins.list[str]]:
        """One command's variables with references resolved; and the secret values used."""
        refs = {k: v for k, v in env.items() if isinstance(v, SecretRef)}
        if not refs:
            return env, []
        resolved, used = await resolve_env(refs, self._secrets(sandbox_id))
        return {**env, **resolved}, used

    async def _start_egress(self, sandbox_id: str, spec: SandboxSpec, channel: Channel) -> None:
        """Give a new sandbox its secret variables (over the channel, never a command line),
        its proxy and its bridge."""
        refs = spec.secret_env
        if spec.network == "none" and spec.bridge is None and not refs:
            self._secret_values[sandbox_id] = []  # known: no query at its first command
            return  # nothing to serve: no store query on the cold-start path
        handle = self._owned[sandbox_id].info.handle
        if isinstance(spec.network, NetworkPolicy) and handle.get("isolated") is False:
            raise EgressError(  # e.g. ssh on a host without bubblewrap: the host's network
                "this sandbox runs without isolation, so it has the host's network and an "
                "allowlist cannot be enforced there"
            )
        self.store.set_egress(sandbox_id, new_settings(spec.network, spec.bridge, _dump_refs(refs)))
        if refs:
            values, _ = await resolve_env(refs, self._secrets(sandbox_id))
            self._secret_values[sandbox_id] = list(values.values())
            await channel.call("env", set=values)
        await self._serve_egress(sandbox_id, channel, takeover=True)

    async def _serve_egress(self, sandbox_id: str, channel: Channel, *, takeover: bool) -> None:
        settings = self.store.egress(sandbox_id) or {}
        if sandbox_id in self._egress or not (settings.get("network") or settings.get("bridge")):
            return
        egress = Egress(
            sandbox_id,
            self.store,
            self._secrets(sandbox_id),
            self._channel_for(sandbox_id, channel),
            self._dial_local(sandbox_id),
            self._egress_event,
        )
        self._egress[sandbox_id] = egress
        try:
            await egress.start(takeover=takeover)
        except BaseException:
            self._egress.pop(sandbox_id, None)
            await egress.close()
            raise

    def _dial_local(self, sandbox_id: str) -> DialLocal:
        async def dial() -> socket.socket | None:
            info, provider = self._lookup(sandbox_id)
            return await provider.dial_local(info.handle)

        return dial

    def _egress_event(self, sandbox_id: str, kind: str, data: dict[str, Any]) -> None:
        self.store.add_egress_event(sandbox_id, kind, data)
        for callback in self.on_egress_event:
            callback(sandbox_id, kind, data)

    async def egress_events(self, sandbox_id: str, after: int = 0) -> builtins.list[dict[str, Any]]:
        """What the sandbox reached or was refused, oldest first (embedded mode's record;
        a server also writes them to the session's log)."""
        self._lookup(sandbox_id)
        return self.store.egress_events(sandbox_id, after)

    async def set_network(
        self, sandbox_id: str, network: NetworkMode | NetworkPolicy, channel: Channel
    ) -> None:
        """Change what the sandbox may reach; the next connection obeys it. ``"none"``
        refuses everything; a sandbox started without a network cannot be given ``"full"``."""
        info, provider = self._lookup(sandbox_id)
        if network == "full":
            raise EgressError("a running sandbox's network cannot become 'full'")
        if not provider.serves_egress:
            raise EgressError(f"the {info.provider} provider does not serve network policies")
        if isinstance(network, NetworkPolicy):
            check_network(provider, network)
        settings = self.store.egress(sandbox_id) or {"secret_env": {}}
        if settings.get("full"):
            raise EgressError("this sandbox has the full network: there is nothing to narrow")
        if isinstance(network, NetworkPolicy):
            settings["network"] = network.model_dump(mode="json")
        elif "network" in settings:  # "none": its proxy stays, and refuses everything
            settings["network"] = NetworkPolicy(allow=[]).model_dump(mode="json")
        self.store.set_egress(sandbox_id, settings)
        if isinstance(network, NetworkPolicy):  # its proxy, if it has none yet
            egress = self._egress.get(sandbox_id)
            if egress is None:
                await self._serve_egress(sandbox_id, channel, takeover=False)
            else:
                await egress.serve_proxy(takeover=False)

    async def secret_values(self, sandbox_id: str) -> builtins.list[str]:
        """The values of the sandbox's secret variables: what output masking hides."""
        if sandbox_id not in self._secret_values:
            refs = (self.store.egress(sandbox_id) or {}).get("secret_env") or {}
            values: builtins.list[str] = []
            if refs:
                parsed = {k: SecretRef.model_validate(v) for k, v in refs.items()}
                resolved, _ = await resolve_env(parsed, self._secrets(sandbox_id))
                values = list(resolved.values())
            self._secret_values[sandbox_id] = values
        return self._secret_values[sandbox_id]

    async def connect(self, sandbox_id: str) -> LiveSandbox:
        info, provider = self._lookup(sandbox_id)
        if not provider.is_alive(info.handle):
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is no longer running", id=sandbox_id)
        channel = await provider.connect(info.handle)
        self._kill_on_violation(sandbox_id, channel)
        if self.store.ports(sandbox_id):  # exposed by an earlier process: serve them again
            await self.ports.rebuild(sandbox_id, self._channel_for(sandbox_id, channel))
        if provider.serves_egress:  # ready to serve its proxy and bridge if its holder goes
            try:
                await self._serve_egress(sandbox_id, channel, takeover=False)
            except SandlotError as exc:  # e.g. a bridge header's secret was removed since
                log.warning("sandbox %s: its egress cannot be served here: %s", sandbox_id, exc)
        return LiveSandbox(info, channel, provider)

    async def adopt(self, sandbox_id: str) -> LiveSandbox:
        """Take over a detached sandbox another (dead) process created: connect, and look
        after it as if created here (its expiry; its release when its agent goes away).

        Only one process at a time may look after a state folder's sandboxes: the first
        adoption makes this manager own the folder (until it closes, see
        :mod:`sandlot.store.owner`); :class:`ServerRunningError` when another process owns
        it (a running server), before anything of the sandbox is touched."""
        if not self._adopting:
            owner.acquire(self.home)
            self._adopting = True
        live = await self.connect(sandbox_id)
        self._owned[sandbox_id] = live
        remaining = live.info.expires_at.timestamp() - time.time()
        self._schedule_expiry(sandbox_id, max(remaining, 0.0))
        if isinstance(live.channel, Channel):  # its agent knows its limit already
            self.idle.follow(sandbox_id, live.info.idle_timeout)
        live.channel.on_close.append(lambda _error: self._on_exit(sandbox_id))
        return live

    def _lookup(self, sandbox_id: str) -> tuple[SandboxInfo, Provider]:
        if not isinstance(sandbox_id, str) or not sandbox_id:
            raise InvalidArgumentError("a sandbox id is a non-empty string")
        found = self.store.get(sandbox_id)
        if found is None:
            raise SandboxNotFoundError(f"no sandbox with id {sandbox_id!r}", id=sandbox_id)
        info = found[0]
        return info, self.provider(info.provider)

    # -- exposed ports ----------------------------------------------------------------------

    async def expose(self, sandbox_id: str, port: int, channel: Channel) -> str:
        """A URL on this host that forwards TCP to ``port`` inside the sandbox."""
        check_port(port)
        self._lookup(sandbox_id)
        host_port = await self.ports.expose(
            sandbox_id, port, self._channel_for(sandbox_id, channel)
        )
        return f"http://127.0.0.1:{host_port}"

    def _channel_for(self, sandbox_id: str, channel: Channel) -> ChannelFor:
        """The channel forwarded connections ride: the given one while it is open, else a
        new one (the caller that exposed the port may have closed its own)."""
        current = channel

        async def channel_for() -> Channel:
            nonlocal current
            if current.closed is not None:
                info, provider = self._lookup(sandbox_id)
                current = await provider.connect(info.handle)
                self._kill_on_violation(sandbox_id, current)
            return current

        return channel_for

    # -- list -------------------------------------------------------------------------------

    def list(self, metadata: dict[str, str] | None = None) -> list[SandboxInfo]:
        """Running sandboxes whose metadata contains every given key and value."""
        wanted = metadata or {}
        found = []
        for info, _ in self.store.all():
            if any(info.metadata.get(k) != v for k, v in wanted.items()):
                continue
            if self.provider(info.provider).is_alive(info.handle):
                found.append(info)
        return found

    async def list_sandboxes(self, metadata: dict[str, str] | None) -> builtins.list[SandboxInfo]:
        return self.list(metadata)

    async def is_running(self, live: Live) -> bool:
        # The provider by name: ``live`` may be any backend's (the same object for ours).
        provider = self.provider(live.info.provider)
        return live.channel.closed is None and provider.is_alive(live.info.handle)

    # -- end --------------------------------------------------------------------------------

    async def kill(self, sandbox_id: str) -> None:
        info, provider = self._lookup(sandbox_id)
        await self._release(info, provider)

    async def _release(self, info: SandboxInfo, provider: Provider) -> None:
        live = self._owned.pop(info.id, None)
        timer = self._timers.pop(info.id, None)
        if timer is not None:
            timer.cancel()
        self.idle.forget(info.id)
        checks = self._check_channels.pop(info.id, None)
        if checks is not None:
            checks.close()
        if live is not None:
            live.channel.close()
        self.ports.close(info.id)
        egress = self._egress.pop(info.id, None)
        if egress is not None:
            await egress.close()
        self._secret_values.pop(info.id, None)
        self._secret_stores.pop(info.id, None)
        await provider.destroy(info.handle)
        if info.handle.get("volumes"):
            self.volumes.detach(info.id)
        session = info.handle.get("session")
        if session:  # stopped: its workspace is still, and still here
            await self._save_workspace(info.id, session)
        self.store.delete(info.id)
        self._remove_folder(info.id)
        for callback in self.on_release:
            callback(info.id)

    async def _save_workspace(self, sandbox_id: str, session: dict[str, Any]) -> None:
        try:
            result: Any = await self.workspaces.save_released(
                sandbox_id, session, self.folder(sandbox_id)
            )
        except Exception as exc:
            result = exc
        for callback in self.on_checkpoint:
            callback(sandbox_id, session["id"], result)

    def _remove_folder(self, sandbox_id: str) -> None:
        """Delete a dead sandbox's folder in a worker thread: removing even an empty tree
        takes milliseconds on some file systems (ext4 with ``discard``), and nothing waits
        for it. If the process ends first, the next gc removes it as an orphan."""
        loop = asyncio.get_running_loop()
        folder = self.folder(sandbox_id)
        future = loop.run_in_executor(None, quota.remove_folder, folder)
        self._removals.add(future)
        future.add_done_callback(self._removals.discard)

    def _kill_on_violation(self, sandbox_id: str, channel: Channel) -> None:
        """A sandbox whose agent broke the channel protocol is hostile: kill it (the channel
        has already disconnected it)."""

        def broken(error: SandlotError) -> None:
            if isinstance(error, ProtocolError):
                log.warning("sandbox %s: %s; killing it", sandbox_id, error)
                Supervisor.current().spawn(self.kill(sandbox_id), "kill-hostile")

        if isinstance(channel, Channel):  # a remote server's channel is that server's care
            channel.on_close.append(broken)

    def _on_exit(self, sandbox_id: str) -> None:
        """An owned sandbox stopped by itself (its deadline, or its agent died)."""
        live = self._owned.get(sandbox_id)
        if live is not None:
            Supervisor.current().spawn(self._release(live.info, live.provider), "release")

    async def set_timeout(self, sandbox_id: str, seconds: float, channel: Channel) -> datetime:
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise InvalidArgumentError("timeout must be a positive number of seconds")
        if seconds > MAX_LIFETIME:
            raise InvalidArgumentError(f"timeout is at most {MAX_LIFETIME:g} seconds (a year)")
        self._lookup(sandbox_id)
        await channel.call("deadline", seconds=seconds)
        expires = datetime.now(UTC) + timedelta(seconds=seconds)
        self.store.set_expiry(sandbox_id, expires)
        if sandbox_id in self._owned:
            self._schedule_expiry(sandbox_id, seconds)
        return expires

    # -- idleness (see .idle) ----------------------------------------------------------------

    async def watch_idle(self, sandbox_id: str, seconds: float | None, channel: Any) -> None:
        """Give an owned sandbox its idle timeout (None: none)."""
        if seconds is not None and isinstance(channel, Channel):
            await self.idle.watch(sandbox_id, seconds, channel)
        # else none; or a remote server's sandbox, whose idle timeout that server keeps

    async def set_idle_timeout(self, sandbox_id: str, seconds: float | None, channel: Any) -> None:
        """A new idle timeout (None: none), counted from now. An owner in another process
        learns of it at its next check (its agent's limit changed: it reads the store)."""
        checked = check_seconds(seconds, "idle_timeout")
        info, _ = self._lookup(sandbox_id)
        if not isinstance(channel, Channel):
            raise InvalidArgumentError("this sandbox's idle timeout is kept by its server")
        await channel.call("idle", seconds=None if checked is None else agent_limit(checked))
        handle = {k: v for k, v in info.handle.items() if k != "idle_timeout"}
        if checked is not None:
            handle["idle_timeout"] = checked
        self.store.set_handle(sandbox_id, handle)
        live = self._owned.get(sandbox_id)
        if live is not None:
            live.info.handle = handle
            live.info.idle_timeout = checked
            self.idle.follow(sandbox_id, checked)

    def touch(self, sandbox_id: str) -> None:
        """Activity its agent does not see (a server's call answered from its store)."""
        self.idle.touch(sandbox_id)

    async def _idle_channel(self, sandbox_id: str) -> Channel:
        live = self._owned.get(sandbox_id)
        if live is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} is not ours", id=sandbox_id)
        if live.channel.closed is None:
            return live.channel
        channel = self._check_channels.get(sandbox_id)
        if channel is None or channel.closed is not None:
            info, provider = self._lookup(sandbox_id)
            if not provider.is_alive(info.handle):
                raise SandboxNotFoundError(f"sandbox {sandbox_id} has ended", id=sandbox_id)
            channel = self._check_channels[sandbox_id] = await provider.connect(info.handle)
            self._kill_on_violation(sandbox_id, channel)
        return channel

    def _idle_timeout_of(self, sandbox_id: str) -> float | None:
        found = self.store.get(sandbox_id)
        return found[0].idle_timeout if found is not None else None

    async def _stop_idle(self, sandbox_id: str) -> None:
        for callback in self.on_idle:
            callback(sandbox_id)
        await self.kill(sandbox_id)  # its release checkpoints a session's workspace

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of the sandbox (bwrap: the cgroup freezer; docker: pause)
        until :meth:`resume`. Its lifetime keeps running."""
        info, provider = self._lookup(sandbox_id)
        await provider.pause(info.handle)

    async def resume(self, sandbox_id: str) -> None:
        info, provider = self._lookup(sandbox_id)
        # Use, and before it runs again: an idle check left waiting on the frozen agent
        # must not take the time it was paused for idleness.
        self.touch(sandbox_id)
        await provider.resume(info.handle)

    async def is_paused(self, sandbox_id: str) -> bool:
        info, provider = self._lookup(sandbox_id)
        return await provider.paused(info.handle)

    def _schedule_expiry(self, sandbox_id: str, seconds: float) -> None:
        old = self._timers.pop(sandbox_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[sandbox_id] = loop.call_later(seconds, self._expire, sandbox_id)

    def _expire(self, sandbox_id: str) -> None:
        self._timers.pop(sandbox_id, None)
        found = self.store.get(sandbox_id)
        if found is None:
            return
        remaining = found[0].expires_at.timestamp() - time.time()
        if remaining > 0.01:  # another process extended it
            self._schedule_expiry(sandbox_id, remaining)
            return
        Supervisor.current().spawn(self.kill(sandbox_id), "expire")

    async def gc(self, *, quick: bool = False) -> GcReport:
        """Destroy sandboxes whose owner is gone or whose time is up; remove orphans.

        ``quick`` (a process's first create) looks for orphans only of the providers this
        manager has already made (and the default), not of every provider the state folder
        ever used: asking the Docker engine cost a bwrap user's first create 200-300 ms.
        The sweeper and ``sandlot gc`` look everywhere."""
        report = GcReport()
        now = time.time()
        known = set()
        for info, owner_started in self.store.all():
            owner_alive = info.owner_pid == NO_OWNER or procinfo.is_running(
                info.owner_pid, owner_started
            )
            if info.owner_pid == NO_OWNER and not info.handle and info.id not in self._owned:
                # A detached create that never finished (its process died half-way): nobody
                # will; what it started is found below as an orphan once the record is gone.
                owner_alive = now - info.created_at.timestamp() < UNFINISHED_CREATE
            expired = info.expires_at.timestamp() < now
            if owner_alive and not expired:
                known.add(info.id)
                continue
            if info.id in self._owned and not expired:
                known.add(info.id)
                continue
            try:
                provider = self.provider(info.provider)
            except Exception:
                self.store.delete(info.id)  # its provider is gone: nothing we can release
            else:
                await self._release(info, provider)
            report.removed.append(info.id)
        for _, provider in self._instantiated_local_providers(quick):
            for sandbox_id in await provider.list_instances():
                if sandbox_id not in known and self.store.get(sandbox_id) is None:
                    await provider.cleanup_orphan(sandbox_id)
                    report.orphans.append(sandbox_id)
        sandboxes = self.home / "sandboxes"
        if sandboxes.is_dir():
            for folder in sandboxes.iterdir():
                if folder.name not in known and self.store.get(folder.name) is None:
                    quota.remove_folder(folder)
                    if folder.name not in report.orphans:
                        report.orphans.append(folder.name)
        quota.collect(self.home)  # spare workspaces of processes that died
        if (self.home / "volumes").is_dir():  # records of sandboxes gone without a destroy
            self.volumes.collect()
        report.removed += await self.pools.maintain()  # dead members out; pools topped up
        await self.settle()
        return report

    async def _sweep(self) -> None:
        """Collect garbage on a timer, so a long-lived process (a server, a notebook) also
        removes what dead owners and crashed creates left behind, not only at its start."""
        raw = os.environ.get("SANDLOT_GC_INTERVAL")
        try:
            interval = max(float(raw), 0.1) if raw else GC_INTERVAL
        except ValueError:
            log.warning(
                "SANDLOT_GC_INTERVAL=%r is not a number: sweeping every %gs", raw, GC_INTERVAL
            )
            interval = GC_INTERVAL
        while True:
            await asyncio.sleep(interval)
            try:
                await self.gc()
            except Exception as exc:  # a sweep that fails is retried at the next tick
                log.warning("garbage collection failed: %s", exc)

    async def settle(self) -> None:
        """Wait for background clean-up (folders, cgroups) to finish."""
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        for provider in self._providers.values():
            await provider.settle()

    def _mark_used(self, name: str) -> None:
        """Note in the state folder that this host provider made sandboxes here (before it
        makes one: a create that crashes half-way leaves something to collect)."""
        if name not in self._marked:
            used = self.home / USED_FOLDER
            used.mkdir(exist_ok=True)
            (used / name).touch()
            self._marked.add(name)

    def _instantiated_local_providers(
        self, quick: bool = False
    ) -> builtins.list[tuple[str, Provider]]:
        """The host providers whose leftovers gc looks for: those this state folder has
        used (so a bwrap user's gc never imports, let alone asks, the Docker engine), and
        the default, which state folders older than the marks used without one; ``quick``:
        only those this manager has made, and the default."""
        from ..providers import BUILTIN

        used = self.home / USED_FOLDER
        found = []
        for name in BUILTIN:
            here = name == DEFAULT or name in self._providers
            if not here and (quick or not (used / name).exists()):
                continue
            try:
                found.append((name, self.provider(name)))
            except Exception as exc:  # an optional provider whose extra is not installed
                log.debug("gc skips provider %s: %s", name, exc)
        return found

    async def close(self) -> None:
        """Kill every sandbox this manager owns (at interpreter exit or loop shutdown); a
        detached manager only lets go of them (another process may adopt them)."""
        for closing in self.on_close:
            try:
                await closing()
            except Exception as exc:
                log.warning("closing: %s", exc, exc_info=True)
        self.on_close.clear()
        if self._sweeper is not None:
            await Supervisor.current().stop(self._sweeper)
            self._sweeper = None
        self.idle.close()
        for channel in self._check_channels.values():
            channel.close()
        self._check_channels.clear()
        await self.pools.close()
        if self.detached:
            for sandbox_id, live in list(self._owned.items()):
                timer = self._timers.pop(sandbox_id, None)
                if timer is not None:
                    timer.cancel()
                live.channel.on_close.clear()
                live.channel.close()
            self._owned.clear()
        for sandbox_id in list(self._owned):
            try:
                await self.kill(sandbox_id)
            except Exception:
                continue
        await self.ports.close_all()
        for egress in list(self._egress.values()):
            await egress.close()
        self._egress.clear()
        await self.settle()
        await self.workspaces.close()
        for provider in self._providers.values():
            try:
                await provider.close()
            except Exception as exc:  # one provider's trouble must not keep the rest open
                log.warning("closing provider %s: %s", provider.name, exc)
        self.store.close()
        if self._adopting:
            self._adopting = False
            owner.release(self.home)


def check_binds(
    provider: Provider, spec: SandboxSpec, roots: builtins.list[str] | None = None
) -> SandboxSpec:
    """The spec with its binds' host paths resolved (see providers/binds.py), or an error if
    the provider cannot mount them or one is outside ``roots`` (when given)."""
    if not spec.binds:
        return spec
    if roots is not None and provider.binds != "local":
        # A server's roots are paths of its own machine: it never forwards binds.
        raise InvalidArgumentError(
            f"this server cannot bind host paths with the {provider.name} provider",
            provider=provider.name,
        )
    if provider.binds == "forward":
        return spec
    if provider.binds != "local":
        raise InvalidArgumentError(
            f"the {provider.name} provider cannot mount host paths (binds): use bwrap or docker",
            provider=provider.name,
        )
    return spec.model_copy(update={"binds": binds.resolve(spec.binds, roots)})


def check_volumes(provider: Provider, spec: SandboxSpec, owner: str) -> None:
    """Volumes need a provider that mounts host folders (bwrap, docker); the remote provider
    passes their names on to its server, except from a server's tenant (its names are this
    server's, not the far one's)."""
    if not spec.volumes:
        return
    if provider.binds == "forward" and owner == "":
        return
    if provider.binds != "local":
        raise InvalidArgumentError(
            f"the {provider.name} provider cannot mount volumes: use bwrap or docker",
            provider=provider.name,
        )
