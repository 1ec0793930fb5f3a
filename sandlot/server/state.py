"""What one ``sandlot serve`` process holds: the store, the event hub, the manager, the runs.

Sandbox records, sessions, executions and the event log live in the database; the channels
to the agents and the pumps of running executions live here. Every lookup goes through the
caller's tenant, so another tenant's sandbox is indistinguishable from one that never was.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from ..egress.bridge_config import BridgeConfig
from ..egress.policy import NetworkPolicy, is_public, system_resolver
from ..errors import (
    ExecutionLostError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
    ProviderUnavailableError,
    SandboxClosedError,
    SandboxNotFoundError,
    SessionError,
)
from ..manager import LiveSandbox, Manager
from ..manager.manager import default_provider
from ..manager.sessions import Attachment, Sessions
from ..models import SandboxSpec
from ..providers import DEFAULT, provider_class
from ..secrets.refs import as_ref
from ..secrets.store import DatabaseSecrets
from ..store import default_home, owner
from ..store.database import Database, sqlite_url
from ..store.keys import LOCAL_TENANT, Keys
from ..store.records import ExecutionRecord, Records, SandboxRecord
from ..store.retention import Retention
from ..supervisor import Loop, Supervisor
from ..transcript.eventlog import EventLog
from ..transcript.hub import Hub
from ..transcript.logwriter import LogWriter
from ..transcript.recorder import REATTACHABLE
from ..transcript.runs import Run, Runs, takes_run_lock
from .metrics import Metrics
from .templates import ServerTemplates, check_ref

log = logging.getLogger("sandlot.server")
AUTH_CACHE_SECONDS = 2.0
MAINTENANCE_SECONDS = 60.0  # between prunes of old or oversized logs and idempotency answers
IDEMPOTENCY_SECONDS = 86400.0  # how long a stored first answer is kept
LOST = "the server restarted while this ran: what it did after that was not recorded"
# The caller of the request being served, as ``get`` last saw it: who an execution started in
# the same request holds a session's run lock as.


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    home: Path | None = None
    database_url: str | None = None
    allow_unisolated: bool = Field(
        False, description="let tenants use the unisolated 'process' provider"
    )
    max_log_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="output logged per execution; the rest is dropped"
    )
    retention_seconds: float = Field(
        7 * 86400, gt=0, description="how long the log of an ended session is kept"
    )
    tenant_log_bytes: int = Field(
        10 * 1024**3,
        ge=0,
        description="stored (compressed) log bytes per tenant; beyond them the logs of its "
        "ended sessions are dropped, oldest first",
    )
    egress_private: bool = Field(
        False,
        description="let tenants' network rules name private, loopback and link-local "
        "addresses (the server's own networks)",
    )
    kill_on_exit: bool = Field(
        False,
        description="kill the sandboxes when the server stops (by default they keep running "
        "until their deadline, and the next start adopts them)",
    )
    allow_bind_roots: list[str] = Field(
        default_factory=list,
        description="host folders beneath which a sandbox may bind host paths (binds, after "
        "symlinks are resolved on this machine); empty: binds are refused. Any tenant may "
        "bind anything beneath them",
    )
    volume_count: int = Field(100, ge=0, description="named volumes per tenant")
    volume_total_mb: int = Field(
        1 << 20,
        ge=0,
        description="the sizes of a tenant's named volumes together, in MiB (an uncapped "
        "volume counts as 10 GiB)",
    )
    template_count: int = Field(
        20, ge=0, description="templates a tenant may have (names; a rebuild replaces its own)"
    )
    template_bytes: int = Field(
        20 * 1024**3,
        ge=0,
        description="bytes of templates a tenant may have: the sum of their sizes (layers "
        "shared by two templates count in both)",
    )
    allow_local_template_bases: bool = Field(
        False,
        description="let tenants build templates from this host's own files and engine "
        "(docker:, rootfs: and tar: bases); host and oci: bases are always allowed",
    )
    e2b: bool = Field(True, description="serve E2B's API beside sandlot's own (docs/e2b.md)")
    mcp: bool = Field(
        True, description="serve the MCP tools at /mcp (docs/mcp.md; needs the mcp package)"
    )

    def resolved_home(self) -> Path:
        return self.home or default_home()

    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url(self.resolved_home())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_NOT_GLOBAL = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
        "::/127", "::ffff:0:0/96", "64:ff9b::/96", "2002::/16", "fc00::/7", "fe80::/10",
        "ff00::/8",
    )
]  # fmt: skip


def _reaches_private(network: Any) -> bool:
    """Whether an address rule covers any of the host's own kinds of network."""
    if network is None:
        return False
    return any(network.version == n.version and network.overlaps(n) for n in _NOT_GLOBAL)


@dataclass
class Principal:
    tenant: str
    admin: bool
    key_id: str | None = None
    key_name: str | None = None

    @property
    def holder(self) -> str:
        """Who holds a session's lease or run lock, as a busy error names it."""
        if self.key_id is None:
            return "local"
        return f"key {self.key_id} ({self.key_name})" if self.key_name else f"key {self.key_id}"


@dataclass
class Served:
    """A sandbox this server runs: its record and its channel."""

    record: SandboxRecord
    live: LiveSandbox
    durable: bool = False  # attached to a durable session: its runs take the session's lock


@dataclass
class ServerState:
    settings: ServerSettings
    db: Database
    keys: Keys
    records: Records
    log: EventLog
    hub: Hub
    manager: Manager
    metrics: Metrics
    sessions: Sessions
    runs: Runs
    templates: ServerTemplates
    served: dict[str, Served] = field(default_factory=dict)
    _auth_cache: dict[str, tuple[float, Any]] = field(default_factory=dict)
    _maintenance: Loop | None = None
    _endings: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    _idle: set[str] = field(default_factory=set)  # sandboxes being stopped for idleness

    @classmethod
    async def start(cls, settings: ServerSettings, metrics: Metrics) -> ServerState:
        home = settings.resolved_home()
        # One server per state folder, checked before the store or any sandbox is touched
        # (``sandlot serve`` took it already, before binding its port; this is the same lock).
        owner.acquire(home, f"http://{settings.host}:{settings.port}")
        db = Database(settings.resolved_database_url())
        await asyncio.to_thread(db.migrate)
        log = EventLog(db)
        records = Records(db)
        hub = Hub(log, LogWriter(db, log, records), on_commit=metrics.count_commit)
        hub.start()
        manager = Manager(home, detached=True)
        manager.bind_roots = list(settings.allow_bind_roots)
        sessions = Sessions(manager, db, hub, owns_store=False)
        runs = Runs(
            hub,
            sessions,
            max_log_bytes=settings.max_log_bytes,
            on_end=lambda run: metrics.executions_finished.labels(run.kind).inc(),
        )
        state = cls(
            settings=settings,
            db=db,
            keys=Keys(db),
            records=records,
            log=log,
            hub=hub,
            manager=manager,
            metrics=metrics,
            sessions=sessions,
            runs=runs,
            templates=ServerTemplates(
                home,
                settings.template_count,
                settings.template_bytes,
                settings.allow_local_template_bases,
                settings.egress_private,
            ),
        )
        # First: the server records a sandbox's end (with why) before the sessions do.
        state.manager.on_release.insert(0, state._released)
        state.manager.on_idle.append(state._idle.add)
        state.manager.on_egress_event.append(state._egress_event)
        state.manager.secrets_for = state._secrets_of_sandbox
        await hub.write(state.keys.ensure_tenant, LOCAL_TENANT)
        await hub.write(records.release_pending_idempotency)
        await state.recover()
        state.sessions.start_reaper()
        state._maintenance = Supervisor.current().keep("maintenance", state._maintain)
        return state

    async def _maintain(self) -> None:
        """Retention: drop the logs of sessions that ended long ago, and of a tenant's oldest
        ended sessions while its logs are over their cap; old stored answers. A write per
        bounded step, so other writes go between them (Retention.step)."""
        retention = Retention(self.db)
        while True:
            now = time.time()
            try:
                cutoff, cap = now - self.settings.retention_seconds, self.settings.tenant_log_bytes
                while await self.hub.write(retention.step, cutoff, cap):
                    pass
                while await self.hub.write(self.db.reclaim):  # free pages back to the disk
                    pass
                await self.hub.write(self.records.prune_idempotency, now - IDEMPOTENCY_SECONDS)
            except Exception:
                log.exception("pruning the store failed")
            await asyncio.sleep(
                max(1.0, min(MAINTENANCE_SECONDS, self.settings.retention_seconds / 4))
            )

    async def close(self) -> None:
        if self._maintenance is not None:
            await Supervisor.current().stop(self._maintenance)
        await self.sessions.close()
        if self.settings.kill_on_exit:
            self.runs.cancel()
        else:  # the commands run on in their sandboxes: the next start re-attaches to them
            await self.runs.detach()
        if self.settings.kill_on_exit:
            for sandbox_id in list(self.served):
                try:
                    await self.manager.kill(sandbox_id)
                except Exception:
                    continue
        await self.manager.close()
        await self.hub.close()
        self.db.close()
        owner.release(self.settings.resolved_home())  # a successor may adopt from now on

    async def recover(self) -> None:
        """After a restart: adopt the sandboxes that still run (they outlive the server),
        end the records of the rest, and carry on the executions the last process was
        pumping. A command of an adopted sandbox is re-attached to (the agent keeps its
        process and output log): its record goes on from the agent offset the log stored,
        with its run lock (if it held its session's) held until it ends. The rest end with
        ExecutionLostError, so their followers get an end to their stream: a command whose
        sandbox (or process, to its agent) is gone, and code cells, which the agent cannot
        re-attach to (an install is a process of the agent's: it is re-attached to)."""
        running = await asyncio.to_thread(self.records.running_executions, None)
        lost: set[str] = set()
        for record in await asyncio.to_thread(self.records.list_sandboxes, None, None, "running"):
            try:
                live = await self.manager.adopt(record.id)
            except Exception:
                for execution in running:  # lost before their sandbox's end is recorded
                    if execution.sandbox_id == record.id:
                        await self._lose(execution, f"{LOST}, and its sandbox is gone")
                        lost.add(execution.id)
                await self._end_sandbox(record.id, record.session_id, "gone after a restart")
                continue
            session = await asyncio.to_thread(self.records.get_session, record.session_id)
            durable = session is not None and session.workspace is not None
            self.served[record.id] = Served(record, live, durable)
            self._note(record.session_id, "sandbox", {"event": "adopted", "sandbox": record.id})
        carried = [e for e in running if e.id not in self.runs and e.id not in lost]
        places = await self._places(carried)
        tenant_secrets: dict[str, list[str]] = {}
        for execution in carried:
            place = places.get(execution.session_id, {}).get(execution.id)
            why = await self._reattach(execution, place, tenant_secrets)
            if why is not None:
                await self._lose(execution, why)

    async def _places(self, carried: list[ExecutionRecord]) -> dict[str, dict[str, Any]]:
        """Where the executions to carry on stood in their agents' logs, by session; the
        log's writer learns them all before any of them logs output (LogWriter.remember)."""
        places: dict[str, dict[str, Any]] = {}
        for execution in carried:
            if execution.session_id not in places:
                stored = await asyncio.to_thread(self.records.resume_places, execution.session_id)
                places[execution.session_id] = stored
        for session_id, stored in places.items():
            ids = {e.id for e in carried if e.session_id == session_id}
            kept = {k: v for k, v in stored.items() if k in ids}
            places[session_id] = kept
            if kept:
                try:
                    await self.hub.write(self.hub.writer.remember, session_id, kept)
                except Exception:  # a malformed place: that execution replays or is lost
                    log.exception("cannot restore the places of session %s", session_id)
        return places

    async def _lose(self, execution: ExecutionRecord, why: str) -> None:
        """End an execution the server lost in a restart (see recover)."""
        outcome = ExecutionLostError(why, id=execution.id).to_dict()
        # The error event ends the execution's record as it commits.
        self.hub.put_nowait(
            execution.session_id, execution.id, "error", json.dumps(outcome).encode()
        )
        # A durable session's run lock held by it would never be released.
        await self.sessions.unlock(execution.session_id, execution.id)

    async def _reattach(
        self, execution: ExecutionRecord, place: Any, tenant_secrets: dict[str, list[str]]
    ) -> str | None:
        """Carry on an execution after a restart (see recover); None if it does, else why it
        is lost."""
        served = self.served.get(execution.sandbox_id)
        if served is None:
            return f"{LOST}, and its sandbox is gone"
        if execution.kind not in REATTACHABLE or execution.pid is None:  # a code cell
            return f"{LOST} (it may still be running in the sandbox)"
        record = served.record
        if record.tenant not in tenant_secrets:  # which the command used is not recorded
            tenant_secrets[record.tenant] = await self._all_secret_values(record.tenant)
        secrets = [*await self.manager.secret_values(record.id), *tenant_secrets[record.tenant]]
        locked = served.durable and execution.id == await self.sessions.lock_holder(
            execution.session_id
        )
        try:
            await self.runs.reattach(
                served.live.channel, execution, place, secrets=secrets, locked=locked
            )
        except Exception as exc:  # one execution's trouble must not stop the server
            if getattr(exc, "code", None) == "process_not_found":
                return f"{LOST}, and its process is gone from the sandbox"
            log.warning("cannot re-attach to execution %s: %s", execution.id, exc)
            return f"{LOST}: re-attaching to it failed ({exc})"
        return None

    async def _all_secret_values(self, tenant: str) -> list[str]:
        """Every secret value of a tenant: masked in a re-attached command's output (a
        superset of the values its environment used, which were not recorded)."""
        store = self.secrets(tenant)
        try:
            return [await store.get(info.name) for info in await store.list()]
        except Exception:
            log.warning("cannot read the secrets of tenant %s to mask output", tenant)
            return []

    # -- auth -------------------------------------------------------------------------------

    async def auth_required(self) -> bool:
        cached = self._auth_cache.get("")
        if cached is not None and cached[0] > time.monotonic():
            return bool(cached[1])
        # Beyond loopback a key is always needed, even if the last one was revoked.
        required = not is_loopback(self.settings.host) or await asyncio.to_thread(
            self.keys.any_active
        )
        self._auth_cache[""] = (time.monotonic() + AUTH_CACHE_SECONDS, required)
        return required

    async def authenticate(self, token: str) -> Principal | None:
        if not token:  # never a key (and "" is auth_required's own entry in the cache)
            return None
        cached = self._auth_cache.get(token)
        if cached is not None and cached[0] > time.monotonic():
            found: Principal | None = cached[1]
            return found
        key = await self.hub.write(self.keys.authenticate, token)  # it may note last use
        principal = None if key is None else Principal(key.tenant, key.admin, key.id, key.name)
        if len(self._auth_cache) > 10000:
            self._auth_cache.clear()
        self._auth_cache[token] = (time.monotonic() + AUTH_CACHE_SECONDS, principal)
        return principal

    def forget_auth(self) -> None:
        """Keys changed in this process: take effect at once."""
        self._auth_cache.clear()

    # -- sandboxes --------------------------------------------------------------------------

    def check_provider(self, spec: SandboxSpec) -> None:
        name = spec.provider or DEFAULT
        cls = provider_class(name)
        # Provider settings decide what of the host a sandbox sees (bwrap's host_user,
        # ro_binds, python) and where a server forwards work (remote's url): the operator's
        # choice, never a caller's. Each provider names the few a caller may choose.
        refused = sorted(set(spec.config) - cls.caller_settings)
        if refused:
            raise ProviderUnavailableError(
                f"this server does not take provider settings from a call ({', '.join(refused)})"
                + (
                    "; the remote provider uses the server's own settings "
                    "(SANDLOT_REMOTE_URL, SANDLOT_REMOTE_API_KEY, SANDLOT_REMOTE_FALLBACK)"
                    if name == "remote"
                    else ""
                ),
                provider=name,
            )
        if spec.binds and not self.settings.allow_bind_roots:
            raise InvalidArgumentError(
                "this server does not bind host paths (binds): its operator allows none "
                "(sandlot serve --allow-bind-root PATH)"
            )
        if not cls.isolated and not self.settings.allow_unisolated:
            raise ProviderUnavailableError(
                f"provider {name!r} does not isolate; this server refuses it "
                "(start it with --allow-unisolated to permit it)",
                provider=name,
            )

    async def pin_template(self, principal: Principal, spec: SandboxSpec) -> SandboxSpec:
        """A template named by the tenant, as the digest its name means now. A remote
        provider's far server resolves the name for its own caller: it goes on as it is."""
        ref = getattr(spec, "template", None)
        if ref is None:
            return spec
        if (default_provider(spec).provider or DEFAULT) == "remote":
            check_ref(ref)
            return spec
        return await self.templates.pin_spec(principal.tenant, spec)

    async def create(
        self, principal: Principal, spec: SandboxSpec, session_id: str | None = None
    ) -> Served:
        self.check_provider(spec)
        spec = await self.pin_template(principal, spec)
        if session_id is None:
            session = await self.hub.write(
                self.records.create_session, principal.tenant, spec.metadata
            )
            session_id = session.id
        elif (
            await asyncio.to_thread(self.records.get_session, session_id, principal.tenant) is None
        ):
            raise InvalidArgumentError(f"no session {session_id!r}", session_id=session_id)
        self.check_network(spec.network)
        if spec.bridge is not None:
            await self.check_bridge(spec.bridge)
        live = await self.manager.create(
            spec, secrets=self.secrets(principal.tenant), volume_owner=principal.tenant
        )
        info = live.info
        record = SandboxRecord(
            id=info.id,
            tenant=principal.tenant,
            session_id=session_id,
            provider=info.provider,
            metadata=info.metadata,
            state="running",
            created_at=info.created_at,
            expires_at=info.expires_at,
            ended_at=None,
        )
        served = Served(record, live)
        self.served[info.id] = served
        try:
            await self.hub.write(self.records.add_sandbox, record)
            await self.hub.write(self.records.set_session_sandbox, session_id, info.id)
        except BaseException:
            self.served.pop(info.id, None)
            await self.manager.kill(info.id)
            raise
        if live.fell_back is not None:
            self._note(session_id, "sandbox", {"event": "fallback", **live.fell_back})
        self._note(session_id, "sandbox", {"event": "created", "sandbox": info.id})
        self.metrics.sandboxes_created.inc()
        return served

    async def get(self, principal: Principal, sandbox_id: str) -> Served:
        served = self.served.get(sandbox_id)
        if served is None or served.record.tenant != principal.tenant:
            await self.record(principal, sandbox_id)  # raises if there never was one
            raise SandboxClosedError(f"sandbox {sandbox_id} has ended", id=sandbox_id)
        if served.live.channel.closed is not None:
            raise SandboxClosedError(f"sandbox {sandbox_id} has stopped", id=sandbox_id)
        self.manager.touch(sandbox_id)  # a call of its tenant's: activity
        return served

    async def call(self, principal: Principal, sandbox_id: str, op: str, **args: Any) -> Any:
        """One agent operation with a single answer, on the caller's sandbox."""
        served = await self.get(principal, sandbox_id)
        return await served.live.channel.call(op, **args)

    async def record(self, principal: Principal, sandbox_id: str) -> SandboxRecord:
        """A sandbox's record, also once it has ended (for its transcript)."""
        record = await asyncio.to_thread(self.records.get_sandbox, sandbox_id, principal.tenant)
        if record is None:
            raise SandboxNotFoundError(f"no sandbox with id {sandbox_id!r}", id=sandbox_id)
        self.manager.touch(sandbox_id)
        return record

    async def kill(self, principal: Principal, sandbox_id: str) -> None:
        served = self.served.get(sandbox_id)
        if served is None or served.record.tenant != principal.tenant:
            raise SandboxNotFoundError(f"no sandbox with id {sandbox_id!r}", id=sandbox_id)
        await self.manager.kill(sandbox_id)
        # Returns once the transcript says so.
        await self._ending(sandbox_id, served.record.session_id, "killed")

    async def set_timeout(self, principal: Principal, sandbox_id: str, seconds: float) -> datetime:
        served = await self.get(principal, sandbox_id)
        expires = await self.manager.set_timeout(sandbox_id, seconds, served.live.channel)
        served.record.expires_at = expires
        served.live.info.expires_at = expires
        await self.hub.write(self.records.set_sandbox_expiry, sandbox_id, expires)
        return expires

    # -- egress and secrets -----------------------------------------------------------------

    def secrets(self, tenant: str) -> DatabaseSecrets:
        return DatabaseSecrets(
            self.db, tenant, home=self.settings.resolved_home(), writer=self.hub.write
        )

    def _secrets_of_sandbox(self, sandbox_id: str) -> DatabaseSecrets:
        """A sandbox adopted after a restart resolves its references with its tenant's."""
        served = self.served.get(sandbox_id)
        record = served.record if served else self.records.get_sandbox(sandbox_id)
        if record is None:
            raise SandboxNotFoundError(f"no sandbox with id {sandbox_id!r}", id=sandbox_id)
        return self.secrets(record.tenant)

    def check_network(self, network: Any) -> None:
        """A tenant may not point its sandbox at the server's own networks (loopback,
        private ranges, cloud metadata) unless the operator allows it."""
        if isinstance(network, NetworkPolicy) and not self.settings.egress_private:
            private = [r.text for r in network.rules if _reaches_private(r.network)]
            if private:
                raise ForbiddenError(
                    "rules naming private, loopback or link-local addresses need the server's "
                    f"--egress-private: {', '.join(private)}"
                )

    async def check_bridge(self, bridge: BridgeConfig) -> None:
        """The same for a bridge's target, by the addresses its name has now."""
        if self.settings.egress_private:
            return
        host = urlsplit(bridge.target).hostname or ""
        try:
            addresses = await system_resolver(host, 443)
        except OSError as exc:
            message = f"the bridge target {host} does not resolve: {exc}"
            raise InvalidArgumentError(message) from None
        private = [a for a in addresses if not is_public(a)]
        if private:
            raise ForbiddenError(
                f"the bridge target {host} is at {', '.join(private)}, one of the server's own "
                "networks: that needs the server's --egress-private"
            )

    async def set_network(self, principal: Principal, sandbox_id: str, network: Any) -> None:
        served = await self.get(principal, sandbox_id)
        self.check_network(network)
        await self.manager.set_network(sandbox_id, network, served.live.channel)
        self._note(
            served.record.session_id,
            "network",
            {"event": "policy", "network": network if isinstance(network, str) else
             network.model_dump(mode="json")},
        )  # fmt: skip

    def _egress_event(self, sandbox_id: str, kind: str, data: dict[str, Any]) -> None:
        served = self.served.get(sandbox_id)
        if served is not None:
            self._note(served.record.session_id, kind, data)

    def _released(self, sandbox_id: str) -> None:
        """The manager let a sandbox go (killed, expired, or it died)."""
        idle = sandbox_id in self._idle
        self._idle.discard(sandbox_id)
        served = self.served.pop(sandbox_id, None)
        if served is None:
            return
        self.runs.cancel(sandbox_id)
        why = "idle" if idle else "killed"
        self._ending(sandbox_id, served.record.session_id, why)

    def is_ending(self, sandbox_id: str) -> bool:
        """Whether the sandbox has been let go and its end is being recorded (its record
        still says running for that moment)."""
        return sandbox_id in self._endings

    def _ending(self, sandbox_id: str, session_id: str, why: str) -> asyncio.Future[None]:
        """The one task that records a sandbox's end (a kill and the manager's release
        both ask for it; the second caller waits for the first)."""
        task = self._endings.get(sandbox_id)
        if task is None:
            task = Supervisor.current().spawn(
                self._end_sandbox(sandbox_id, session_id, why), "end-sandbox"
            )
            self._endings[sandbox_id] = task
            task.add_done_callback(lambda _: self._endings.pop(sandbox_id, None))
        return task

    async def _end_sandbox(self, sandbox_id: str, session_id: str, why: str) -> None:
        def end() -> bool | None:
            """None: it had ended already; else whether its session is durable."""
            if not self.records.end_sandbox(sandbox_id):
                return None
            session = self.records.get_session(session_id)
            durable = session is not None and session.workspace is not None
            if not durable:
                # The session was this sandbox's own: it ends too, and its log ages from now.
                self.records.end_session(session_id)
            return durable

        durable = await self.hub.write(end)
        if durable is None:
            return
        self._note(session_id, "sandbox", {"event": "ended", "sandbox": sandbox_id, "why": why})
        self.metrics.sandboxes_ended.inc()
        if not durable:  # a durable session goes on: its followers keep following
            await self.hub.flushed(session_id)
            self.hub.forget(session_id)

    def _note(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        self.hub.put_nowait(session_id, None, kind, json.dumps(data).encode())

    # -- executions -------------------------------------------------------------------------

    async def execute(
        self,
        served: Served,
        op: str,
        args: dict[str, Any],
        summary: dict[str, Any],
        *,
        holder: str = "local",
        force: bool = False,
    ) -> Run:
        """Start an execution; returns once the agent accepted it (or raises its refusal).

        On a durable session's sandbox a foreground run takes the session's run lock first
        (SessionBusyError naming its holder, unless ``force`` takes it over); a background
        command with stdin and no timeout is a service, not a run, and takes none.
        ``holder``: who the busy error names (the caller's key)."""
        record = served.record
        secrets = await self.manager.secret_values(record.id)
        if args.get("env"):
            from ..secrets.resolve import resolve_env

            env = {k: as_ref(v) or v for k, v in args["env"].items()}
            args["env"], used = await resolve_env(env, self.secrets(record.tenant))
            secrets = [*secrets, *used]
        run = await self.runs.start(
            served.live.channel,
            op,
            args,
            session_id=record.session_id,
            sandbox_id=record.id,
            summary=summary,
            secrets=secrets,
            locks=served.durable and takes_run_lock(op, args),
            holder=holder,
            force=force,
        )
        self.metrics.executions_started.labels(run.kind).inc()
        return run

    # -- durable sessions -------------------------------------------------------------------

    async def attach(
        self,
        principal: Principal,
        session_id: str,
        spec: SandboxSpec,
        *,
        reuse: bool,
        lease_ttl: float,
    ) -> tuple[Served, Attachment]:
        """A sandbox for a durable session (Sessions.attach), served like any other: every
        sandbox endpoint works on it, and its runs take the session's run lock."""
        self.check_provider(spec)
        spec = await self.pin_template(principal, spec)
        provider = default_provider(spec).provider or DEFAULT
        try:
            self.sessions.workspaces.check_provider(provider)
        except SessionError as exc:
            raise ProviderUnavailableError(exc.message, provider=provider) from None
        self.check_network(spec.network)
        if spec.bridge is not None:
            await self.check_bridge(spec.bridge)
        attached = await self.sessions.attach(
            session_id,
            spec,
            tenant=principal.tenant,
            holder=principal.holder,
            reuse=reuse,
            lease_ttl=lease_ttl,
            keep_alive=False,  # the client heartbeats its lease
            secrets=self.secrets(principal.tenant),
        )
        sandbox_id = attached.live.info.id
        served = self.served.get(sandbox_id)
        if served is not None and served.live.channel.closed is None:
            if attached.live.channel is not served.live.channel:
                attached.live.channel.close()  # the one it serves with will do
            served.durable = True
            return served, attached
        live = attached.live
        if attached.reused:  # not served here yet: look after it as if created here
            live.channel.close()
            live = await self.manager.adopt(sandbox_id)
        record = await asyncio.to_thread(self.records.get_sandbox, sandbox_id)
        if record is None:  # pragma: no cover - Sessions.attach records it
            raise SandboxNotFoundError(f"no sandbox with id {sandbox_id!r}", id=sandbox_id)
        served = Served(record, live, durable=True)
        self.served[sandbox_id] = served
        if not attached.reused:
            self.metrics.sandboxes_created.inc()
        return served, attached

    async def lease_of(self, principal: Principal, session_id: str, lease_id: str) -> Any:
        """The session's lease with this id (404 for another session's or tenant's)."""
        from sqlalchemy import select

        from ..store.database import leases

        await self.sessions.get(session_id, principal.tenant)

        def read() -> Any:
            query = select(leases.c.id).where(
                leases.c.id == lease_id, leases.c.session_id == session_id
            )
            with self.db.read() as conn:
                return conn.execute(query).one_or_none()

        if await asyncio.to_thread(read) is None:
            raise NotFoundError(f"no lease {lease_id!r} on session {session_id}", id=lease_id)
        return lease_id

    async def heartbeat(self, principal: Principal, session_id: str, lease_id: str) -> None:
        await self.lease_of(principal, session_id, lease_id)
        if not await self.sessions.heartbeat(lease_id):
            raise SandboxClosedError(
                f"lease {lease_id} has expired or was released: its sandbox may be gone; "
                "attach again",
                id=lease_id,
                session_id=session_id,
            )

    async def detach(
        self, principal: Principal, session_id: str, lease_id: str, *, stop: bool
    ) -> Any:
        await self.lease_of(principal, session_id, lease_id)
        return await self.sessions.detach(session_id, lease_id, stop=stop)

    async def run_of(self, principal: Principal, sandbox_id: str, execution_id: str) -> Run:
        await self.record(principal, sandbox_id)
        run = self.runs.get(execution_id)
        if run is None or run.sandbox_id != sandbox_id:
            raise _execution_not_found(execution_id)
        return run

    async def execution(
        self, principal: Principal, sandbox_id: str, execution_id: str
    ) -> ExecutionRecord:
        await self.record(principal, sandbox_id)
        found = await asyncio.to_thread(self.records.get_execution, execution_id)
        if found is None or found.sandbox_id != sandbox_id:
            raise _execution_not_found(execution_id)
        return found


def _execution_not_found(execution_id: str) -> NotFoundError:
    return NotFoundError(f"no running execution {execution_id!r}", id=execution_id)
