"""Durable sessions: a workspace, a transcript and code-context state that outlive sandboxes.

A *session* lives in the store (the server's database, or ``server.db`` in the state folder
for embedded use); a *sandbox* is attached to it for a while through a *lease* that its
holder keeps alive with heartbeats. Attaching starts a sandbox (a warm one from a pool when
one matches) and restores the session's latest checkpoint into its ``/workspace``; detaching
checkpoints and destroys it. One reaper loop, in every process that serves sessions,
releases leases whose holder stopped heartbeating, stops sandboxes that sat idle, takes the
periodic checkpoints and deletes sessions whose ``delete_after`` has come; all it acts on is
in the store, so a restarted process carries on where the last one stopped.

Session sandboxes are created by a *detached* manager: they outlive the process that holds
them until its lease expires, so another process can reuse them, and the reaper (not the
death of the holder) decides when their workspace is saved.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from ..errors import (
    InvalidArgumentError,
    SandboxNotFoundError,
    SandlotError,
    SessionBusyError,
    SessionError,
)
from ..models import SandboxSpec, VolumeMount, check_seconds, check_volumes, describe
from ..secrets.store import SecretStore
from ..supervisor import Loop, Supervisor
from .manager import LiveSandbox, Manager, default_provider
from .pool import pool_key
from .workspaces import Workspaces

if TYPE_CHECKING:
    from ..transcript.hub import Hub

log = logging.getLogger("sandlot")
T = TypeVar("T")
LEASE_TTL = 30.0  # seconds a lease lives without a heartbeat
CHECKPOINT_EVERY = 300.0  # default seconds between checkpoints while attached (None: never)
REAP_INTERVAL = 5.0  # seconds between reaper passes (SANDLOT_REAP_INTERVAL)
LOST_AFTER = 2.0  # seconds a session's sandbox must stay dead before the reaper says so
SESSION_KEY = "sandlot.session"  # in a session sandbox's metadata


def holder_name() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


MAX_DELETE_AFTER = 100 * 365 * 86400.0  # seconds from now: later is a mistake, not a plan


def check_when(value: object) -> float | None:
    """``delete_after``: an aware datetime, or seconds from now (at most a century)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidArgumentError("delete_after must be time-zone aware (e.g. UTC)")
        when = value.timestamp()
    else:
        seconds = check_seconds(value, "delete_after")
        assert seconds is not None
        when = time.time() + seconds
    if not when - time.time() <= MAX_DELETE_AFTER:
        raise InvalidArgumentError("delete_after is at most a century from now")
    return when


@dataclass
class Attachment:
    """A sandbox attached to a session, and the lease that holds it."""

    session_id: str
    live: LiveSandbox
    lease_id: str
    reused: bool
    restored: Any  # the restore's info (None: nothing to restore, or a reused sandbox)


class Sessions:
    """Durable sessions in a store, served by this process's (detached) manager."""

    _local: weakref.WeakKeyDictionary[Manager, Sessions] = weakref.WeakKeyDictionary()

    def __init__(
        self, manager: Manager, db: Any, hub: Hub, *, owns_store: bool, tenant: str | None = None
    ) -> None:
        from ..store.records import Records
        from ..store.sessions import SessionStore

        self.manager = manager  # what session sandboxes are created and reaped with
        self.db = db
        self.hub = hub
        self.records = Records(db)
        self.store = SessionStore(db)
        self.workspaces: Workspaces = manager.workspaces
        self._owns_store = owns_store
        self.tenant = tenant  # whose sessions the reaper looks after (None: every tenant's)
        self._heartbeats: dict[str, Loop] = {}
        # Sandboxes being stopped here, and what their release's checkpoint will report.
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._suspects: dict[str, float] = {}  # sandboxes found dead, and since when
        self._reaper: Loop | None = None
        self._closed = False
        manager.on_release.append(self._released)
        manager.on_checkpoint.append(self._checkpointed)
        manager.on_idle.append(self._idle)

    # -- set-up -----------------------------------------------------------------------------

    @classmethod
    async def local(cls, manager: Manager | None = None) -> Sessions:
        """Embedded mode: the sessions in ``server.db`` of the state folder, served by a
        detached manager of the running loop (one per loop and state folder)."""
        owner = manager or Manager.current()
        found = cls._local.get(owner)
        if found is not None and not found._closed:
            return found
        try:
            from ..store.database import Database, sqlite_url
            from ..store.keys import LOCAL_TENANT, Keys
            from ..store.records import Records
            from ..transcript.eventlog import EventLog
            from ..transcript.hub import Hub
            from ..transcript.logwriter import LogWriter
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise SessionError(
                f"durable sessions need the 'sessions' extra (pip install 'sandlot[sessions]'):"
                f" {exc}"
            ) from None
        db = Database(os.environ.get("SANDLOT_DATABASE_URL") or sqlite_url(owner.home))
        await asyncio.to_thread(db.migrate)
        await asyncio.to_thread(Keys(db).ensure_tenant, LOCAL_TENANT)
        events = EventLog(db)
        hub = Hub(events, LogWriter(db, events, Records(db)))
        hub.start()
        keeper = Manager(owner.home, detached=True)
        sessions = cls(keeper, db, hub, owns_store=True, tenant=LOCAL_TENANT)
        sessions.start_reaper()
        cls._local[owner] = sessions
        owner.on_close.append(sessions.close)
        return sessions

    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = Supervisor.current().keep("session-reaper", self._reap_loop)

    async def close(self) -> None:
        """Stop heartbeats and the reaper. Attached sandboxes keep running until their
        leases expire (another process, or the next start, reaps them)."""
        if self._closed:
            return
        self._closed = True
        loops = [*self._heartbeats.values(), *([self._reaper] if self._reaper else [])]
        supervisor = Supervisor.current()
        await asyncio.gather(*(supervisor.stop(loop) for loop in loops))
        self._heartbeats.clear()
        if self._owns_store:
            try:
                await self.manager.close()
            except Exception as exc:
                log.warning("closing the session manager: %s", exc)
            try:
                await self.hub.close()
            except RuntimeError:  # interpreter exit: no thread takes work any more
                await self.hub.abandon()
            self.db.close()

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if kwargs:
            return await self.hub.write(lambda: fn(*args, **kwargs))
        return await self.hub.write(fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def note(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        self.hub.put_nowait(session_id, None, kind, json.dumps(data).encode())

    # -- sessions -----------------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        metadata: dict[str, str] | None = None,
        *,
        workspace: str = "local",
        idle_timeout: float | None = None,
        checkpoint_every: float | None = CHECKPOINT_EVERY,
        delete_after: datetime | float | None = None,
        volumes: builtins.list[Any] | None = None,
    ) -> Any:
        """A new durable session. ``volumes``: named volumes (VolumeMount or its dict) that
        every sandbox attached to it mounts."""
        from ..workspace import check_store_url

        settings = {
            "workspace": check_store_url(workspace),
            "idle_timeout": check_seconds(idle_timeout, "idle_timeout"),
            "checkpoint_every": check_seconds(checkpoint_every, "checkpoint_every"),
            "delete_after": check_when(delete_after),
        }
        if volumes:
            mounts = _volume_mounts(volumes)
            settings["volumes"] = json.dumps([m.model_dump() for m in mounts])
        record = await self._write(self.records.create_session, tenant, metadata, **settings)
        self.note(record.id, "session", {"event": "created", "workspace": record.workspace})
        return record

    async def get(self, session_id: str, tenant: str | None = None) -> Any:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidArgumentError("a session id is a non-empty string")
        record = await self._read(self.store.get, session_id, tenant)
        if record.workspace is None:  # a sandbox's own session: not durable
            from ..errors import SessionNotFoundError

            raise SessionNotFoundError(
                f"{session_id} is a sandbox's own session, not a durable one", id=session_id
            )
        return record

    async def list(self, tenant: str, metadata: dict[str, str] | None = None) -> builtins.list[Any]:
        found = await self._read(self.store.list, tenant, metadata)
        return [s for s in found if s.workspace is not None]

    async def delete(self, session_id: str, tenant: str | None = None) -> int:
        """Stop its sandbox, delete its workspace's checkpoints (and blobs no other session
        uses), its transcript and its records. Returns the number of blobs deleted."""
        record = await self.get(session_id, tenant)
        if record.sandbox_id is not None:
            await self._stop(record.sandbox_id, save=False)
        blobs = await self.workspaces.store(record.workspace).delete(session_id)
        await self.hub.flushed(session_id)
        self.hub.forget(session_id)
        await self._write(self.store.delete, session_id)
        return int(blobs)

    async def events(
        self, session_id: str, after: int = 0, limit: int = 1000, tenant: str | None = None
    ) -> builtins.list[Any]:
        await self.get(session_id, tenant)
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise InvalidArgumentError("after must be a non-negative integer")
        await self.hub.flushed(session_id)
        return await self._read(lambda: self.hub.log.read(session_id, after, limit=limit))

    async def checkpoint(self, session_id: str, tenant: str | None = None) -> Any:
        """Save the attached sandbox's workspace now (while it runs)."""
        record = await self.get(session_id, tenant)
        if record.sandbox_id is None:
            raise SessionError(
                f"session {session_id} has no sandbox attached: its workspace is as it was "
                "last checkpointed",
                id=session_id,
            )
        info = await self.workspaces.checkpoint(
            {"id": session_id, "workspace": record.workspace},
            self.manager.folder(record.sandbox_id),
        )
        self._checkpointed(record.sandbox_id, session_id, info, why="explicit")
        return info

    # -- attach / detach ----------------------------------------------------------------------

    async def attach(
        self,
        session_id: str,
        spec: SandboxSpec,
        *,
        tenant: str | None = None,
        holder: str | None = None,
        reuse: bool = False,
        lease_ttl: float = LEASE_TTL,
        keep_alive: bool = True,
        secrets: SecretStore | None = None,
    ) -> Attachment:
        """A sandbox for the session: the live one when ``reuse`` and its spec matches
        exactly, else a fresh one with the workspace restored. ``keep_alive``: heartbeat
        the lease from this process until :meth:`detach`. ``secrets``: what the spec's
        secret references resolve with (a server: the tenant's)."""
        ttl = check_seconds(lease_ttl, "lease_ttl") or LEASE_TTL
        record = await self.get(session_id, tenant)
        spec = default_provider(_with_session_volumes(spec, record.volumes))
        provider = spec.provider or "bwrap"
        self.workspaces.check_provider(provider)
        key = pool_key(spec)  # what a reusing request must match: the sandbox, not its labels
        holder = holder or holder_name()
        current = record.sandbox_id
        if current is not None:
            attached = await self._existing(record, current, key, reuse, holder, ttl)
            if attached is not None:
                if keep_alive:
                    self._keep(attached.lease_id, ttl)
                return attached
        live, lease, restored = await self._fresh(record, spec, key, holder, ttl, secrets)
        self.note(
            session_id,
            "sandbox",
            {"event": "attached", "sandbox": live.info.id, "provider": live.info.provider,
             "holder": holder, "lease": lease.id,
             "restored": None if restored is None else restored.model_dump(mode="json")},
        )  # fmt: skip
        if keep_alive:
            self._keep(lease.id, ttl)
        if restored is not None:  # nobody may write before the restore's clock tick is over
            await asyncio.sleep(max(0.0, (restored.settled_ns - time.time_ns()) / 1e9))
        return Attachment(session_id, live, lease.id, False, restored)

    async def _fresh(
        self,
        record: Any,
        spec: SandboxSpec,
        key: str,
        holder: str,
        ttl: float,
        secrets: SecretStore | None,
    ) -> tuple[LiveSandbox, Any, Any]:
        """A new sandbox for the session with its workspace restored and its attachment
        recorded (the live sandbox, the lease, the restore's report); killed if either
        fails, so no half-restored workspace is ever saved."""
        session_id = record.id
        spec = spec.model_copy(update={"metadata": {**spec.metadata, SESSION_KEY: session_id}})
        live = await self.manager.create(spec, secrets=secrets, volume_owner=record.tenant)
        sandbox_id = live.info.id
        lease: Any = None
        restored: Any = None
        try:
            session = {"id": session_id, "workspace": record.workspace}
            live.info.handle["session"] = session
            self.manager.store.set_handle(sandbox_id, live.info.handle)
            # The files (a worker thread) and the records (the store's writer) at once.
            restored, lease = await asyncio.gather(
                self.workspaces.restore(session, self.manager.folder(sandbox_id)),
                self._record_attach(session_id, live, holder, key, ttl, record.tenant),
                return_exceptions=True,
            )
            for outcome in (restored, lease):
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            live.info.handle.pop("session", None)  # a half-restored workspace is not saved
            self.manager.store.set_handle(sandbox_id, live.info.handle)
            if lease is not None and not isinstance(lease, BaseException):
                await self._write(self.store.release_lease, lease.id)
            await self.manager.kill(sandbox_id)
            raise
        return live, lease, restored

    async def _existing(
        self, record: Any, current: str, key: str, reuse: bool, holder: str, ttl: float
    ) -> Attachment | None:
        """Reuse the session's live sandbox, or clear the way for a fresh one."""
        if not self._alive(current):
            await self._lost(record.id, current)
            return None
        last = await self._read(self.store.last_lease, record.id, current)
        if reuse and last is not None and last.spec_key == key:
            live = await self.manager.connect(current)
            lease = await self._write(self.store.add_lease, record.id, current, holder, key, ttl)
            self.note(
                record.id, "sandbox",
                {"event": "reused", "sandbox": current, "holder": holder, "lease": lease.id},
            )  # fmt: skip
            return Attachment(record.id, live, lease.id, True, None)
        held = await self._read(self.store.live_leases, record.id)
        if held:
            raise SessionBusyError(
                f"session {record.id} has sandbox {current} attached by {held[0].holder} "
                "(pass reuse=True with the same spec to share it)",
                id=record.id,
                holder=held[0].holder,
                since=held[0].created_at,
            )
        await self._stop(current, save=True)  # left over, nobody holds it: save and replace
        return None

    async def _lost(self, session_id: str, sandbox_id: str) -> None:
        """The session's sandbox died with nobody here to see it (killed from outside, its
        host rebooted): the session has none now; its last checkpoint is what it kept."""
        if await self._write(self.store.set_sandbox, session_id, None, only_if=sandbox_id):
            await self._write(self.records.end_sandbox, sandbox_id)
            self.note(session_id, "sandbox", {"event": "lost", "sandbox": sandbox_id})

    async def _record_attach(
        self, session_id: str, live: LiveSandbox, holder: str, key: str, ttl: float, tenant: str
    ) -> Any:
        from ..store.records import SandboxRecord

        info = live.info
        record = SandboxRecord(
            id=info.id,
            tenant=tenant,
            session_id=session_id,
            provider=info.provider,
            metadata=info.metadata,
            created_at=info.created_at,
            expires_at=info.expires_at,
        )

        def write() -> Any:
            self.records.add_sandbox(record)
            self.store.set_sandbox(session_id, info.id, only_if=None)
            return self.store.add_lease(session_id, info.id, holder, key, ttl)

        return await self._write(write)

    def _keep(self, lease_id: str, ttl: float) -> None:
        self._heartbeats[lease_id] = Supervisor.current().keep(
            "lease-heartbeat", lambda: self._heartbeat_loop(lease_id, ttl), ends=True
        )

    async def _heartbeat_loop(self, lease_id: str, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                if not await self._write(self.store.heartbeat, lease_id):
                    return  # expired or released: the sandbox is someone else's business now
            except Exception as exc:  # a store hiccup: the next beat may get through
                log.warning("lease %s: heartbeat failed: %s", lease_id, exc)

    async def heartbeat(self, lease_id: str) -> bool:
        return await self._write(self.store.heartbeat, lease_id)

    async def detach(self, session_id: str, lease_id: str, *, stop: bool = True) -> Any:
        """Let go of a lease. The last holder's detach checkpoints and destroys the sandbox
        (``stop=False`` leaves it running for a later ``reuse``, until it idles out)."""
        beating = self._heartbeats.pop(lease_id, None)
        if beating is not None:
            Supervisor.current().cancel(beating)
        await self._write(self.store.release_lease, lease_id)
        record = await self._read(self.store.get, session_id, None)
        sandbox_id = record.sandbox_id
        if sandbox_id is None or not stop:
            return None
        if await self._read(self.store.live_leases, session_id):
            return None  # another holder still uses it
        return await self._stop(sandbox_id, save=True)

    async def _stop(self, sandbox_id: str, *, save: bool) -> Any:
        """Destroy a session's sandbox; its release saves the workspace (unless not
        ``save``: the session is being deleted)."""
        found = self.manager.store.get(sandbox_id)
        if found is None:
            return None
        info = found[0]
        if not save and info.handle.pop("session", None) is not None:
            self.manager.store.set_handle(sandbox_id, info.handle)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[sandbox_id] = waiter
        try:
            await self.manager.kill(sandbox_id)
        except SandboxNotFoundError:
            pass  # another process (its reaper, a kill) got there first
        finally:
            self._waiting.pop(sandbox_id, None)
        result = waiter.result() if waiter.done() else None
        await self._end_record(sandbox_id)  # the session has no sandbox from now on
        if isinstance(result, BaseException):
            raise SessionError(
                f"sandbox {sandbox_id} was stopped but its workspace could not be saved: "
                f"{result} (it was kept in the state folder: {self.workspaces.home})"
            ) from result
        if result is not None:
            await self._write(self.store.set_checkpoint, self._session_of(info), result.number)
        return result

    @staticmethod
    def _session_of(info: Any) -> str:
        return str(info.metadata.get(SESSION_KEY) or info.handle.get("session", {}).get("id"))

    def _alive(self, sandbox_id: str) -> bool:
        found = self.manager.store.get(sandbox_id)
        if found is None:
            return False
        info = found[0]
        try:
            return self.manager.provider(info.provider).is_alive(info.handle)
        except SandlotError:
            return False

    # -- what the manager reports -------------------------------------------------------------

    def _checkpointed(self, sandbox_id: str, session_id: str, result: Any, why: str = "") -> None:
        waiter = self._waiting.get(sandbox_id)
        waited = waiter is not None and not waiter.done()
        if waiter is not None and not waiter.done():
            waiter.set_result(result)  # _stop records it
        if isinstance(result, BaseException):
            self.note(
                session_id, "checkpoint",
                {"event": "failed", "sandbox": sandbox_id, "error": str(result)},
            )  # fmt: skip
            return
        self.note(
            session_id, "checkpoint",
            {"event": "saved", "sandbox": sandbox_id, "why": why or "released",
             **result.model_dump(mode="json")},
        )  # fmt: skip
        if not waited and why != "periodic":
            Supervisor.current().spawn(
                self._write(self.store.set_checkpoint, session_id, result.number),
                "record-checkpoint",
            )

    def _idle(self, sandbox_id: str) -> None:
        """A session's sandbox nobody used for its idle timeout is about to stop (its
        release checkpoints the workspace)."""
        found = self.manager.store.get(sandbox_id)
        session = found[0].handle.get("session") if found is not None else None
        if isinstance(session, dict) and session.get("id"):
            self.note(
                str(session["id"]), "sandbox",
                {"event": "stopping", "sandbox": sandbox_id, "why": "idle"},
            )  # fmt: skip

    def _released(self, sandbox_id: str) -> None:
        """A sandbox ended (whoever ended it): a session pointing at it no longer has it."""
        if sandbox_id in self._waiting:
            return  # stopped by :meth:`_stop`, which records it
        Supervisor.current().spawn(self._end_record(sandbox_id), "end-record")

    async def _end_record(self, sandbox_id: str) -> None:
        def write() -> str | None:
            record = self.records.get_sandbox(sandbox_id)
            if record is None or not self.records.end_sandbox(sandbox_id):
                return None  # not a session's, or ended already
            return record.session_id  # end_sandbox also cleared the session's pointer

        session_id = await self._write(write)
        if session_id is not None:
            self.note(session_id, "sandbox", {"event": "ended", "sandbox": sandbox_id})

    # -- the reaper ---------------------------------------------------------------------------

    async def _reap_loop(self) -> None:
        raw = os.environ.get("SANDLOT_REAP_INTERVAL")
        try:
            interval = max(float(raw), 0.05) if raw else REAP_INTERVAL
        except ValueError:
            interval = REAP_INTERVAL
        while True:
            try:
                await self.reap()
            except RuntimeError as exc:
                if "shutdown" in str(exc):
                    return  # the interpreter is exiting: no worker thread takes work now
                log.warning("session reaper: %s", exc)
            except Exception as exc:  # retried at the next tick
                log.warning("session reaper: %s", exc)
            await asyncio.sleep(interval)

    async def reap(self) -> builtins.list[tuple[str, str]]:
        """One pass: returns ``(session id, what was done)`` for everything it did."""
        done: list[tuple[str, str]] = []
        for lease in await self._write(self.store.expire_leases):
            self.note(
                lease.session_id, "lease",
                {"event": "expired", "lease": lease.id, "holder": lease.holder,
                 "sandbox": lease.sandbox_id},
            )  # fmt: skip
            if await self._read(self.store.live_leases, lease.session_id):
                continue
            record = await self._read(self.store.get, lease.session_id, None)
            if record.sandbox_id == lease.sandbox_id and await self._stop_unless_running(
                record, "lease expired"
            ):
                done.append((record.id, "lease expired"))
        now = time.time()
        for record in await self._read(self.store.due, self.tenant):
            if record.workspace is None:
                continue
            try:
                done.extend(await self._reap_one(record, now))
            except RuntimeError:
                raise
            except Exception as exc:
                log.warning("session reaper: session %s: %s", record.id, exc)
        return done

    async def _reap_one(self, record: Any, now: float) -> builtins.list[tuple[str, str]]:
        if record.delete_after is not None and record.delete_after.timestamp() <= now:
            await self.delete(record.id)
            return [(record.id, "deleted")]
        sandbox_id = record.sandbox_id
        if sandbox_id is None:
            return []
        if sandbox_id in self._waiting:
            return []  # being stopped here right now
        if not self._alive(sandbox_id):
            # Dead at two passes LOST_AFTER apart: not a detach under way in another process
            # (which records the end itself), but a sandbox nobody saw go.
            first_seen = self._suspects.setdefault(sandbox_id, now)
            if now - first_seen < LOST_AFTER:
                return []
            self._suspects.pop(sandbox_id, None)
            await self._lost(record.id, sandbox_id)
            return [(record.id, "lost")]
        self._suspects.pop(sandbox_id, None)
        last_active = (record.last_active_at or record.updated_at).timestamp()
        if record.idle_timeout is not None and now - last_active >= record.idle_timeout:
            if await self._stop_unless_running(record, "idle"):
                return [(record.id, "idle")]
            return []
        since = (record.checkpointed_at or record.updated_at).timestamp()
        if record.checkpoint_every is not None and now - since >= record.checkpoint_every:
            info = await self.workspaces.checkpoint(
                {"id": record.id, "workspace": record.workspace}, self.manager.folder(sandbox_id)
            )
            self._checkpointed(sandbox_id, record.id, info, why="periodic")
            await self._write(self.store.set_checkpoint, record.id, info.number)
            return [(record.id, "checkpoint")]
        return []

    async def _stop_unless_running(self, record: Any, why: str) -> bool:
        """Stop (checkpoint, destroy) a session's sandbox, unless a run holds its lock."""
        lock = await self._read(self.store.lock_state, record.id)
        if lock.holder is not None:
            return False
        sandbox_id = record.sandbox_id
        self.note(record.id, "sandbox", {"event": "stopping", "sandbox": sandbox_id, "why": why})
        await self._stop(sandbox_id, save=True)
        return True

    # -- the run lock -------------------------------------------------------------------------

    async def lock(
        self, session_id: str, execution: str, sandbox_id: str, *, holder: str, force: bool
    ) -> None:
        """Take the session's run lock for ``execution``; with ``force``, cancel the run
        that holds it (its process is killed, its caller gets RunCancelledError)."""
        try:
            await self._write(self.store.lock, session_id, holder, execution, sandbox_id)
            return
        except SessionBusyError:
            if not force:
                raise
        state = await self._read(self.store.lock_state, session_id)
        self.note(
            session_id, "cancelled",
            {"execution": state.execution, "holder": state.holder, "by": holder},
        )  # fmt: skip
        await self._write(self.store.unlock, session_id, state.execution)
        if state.sandbox and state.pid:
            await self._kill_run(state.sandbox, state.pid)
        await self._write(self.store.lock, session_id, holder, execution, sandbox_id)

    async def _kill_run(self, sandbox_id: str, pid: int) -> None:
        try:
            live = await self.manager.connect(sandbox_id)
        except SandlotError:
            return  # its sandbox is gone: so is the run
        try:
            await live.channel.call("signal", pid=pid, signal=9)
        except SandlotError:
            pass  # it ended meanwhile
        finally:
            live.channel.close()

    async def lock_holder(self, session_id: str) -> str | None:
        """The execution that holds the session's run lock (None: free)."""
        state = await self._read(self.store.lock_state, session_id)
        return state.execution

    async def set_lock_pid(self, session_id: str, execution: str, pid: int) -> None:
        await self._write(self.store.set_lock_pid, session_id, execution, pid)

    async def unlock(self, session_id: str, execution: str) -> bool:
        """False: a forced takeover cancelled this run."""
        return await self._write(self.store.unlock, session_id, execution)


def _volume_mounts(volumes: builtins.list[Any]) -> builtins.list[VolumeMount]:
    """Volume mounts from VolumeMount objects or their dicts, checked as a spec checks them."""
    try:
        mounts = [VolumeMount.model_validate(v) for v in volumes]
        check_volumes(mounts, [], None)
    except (ValidationError, ValueError) as exc:
        message = describe(exc, "volumes") if isinstance(exc, ValidationError) else str(exc)
        raise InvalidArgumentError(message) from None
    return mounts


def _with_session_volumes(spec: SandboxSpec, volumes: builtins.list[Any]) -> SandboxSpec:
    """The spec with the session's volumes first (a spec's own at the same path is an
    overlap, refused)."""
    if not volumes:
        return spec
    merged = [*_volume_mounts(volumes), *spec.volumes]
    try:
        check_volumes(merged, spec.binds, spec.workspace_alias)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None
    return spec.model_copy(update={"volumes": merged})
