"""Pumped runs: a run whose agent request is read by a task of its own, into the event log.

A server runs executions this way (:class:`Runs` starts them and keeps them by id): the pump
belongs to the process, not to an HTTP connection, so a client that drops keeps nothing from
running, and reads what it missed from the log when it comes back. Output is taken from the
agent only as fast as the log commits it, so the agent's credit window carries the
back-pressure all the way to the command. What is logged is the recorder's business
(:mod:`sandlot.transcript.recorder`).

A run of a durable session takes the session's run lock first (SessionBusyError naming its
holder). A forced takeover cancels the holder's run: its process is killed (by the lock's
keeper, :meth:`sandlot.manager.sessions.Sessions.lock`), and a run pumped here ends with a
``run_cancelled`` error; a code cell is interrupted instead, its context kept.

After a restart, :meth:`Runs.reattach` carries on the record of a command the last process
was pumping: the same execution, pumped the same way, from the agent's ``proc.attach`` of its
process at the offset its log had stored. Cancelling such a run kills its process group, as
cancelling the original request would have (cancelling an attach only detaches).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..agent import protocol as p
from ..channel.base import ChannelLike, RequestLike
from ..errors import CodeContextBusyError, ProtocolError, SandlotError
from ..store.records import ExecutionRecord
from ..supervisor import Supervisor
from .hub import Hub
from .recorder import (
    KINDS,
    REATTACHABLE,
    STREAMS,
    RunRecorder,
    new_execution_id,
    parse,
    takes_run_lock,
)

__all__ = ["KINDS", "STREAMS", "Run", "RunLock", "Runs", "new_execution_id", "takes_run_lock"]
TAKEOVER_SECONDS = 5.0  # a killed run's end that takes longer is forced (a cancel)
KEEP_SECONDS = 60.0  # an ended run stays findable this long (stdin, signals that race its end)


class Run(RunRecorder):
    """A run with its request, pumped by :meth:`pump` until it ends."""

    def __init__(self, request: RequestLike, *args: Any, base_seq: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.request = request
        self.base_seq = base_seq  # every event of this execution comes after this seq
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.ended_at: float | None = None
        self.stdin_lock = asyncio.Lock()
        self.kill: Callable[[], Awaitable[Any]] | None = None  # a re-attached run's cancel
        self.detaching = False  # its pump stops, its command runs on (Runs.detach)

    async def accepted(self) -> None:
        """Wait for the agent to accept the request (raising its refusal), then log its
        start with the execution's record."""
        try:
            kind, _, payload = await self.request.receive()
        except BaseException:
            self.request.cancel()
            raise
        if kind != p.EVENT:
            self.request.cancel()
            raise ProtocolError(f"the agent answered {self.op} with frame kind {kind}")
        self.started(parse(payload).get("pid"))

    async def attached(self) -> dict[str, Any]:
        """Wait for the agent's ``attached`` event of a ``proc.attach`` request (raising
        its refusal: ``process_not_found`` when the agent no longer knows the process)."""
        try:
            kind, _, payload = await self.request.receive()
            event = parse(payload) if kind == p.EVENT else {}
            if event.get("event") != "attached":
                raise ProtocolError(f"the agent answered proc.attach with {payload[:200]!r}")
        except BaseException:
            self.request.cancel()
            raise
        return event

    async def pump(self) -> None:
        """Log every frame until the request ends; then the outcome is final."""
        request = self.request
        try:
            while True:
                frame = await request.receive()
                ended = not await self.record(frame)  # taken over as it ended
                if frame[0] == p.DATA:
                    request.consumed(len(frame[2]))
                elif frame[0] == p.END or ended:
                    return
        except asyncio.CancelledError:
            if self.detaching:  # no CANCEL: that would kill the command
                raise
            request.cancel()
            if self.kill is not None:  # an attach's cancel only detaches
                Supervisor.current().spawn(self.kill(), "kill-run")
            self.cancelled()
            raise
        except SandlotError as exc:
            await self.failed(exc)
        except Exception as exc:  # a bug must still end the stream for its followers
            self.crashed(exc)
            raise
        finally:
            self.ended_at = time.time()
            self.done.set()

    async def send_stdin(self, chunks: Any, eof: bool) -> int:
        """Forward a request body to the command's stdin; returns the bytes sent."""
        sent = 0
        async with self.stdin_lock:  # two uploads must not interleave
            async for chunk in chunks:
                if chunk:
                    await self.request.send_data(chunk)
                    sent += len(chunk)
            if eof:
                self.request.send_eof()
        return sent


class RunLock(Protocol):
    """Sessions' run locks, as the store keeps them (:class:`sandlot.manager.sessions.Sessions`)."""

    async def lock(
        self, session_id: str, execution: str, sandbox_id: str, *, holder: str, force: bool
    ) -> None: ...

    async def unlock(self, session_id: str, execution: str) -> bool: ...

    async def set_lock_pid(self, session_id: str, execution: str, pid: int) -> None: ...

    async def lock_holder(self, session_id: str) -> str | None: ...


class Runs:
    """The runs this process pumps, by execution id."""

    def __init__(
        self,
        hub: Hub,
        locks: RunLock,
        *,
        max_log_bytes: int | None = None,
        on_end: Callable[[Run], None] | None = None,
    ) -> None:
        self.hub = hub
        self.locks = locks
        self.max_log_bytes = max_log_bytes
        self.on_end = on_end  # told as each run's pump ends
        self._runs: dict[str, Run] = {}

    def get(self, execution_id: str) -> Run | None:
        return self._runs.get(execution_id)

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._runs

    def values(self) -> list[Run]:
        return list(self._runs.values())

    def cancel(self, sandbox_id: str | None = None) -> None:
        """Cancel the runs of a sandbox (that ended), or all of them."""
        for run in self.values():
            if run.task is not None and sandbox_id in (None, run.sandbox_id):
                run.task.cancel()

    async def detach(self) -> None:
        """The process stops: stop pumping, but leave its commands running and their
        records open, with their run locks, for the next start to re-attach to (see
        :meth:`reattach`). Code cells cannot be re-attached to: they are cancelled."""
        tasks = []
        for run in self.values():
            if run.task is not None and not run.done.is_set():
                run.detaching = run.tracks
                run.task.cancel()
                tasks.append(run.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def start(
        self,
        channel: ChannelLike,
        op: str,
        args: dict[str, Any],
        *,
        session_id: str,
        sandbox_id: str,
        summary: dict[str, Any],
        secrets: list[str],
        locks: bool,
        holder: str = "local",
        force: bool = False,
    ) -> Run:
        """Start a run and its pump; returns once the agent accepted it (or raises its
        refusal). With ``locks``, the session's run lock is taken first (``force``: over
        from its holder) and held until the run ends; ``holder``: who a busy error names."""
        execution_id = new_execution_id()
        release = (lambda: self.locks.unlock(session_id, execution_id)) if locks else None

        def run() -> Run:
            return Run(
                channel.open(op, **args),
                self.hub,
                op,
                session_id,
                sandbox_id,
                execution_id=execution_id,
                summary=summary,
                secrets=secrets,
                max_log_bytes=self.max_log_bytes,
                release=release,
                base_seq=self.hub.latest(session_id),
            )

        interrupted = False
        if locks:
            interrupted = await self._lock(session_id, execution_id, sandbox_id, holder, force)
        try:
            started = await self._accepted(run, interrupted)
            if locks and started.pid is not None and op != "code.run":
                # What a forced takeover kills (a cell is interrupted instead: see _lock).
                await self.locks.set_lock_pid(session_id, execution_id, started.pid)
        except BaseException:
            if locks:
                await self.locks.unlock(session_id, execution_id)
            raise
        self._runs[execution_id] = started
        started.task = Supervisor.current().spawn(self._pump(started), "execution")
        return started

    async def reattach(
        self,
        channel: ChannelLike,
        record: ExecutionRecord,
        place: list[Any] | None,
        *,
        secrets: list[str],
        locked: bool,
    ) -> Run:
        """Carry on a command's record after a restart, from ``place`` (what its log stored
        of where it stood, :meth:`RunRecorder.resume_offset`; the hub's writer must know it
        first, with those of the session's other commands carried on: see
        :meth:`LogWriter.remember <sandlot.transcript.logwriter.LogWriter.remember>`);
        ``locked``: it holds its
        session's run lock, released as it ends. Raises the agent's refusal (the process is
        unknown to it: ``process_not_found``)."""
        op = REATTACHABLE.get(record.kind)
        if record.pid is None or op is None:
            raise ProtocolError(f"execution {record.id} has no process to re-attach to")
        pid = record.pid
        session_id, execution_id = record.session_id, record.id
        offset = Run.resume_offset(place)
        run = Run(
            channel.open("proc.attach", pid=pid, offset=offset),
            self.hub,
            op,
            session_id,
            record.sandbox_id,
            execution_id=execution_id,
            secrets=secrets,
            max_log_bytes=self.max_log_bytes,
            release=(lambda: self.locks.unlock(session_id, execution_id)) if locked else None,
        )
        run.created_at = record.created_at.timestamp()
        attached = await run.attached()
        start, gap = attached.get("start", 0), attached.get("gap", 0)
        if not isinstance(start, int) or not isinstance(gap, int) or start < 0 or gap < 0:
            run.request.cancel()
            raise ProtocolError(f"malformed attached event from the agent: {attached!r}")
        await run.resumed(pid, place, start, gap)

        async def kill() -> None:
            try:
                await channel.call("signal", pid=pid, signal=9)
            except SandlotError:
                pass  # it ended meanwhile, or its sandbox did

        run.kill = kill
        self._runs[execution_id] = run
        run.task = Supervisor.current().spawn(self._pump(run), "execution")
        return run

    @staticmethod
    async def _accepted(run: Callable[[], Run], interrupted: bool) -> Run:
        """Open the request until the agent accepts it: a cell that a takeover interrupted
        (``interrupted``) may still be winding down in its context for a while."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TAKEOVER_SECONDS
        while True:
            opened = run()
            try:
                await opened.accepted()
                return opened
            except CodeContextBusyError:
                if not interrupted or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _pump(self, run: Run) -> None:
        try:
            await run.pump()
        except asyncio.CancelledError:
            pass
        finally:
            # Its record ends with its exit (or error) event, in the same transaction.
            if self.on_end is not None and not run.detaching:
                self.on_end(run)
            asyncio.get_running_loop().call_later(KEEP_SECONDS, self._runs.pop, run.id, None)

    async def _lock(
        self, session_id: str, execution_id: str, sandbox_id: str, holder: str, force: bool
    ) -> bool:
        """Take the session's run lock, over from its holder with ``force`` (see the
        module). True: a cell was interrupted (its context may be busy a while)."""
        locks = self.locks
        if not force:
            await locks.lock(session_id, execution_id, sandbox_id, holder=holder, force=False)
            return False
        held = await locks.lock_holder(session_id)
        await locks.lock(session_id, execution_id, sandbox_id, holder=holder, force=True)
        old = self._runs.get(held or "")
        if old is None or old.task is None or old.done.is_set():
            return False
        old.taken_over = True
        if old.op == "code.run" or old.pid is None:
            old.task.cancel()
            return True
        task = old.task  # killed: its end comes from the agent; cancel it if that lingers
        asyncio.get_running_loop().call_later(
            TAKEOVER_SECONDS, lambda: old.done.is_set() or task.cancel()
        )
        return False
