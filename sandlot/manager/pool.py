"""Warm pools: started sandboxes kept ready per spec, so a create that matches one is a take.

A pool is a spec (everything that defines the sandbox: provider, resources, network, config,
env, working folder; not its metadata or lifetime) and a size, in the store, so any process
on the same state folder serves it. Its members are ordinary sandbox records created by a
*detached* manager (no owner: they outlive the process that made them) with a long lifetime.

A template name in a spec is pinned to its digest (see :mod:`.pool_templates`): a pool of a
template follows its name to each rebuild.

A take is one SQLite transaction (the oldest ready member leaves the pool and gets its new
owner, metadata and expiry at once: two processes never take the same member), one channel
(the one this process already holds when it made the member, else a connect) and one
``deadline`` call. The taking manager then looks after it as after a sandbox it created; the
pool refills in the background. A member is never handed out twice: once taken it is just a
sandbox, killed at the end of its lifetime or by ``kill()``.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from ..egress.policy import NetworkPolicy
from ..errors import InvalidArgumentError, NotFoundError
from ..models import SandboxSpec, describe
from ..providers import BUILTIN, procinfo, provider_class
from ..secrets.resolve import has_refs
from ..supervisor import Supervisor
from .base import LiveSandbox, default_provider
from .pool_templates import (
    DIGEST_PREFIX,
    FOLLOWS,
    current_digest,
    followed,
    is_name,
    pin_template,
    without_follows,
)

if TYPE_CHECKING:
    from pathlib import Path

    from ..channel import Channel
    from ..providers import Provider
    from ..store import Store

log = logging.getLogger("sandlot")


class PoolOwner(Protocol):
    """What pools need of the manager that serves them: :class:`~sandlot.manager.Manager`
    (which imports this module; this module never imports it). A take hands the manager a
    started sandbox to look after as if it had created it, hence its private parts."""

    home: Path
    store: Store
    detached: bool
    pools: Pools
    on_release: builtins.list[Callable[[str], None]]
    _collected: bool
    _owned: dict[str, LiveSandbox]
    _timers: dict[str, asyncio.TimerHandle]
    _secret_values: dict[str, builtins.list[str]]

    def provider(self, name: str) -> Provider: ...
    async def create(self, spec: SandboxSpec) -> LiveSandbox: ...
    async def kill(self, sandbox_id: str) -> None: ...
    async def set_timeout(self, sandbox_id: str, seconds: float, channel: Channel) -> Any: ...
    async def watch_idle(self, sandbox_id: str, seconds: float | None, channel: Any) -> None: ...
    async def close(self) -> None: ...
    def _schedule_expiry(self, sandbox_id: str, seconds: float) -> None: ...
    def _kill_on_violation(self, sandbox_id: str, channel: Channel) -> None: ...
    def _on_exit(self, sandbox_id: str) -> None: ...


POOL_LIFETIME = 86400.0  # seconds a member lives unclaimed (the agent's own deadline too)
# A member is started with this lifetime, and given POOL_LIFETIME once it is in the pool: if
# its maker dies half-way (SIGKILL, interpreter exit), its agent ends itself soon after.
UNFINISHED_LIFETIME = 120.0
RETIRE_BEFORE = 3600.0  # a member with less than this left is replaced, not handed out
STALE_SLOT = 300.0  # seconds a reserved slot may wait for its sandbox before it is dropped
MAX_SIZE = 1000
REFILL_DELAY = 0.05  # seconds after a take before its refill starts: the take returns first
CLOSE_WAIT = 10.0  # seconds close() lets refills in flight finish (short scripts take too)
POOL_LABEL = "sandlot.pool"  # a member's metadata until taken: its pool's key
_KEY_EXCLUDE = {"metadata", "timeout", "idle_timeout"}  # lifetimes are the taker's
_OWNER_STARTED = procinfo.start_time(os.getpid())
# Taken members this process owns, by id: their handles. A member was started without
# ``--die-with-parent`` (by whichever process filled the pool), so the owner's exit ends it
# here instead (gc ends it if the owner is SIGKILLed).
_TAKEN: dict[str, dict[str, Any]] = {}
_FILLERS: weakref.WeakSet[PoolOwner] = weakref.WeakSet()  # this process's member makers


_PID = os.getpid()


@atexit.register
def _kill_taken() -> None:
    from pathlib import Path

    from ..providers import cgroups

    if os.getpid() != _PID:  # a forked child's exit: they are its parent's
        return
    for handle in list(_TAKEN.values()):
        try:
            cgroups.kill_all([Path(g) for g in handle.get("cgroups", [])])
            procinfo.kill(handle.get("pid", -1), handle.get("started"))
        except Exception:
            continue
    _TAKEN.clear()


def unpoolable(spec: SandboxSpec) -> str | None:
    """Why a spec cannot come from a pool (its set-up is per sandbox), or None."""
    if spec.secret_env or has_refs(spec.config):
        return "it has secret references (resolved per sandbox)"
    if spec.bridge is not None:
        return "it has a callback bridge (a token per sandbox)"
    if isinstance(spec.network, NetworkPolicy):
        return "it has a network policy (a proxy served per sandbox)"
    return None


def pool_spec(spec: SandboxSpec) -> dict[str, Any]:
    """The fields of ``spec`` that define the sandbox, as JSON (what a pool stores)."""
    return spec.model_dump(mode="json", exclude=_KEY_EXCLUDE)


def pool_key(spec: SandboxSpec) -> str:
    """A hash of :func:`pool_spec`'s canonical JSON: equal for specs that make the same
    sandbox, whatever their metadata and lifetime."""
    text = json.dumps(pool_spec(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _released(sandbox_id: str) -> None:
    _TAKEN.pop(sandbox_id, None)


@dataclass
class PoolStatus:
    key: str
    spec: dict[str, Any]
    size: int
    ready: list[str] = field(default_factory=list)  # member sandbox ids, oldest first
    filling: int = 0  # slots a process is creating a member for


class Pools:
    """The warm pools of one manager's state folder, served by that manager."""

    def __init__(
        self,
        manager: PoolOwner,
        make_filler: Callable[[], PoolOwner],
        *,
        enabled: bool = True,
    ) -> None:
        self.manager = manager
        self.enabled = enabled  # False for the manager that fills pools (never takes)
        self._make_filler = make_filler  # a detached manager of the same state folder
        self._filler: PoolOwner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refilling: dict[str, asyncio.Task[Any]] = {}
        self._again: set[str] = set()  # pools taken from while their refill ran
        self._token = secrets.token_hex(4)
        self._closed = False
        manager.on_release.append(_released)

    # -- configuration ----------------------------------------------------------------------

    async def set(self, spec: SandboxSpec, size: int, *, wait: bool = True) -> PoolStatus:
        """Keep ``size`` started sandboxes of ``spec``: fill the pool up to it (``wait``:
        before returning), or kill the members beyond it."""
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
            raise InvalidArgumentError(f"a pool's size is a whole number from 0 to {MAX_SIZE}")
        spec = default_provider(spec)
        name = spec.provider or ""
        provider_class(name)  # an unknown provider: ProviderNotFoundError, naming the known
        if name not in BUILTIN:
            raise InvalidArgumentError(
                f"pools keep sandboxes of local providers only ({', '.join(sorted(BUILTIN))}):"
                f" a {name!r} sandbox is not on this host"
            )
        reason = unpoolable(spec)
        if reason is not None:
            raise InvalidArgumentError(f"this spec cannot be pooled: {reason}")
        self.manager.provider(name).parse_config(spec.config)
        spec, follows = pin_template(self.manager.home, spec)
        key = pool_key(spec)
        stored = pool_spec(spec)
        if follows is not None:
            stored[FOLLOWS] = follows
        store = self.manager.store
        store.set_pool(key, stored, size)
        surplus = len(store.pool_members(key)) - size
        if surplus > 0:
            for sandbox_id, _, _, ready in store.pool_members(key):
                if surplus <= 0:
                    break
                if ready and store.remove_pool_member(sandbox_id):
                    await self._kill(sandbox_id)
                    surplus -= 1
        if wait:
            await self.top_up(key)
        else:
            self.refill(key)
        return self.status(key)

    async def remove(self, key: str) -> list[str]:
        """Forget a pool (a key or a unique prefix of one) and kill its members; their ids."""
        key = self.resolve(key)
        store = self.manager.store
        store.delete_pool(key)
        killed = []
        for sandbox_id, _, _, ready in store.pool_members(key):
            # A slot being filled (not ready): its creator finds it gone and kills what it made.
            if not store.remove_pool_member(sandbox_id):
                continue  # taken meanwhile: someone's sandbox now
            if ready:
                await self._kill(sandbox_id)
                killed.append(sandbox_id)
        return killed

    def resolve(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError("a pool key is a non-empty string (see `sandlot pool ls`)")
        keys = [k for k, _, _ in self.manager.store.pools() if k.startswith(key)]
        if not keys:
            raise NotFoundError(f"no pool with key {key!r} (see `sandlot pool ls`)")
        if len(keys) > 1:
            raise InvalidArgumentError(f"{key!r} is the start of several pools' keys: say more")
        return keys[0]

    def status(self, key: str) -> PoolStatus:
        for found in self.list():
            if found.key == key:
                return found
        raise NotFoundError(f"no pool with key {key!r}")

    def list(self) -> builtins.list[PoolStatus]:
        store = self.manager.store
        pools = {k: PoolStatus(k, spec, size) for k, spec, size in store.pools()}
        for sandbox_id, key, _, ready in store.pool_members():
            status = pools.get(key)
            if status is None:
                continue
            if ready:
                status.ready.append(sandbox_id)
            else:
                status.filling += 1
        return list(pools.values())

    # -- take -------------------------------------------------------------------------------

    async def take(self, spec: SandboxSpec) -> LiveSandbox | None:
        """A started sandbox of ``spec`` (provider defaults applied) from its pool, set up as
        if created here (owner, metadata, lifetime); None if no pool serves it or it is empty."""
        if not self.enabled or unpoolable(spec) is not None:
            return None
        name = spec.template if is_name(spec.template) else None
        if name is not None:  # a member of the build the name points at now, or none
            digest = current_digest(self.manager.home, name)
            if digest is None:
                return None  # the create says the template is not there
            spec = spec.model_copy(update={"template": DIGEST_PREFIX + digest})
        key = pool_key(spec)
        store = self.manager.store
        if store.pool_size(key) is None:
            if name is not None:  # rebuilt since: its pool moves, this take starts cold
                await self.follow(name)
            return None
        manager = self.manager
        owner = 0 if manager.detached else os.getpid()
        started = None if manager.detached else _OWNER_STARTED
        try:
            for _ in range(3):  # a dead member is released, and the next one tried
                expires = datetime.now(UTC) + timedelta(seconds=spec.timeout)
                claimed = store.claim_pool_member(key, owner, started, spec.metadata, expires)
                if claimed is None:
                    return None
                live = await self._adopt(claimed[0], spec)
                if live is not None:
                    return live
            return None
        finally:
            self.refill(key, REFILL_DELAY)

    async def _adopt(self, info: Any, spec: SandboxSpec) -> LiveSandbox | None:
        manager = self.manager
        provider = manager.provider(info.provider)
        held = None
        child = None
        # Made by this process (by any manager's filler: the taker's pools may not be the
        # ones that filled): its channel is open already, and its maker must let go of it,
        # or that maker would release it (and remove its folder) when it ends.
        for filler in [f for f in _FILLERS if f.home == manager.home]:
            held = filler._owned.pop(info.id, None)
            timer = filler._timers.pop(info.id, None)
            if timer is not None:
                timer.cancel()
            if held is not None:
                children = getattr(filler.provider(info.provider), "_children", {})
                child = children.get(info.handle.get("pid"))
                break
        try:
            if held is not None and held.channel.closed is None:
                channel = held.channel
            else:
                if held is not None:
                    held.channel.close()
                if not provider.is_alive(info.handle):
                    raise NotFoundError(f"pool member {info.id} is no longer running")
                channel = await provider.connect(info.handle)
                manager._kill_on_violation(info.id, channel)
            await channel.call("deadline", seconds=spec.timeout)
            if spec.idle_timeout is not None:  # in its handle, for a process that adopts it
                manager.store.set_handle(
                    info.id, {**info.handle, "idle_timeout": spec.idle_timeout}
                )
        except Exception as exc:
            log.warning("pool member %s cannot be used (%s): killing it", info.id, exc)
            await self._kill(info.id)
            return None
        info.handle = {**info.handle, "pooled": True}  # this process's copy only: a hit
        live = LiveSandbox(info, channel, provider)
        manager._owned[info.id] = live
        manager._secret_values[info.id] = []  # a pooled spec has no secret variables
        manager._schedule_expiry(info.id, spec.timeout)
        info.idle_timeout = spec.idle_timeout
        try:
            await manager.watch_idle(info.id, spec.idle_timeout, channel)
        except Exception as exc:
            log.warning("pool member %s cannot be used (%s): killing it", info.id, exc)
            await manager.kill(info.id)
            return None
        if child is not None:  # its end releases it, as for a sandbox created here
            child.exited.add_done_callback(lambda _: manager._on_exit(info.id))
        if not manager.detached and "pid" in info.handle:
            _TAKEN[info.id] = info.handle
        return live

    # -- refill and upkeep ------------------------------------------------------------------

    async def follow(self, name: str | None = None) -> builtins.list[str]:
        """Move the pools that follow a template name (``name``: that name's only) to the
        digest it points at now: the old build's members killed, the new key's filled in
        the background. A name that is gone leaves its pool on the build it had. The new
        keys."""
        store = self.manager.store
        moved = []
        for key, stored, size in store.pools():
            follows = followed(stored)
            if follows is None or (name is not None and follows != name):
                continue
            digest = current_digest(self.manager.home, follows)
            ref = None if digest is None else DIGEST_PREFIX + digest
            if ref is None or stored.get("template") == ref:
                continue
            moved_spec = {**stored, "template": ref}
            new_key = pool_key(_member_spec(moved_spec, key))
            store.set_pool(new_key, moved_spec, size)
            with contextlib.suppress(NotFoundError):
                await self.remove(key)
            log.info("pool %s follows template %s to %s: now pool %s", key, follows, ref, new_key)
            self.refill(new_key)
            moved.append(new_key)
        return moved

    def filler(self) -> PoolOwner:
        """The detached manager that creates members (no owner: they outlive this process)."""
        if self._filler is None:
            filler = self._make_filler()
            filler.pools.enabled = False
            filler._collected = True  # no gc or sweeper of its own: this manager's do it
            self._filler = filler
            _FILLERS.add(filler)
        return self._filler

    def refill(self, key: str, delay: float = 0.0) -> None:
        """Top the pool up in the background (one refill per pool at a time), ``delay``
        seconds from now: creating starts with a few milliseconds of synchronous work
        (spawning bwrap), which would otherwise run before the taker gets its sandbox."""
        if self._closed:
            return
        running = self._refilling.get(key)
        if running is not None and not running.done():
            # It may have counted its slots before this take: it runs once more.
            self._again.add(key)
            return
        task = Supervisor.current().spawn(self._top_up_later(key, delay), "pool-refill")
        self._refilling[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._refilled)

    async def _top_up_later(self, key: str, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if self._closed:
            # Closing (often at interpreter exit, where no worker thread takes work): a
            # create started now could not finish, and would leave a sandbox behind with
            # neither a record nor a cgroup. The next take or gc tops the pool up.
            return
        while True:
            self._again.discard(key)
            await self.top_up(key)
            if key not in self._again or self._closed:
                return

    def _refilled(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # At interpreter exit (the executor is shut down) a refill cannot start: the
            # next process's take or gc puts the member back.
            level = logging.DEBUG if self._closed else logging.WARNING
            log.log(level, "refilling a pool failed: %s", task.exception())

    async def top_up(self, key: str) -> builtins.list[str]:
        """Create the members the pool lacks (slots reserved first, so processes topping up
        the same pool together never overshoot it); the new members' ids."""
        store = self.manager.store
        found = [spec for k, spec, _ in store.pools() if k == key]
        if not found:
            return []
        slots = store.reserve_pool_slots(key, self._token + secrets.token_hex(2))
        spec = _member_spec(found[0], key)
        created: builtins.list[str] = []
        try:
            while slots:
                slot = slots[0]
                live = await self.filler().create(spec)
                slots.pop(0)
                if store.fill_pool_slot(slot, live.info.id):
                    await self.filler().set_timeout(live.info.id, POOL_LIFETIME, live.channel)
                    created.append(live.info.id)
                else:  # the pool was removed or shrunk meanwhile
                    await self.filler().kill(live.info.id)
        finally:
            for slot in slots:
                store.fill_pool_slot(slot, None)
        return created

    async def maintain(self, *, refill: bool = True) -> builtins.list[str]:
        """Drop members that died, are near their end or belong to no pool, and slots
        nobody fills; then (``refill``) top every pool up in the background. The ids
        killed."""
        if not self.enabled:
            return []
        try:
            await self.follow()  # a rebuilt template's pool moves before it is topped up
        except Exception as exc:  # a damaged template store must not stop the upkeep
            log.warning("moving pools to rebuilt templates failed: %s", exc)
        store = self.manager.store
        sizes = {key: size for key, _, size in store.pools()}
        now = time.time()
        removed = []
        kept: dict[str, builtins.list[str]] = {}
        for sandbox_id, key, created_at, ready in store.pool_members():
            if not ready:
                if now - created_at > STALE_SLOT:
                    store.fill_pool_slot(sandbox_id, None)
                continue
            found = store.get(sandbox_id)
            if found is None:
                store.remove_pool_member(sandbox_id)
                continue
            info = found[0]
            try:
                alive = self.manager.provider(info.provider).is_alive(info.handle)
            except Exception:
                alive = False
            retire = info.expires_at.timestamp() - now < RETIRE_BEFORE
            if alive and not retire and key in sizes:
                kept.setdefault(key, []).append(sandbox_id)
                continue
            if store.remove_pool_member(sandbox_id):
                await self._kill(sandbox_id)
                removed.append(sandbox_id)
        for key, members in kept.items():  # beyond the size (e.g. set smaller elsewhere)
            for sandbox_id in members[: max(len(members) - sizes[key], 0)]:
                if store.remove_pool_member(sandbox_id):
                    await self._kill(sandbox_id)
                    removed.append(sandbox_id)
        if refill:
            for key in sizes:
                self.refill(key)
        return removed

    async def _kill(self, sandbox_id: str) -> None:
        manager = self._filler if self._filler is not None else self.manager
        try:
            await manager.kill(sandbox_id)
        except NotFoundError:
            pass
        except Exception as exc:
            log.warning("killing pool member %s: %s", sandbox_id, exc)

    async def close(self) -> None:
        """Let refills in flight finish (briefly: a short script that took a member still
        puts one back), then stop them; let go of the members made here."""
        self._closed = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._filler is not None:
            filler, self._filler = self._filler, None
            await filler.close()


def _member_spec(stored: dict[str, Any], key: str) -> SandboxSpec:
    try:
        spec = SandboxSpec.model_validate(
            {
                **without_follows(stored),
                "timeout": UNFINISHED_LIFETIME,
                "idle_timeout": None,  # a member waits unused: the taker's starts at the take
                "metadata": {POOL_LABEL: key},
            }
        )
    except Exception as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise InvalidArgumentError(describe(exc, f"pool {key}'s spec")) from None
        raise
    return spec
