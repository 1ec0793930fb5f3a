"""The event log's live half: group-committed appends and live followers.

A server has one :class:`Hub`, and so has an embedded process once it uses durable sessions
(:meth:`sandlot.manager.sessions.Sessions.local`); every run's recorder hands its events to
it. One writer task commits whatever has accumulated, per session in one transaction, while
the next batch accumulates: an idle process commits each event at once (low latency), a busy
one commits many per transaction (high throughput). Consecutive output of one execution is
coalesced into chunks of up to ``CHUNK`` bytes first, so a flood of small writes does not
become a flood of rows (a big write stays an event of its own: joining it would copy it).

Only committed events are ever sent to a client: what a client saw survives a crash, and its
sequence number is never reused. Followers are woken after each commit and read from a small
per-session memory of recent events; one that fell behind reads the store.

The writer is a supervised loop (:mod:`sandlot.supervisor`): an exception in it is
logged and the loop restarted, with what it had not yet committed still queued. How far behind
it is (:meth:`Hub.health`) is what a server's health check reports: a writer that stops
draining makes the server unhealthy, never silently wedged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import NotFoundError
from ..store.records import ExecutionRecord
from ..supervisor import Loop, Supervisor
from .eventlog import Event, EventLog
from .logwriter import LogWriter

log = logging.getLogger("sandlot.transcript")
T = TypeVar("T")
CHUNK = 1024 * 1024  # largest coalesced output event
ALONE = 256 * 1024  # output this big is an event of its own (joining it to others is a copy)
PENDING_LIMIT = 8 * 1024 * 1024  # bytes waiting for commit before producers wait
SESSION_PENDING_LIMIT = 2 * 1024 * 1024  # the same for one session (one session's flood
# must not take all the room of the others)
RECENT_BYTES = 8 * 1024 * 1024  # per session, kept in memory for followers
RECENT_EVENTS = 4096  # and at most this many events
RECENT_TOTAL = 64 * 1024 * 1024  # all sessions' recent events together
SNAPSHOT_WAIT = 5.0  # a read of "the log so far" waits this long for what was queued before it
IDLE_SECONDS = 600.0  # a session nobody wrote to or followed this long leaves memory
INLINE_BYTES = 32 * 1024  # a batch this small commits on the event loop's thread (output
# over 4 KiB is compressed as it is written: a bigger batch would hold the loop for ms)
OUTPUT = frozenset({"stdout", "stderr"})
TERMINAL = frozenset({"exit", "error"})


@dataclass
class _Pending:
    execution_id: str | None
    kind: str
    parts: list[bytes]  # joined as it is committed: one copy of coalesced output, none of
    # a chunk alone
    size: int
    record: ExecutionRecord | None = None  # a "started" event records its execution
    progress: tuple[int, ...] | None = None  # where its command stands in the agent's log


@dataclass
class _Session:
    pending: list[_Pending] = field(default_factory=list)
    pending_bytes: int = 0
    since: float | None = None  # when its oldest pending event was queued (monotonic)
    committing: bool = False  # a batch of it is being written now
    recent: deque[Event] = field(default_factory=deque)
    recent_bytes: int = 0
    touched: float = 0.0  # last commit (monotonic): the least recent give memory up first
    latest: int | None = None  # last committed seq this process knows of
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False  # forgotten: nothing more will be written
    forget: bool = False  # to be forgotten once what it has queued is committed
    followers: int = 0

    @property
    def settled(self) -> bool:
        """Everything queued for it is committed (and published)."""
        return not self.pending and not self.committing


@dataclass
class HubHealth:
    """How far behind the writer is: what health checks and metrics report."""

    writer_alive: bool
    pending_events: int
    pending_bytes: int
    oldest_pending_seconds: float  # 0 when nothing waits
    recent_bytes: int
    sessions: int


class Hub:
    """Owns the database's one writer thread: every write of the process to it goes through
    it, so writes never queue on SQLite's lock (whose busy handler sleeps in milliseconds)."""

    def __init__(
        self,
        log: EventLog,
        writer: LogWriter,
        on_commit: Callable[[list[Event], float], None] | None = None,
    ):
        """``on_commit(events, seconds)`` is told of every commit and how long it took."""
        self.log = log
        self.writer = writer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandlot-db")
        self._busy = 0  # writes running on the writer thread
        self._sessions: dict[str, _Session] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._pending_bytes = 0
        self._recent_bytes = 0
        self._committing_since: float | None = None
        self._committing_events = 0
        self._next_sweep = 0.0
        self._on_commit = on_commit
        self._supervisor: Supervisor | None = None
        self._loop: Loop | None = None
        self._closed = False

    def start(self) -> None:
        self._supervisor = Supervisor.current()
        self._loop = self._supervisor.keep("event-writer", self._write_loop)

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        self._closed = True
        self._wake.set()
        if self._loop is not None and self._supervisor is not None:
            await self._supervisor.join(self._loop)
        await self.write(self.writer.close)
        self._executor.shutdown(wait=True)

    async def abandon(self) -> None:
        """Stop the writer without committing (the interpreter is exiting)."""
        self._closed = True
        if self._loop is not None and self._supervisor is not None:
            await self._supervisor.stop(self._loop)

    def health(self) -> HubHealth:
        now = time.monotonic()
        oldest = self._committing_since
        events = self._committing_events
        for session in self._sessions.values():
            events += len(session.pending)
            if session.since is not None and (oldest is None or session.since < oldest):
                oldest = session.since
        return HubHealth(
            writer_alive=self._loop is not None and self._loop.alive,
            pending_events=events,
            pending_bytes=self._pending_bytes,
            oldest_pending_seconds=0.0 if oldest is None else now - oldest,
            recent_bytes=self._recent_bytes,
            sessions=len(self._sessions),
        )

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a database write on the writer thread."""
        self._busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._busy -= 1

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session()
        return session

    # -- producing --------------------------------------------------------------------------

    async def put(self, session_id: str, execution_id: str | None, kind: str, data: bytes) -> None:
        """Queue an event; waits while too much is uncommitted, in all or in this session
        (back-pressure to the agent)."""
        await self.room(session_id)
        self.put_nowait(session_id, execution_id, kind, data)

    async def room(self, session_id: str) -> None:
        """Wait while too much is uncommitted, in all or in this session."""
        while not self._closed and (
            self._pending_bytes > PENDING_LIMIT
            or self._session(session_id).pending_bytes > SESSION_PENDING_LIMIT
        ):
            self._room.clear()
            await self._room.wait()

    def put_nowait(
        self,
        session_id: str,
        execution_id: str | None,
        kind: str,
        data: bytes,
        record: ExecutionRecord | None = None,
        progress: tuple[int, ...] | None = None,
    ) -> None:
        """``progress``: where the command stands in the agent's output log with this event
        (stored with it, in its transaction: what a restarted server resumes from)."""
        if type(data) is not bytes:
            data = bytes(data)  # kept until it is committed: nobody may change it meanwhile
        session = self._session(session_id)
        last = session.pending[-1] if session.pending else None
        if (
            kind in OUTPUT
            and last is not None
            and last.kind == kind
            and last.execution_id == execution_id
            and last.size + len(data) <= CHUNK
            and len(data) < ALONE
        ):
            last.parts.append(data)
            last.size += len(data)
            if progress is not None:
                last.progress = progress
        else:
            if not session.pending:
                session.since = time.monotonic()
            session.pending.append(
                _Pending(execution_id, kind, [data], len(data), record, progress)
            )
        session.pending_bytes += len(data)
        self._pending_bytes += len(data)
        self._dirty.add(session_id)
        self._wake.set()

    def latest(self, session_id: str) -> int:
        """The last seq this process committed for the session (0 if none yet): a new
        execution's events all come after it, so its stream can start there."""
        session = self._sessions.get(session_id)
        return session.latest or 0 if session is not None else 0

    def forget(self, session_id: str) -> None:
        """Drop a finished session's memory (its followers then read the store), once what
        it has queued is committed; a follower waiting for news of it is woken to find the
        end."""
        session = self._sessions.get(session_id)
        if session is None:
            return
        if not session.settled:
            session.forget = True  # done by the writer after the commit in flight
            return
        del self._sessions[session_id]
        self._recent_bytes -= session.recent_bytes
        session.recent.clear()
        session.recent_bytes = 0
        session.ended = True
        session.changed.set()

    async def flushed(self, session_id: str) -> int:
        """Wait until everything queued for the session so far is committed; its last seq."""
        session = self._session(session_id)
        while not session.settled:
            session.changed.clear()
            await session.changed.wait()
        if session.latest is None:
            session.latest = await asyncio.to_thread(self.log.last_seq, session_id)
        return session.latest

    async def _write_loop(self) -> None:
        if self._dirty:
            self._wake.set()  # restarted: what the failed run left queued
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()
            if self._closed and not self._dirty:
                return

    async def _drain(self) -> None:
        """Commit every session queued so far, one after the other. A session is looked up
        as its turn comes (it may have been forgotten meanwhile), and what is left when this
        fails goes back to the queue."""
        dirty, self._dirty = self._dirty, set()
        alone = len(dirty) == 1
        try:
            while dirty:
                session_id = dirty.pop()
                session = self._sessions.get(session_id)
                if session is not None and session.pending:
                    await self._commit_session(session_id, session, alone)
        finally:
            if dirty:
                self._dirty |= dirty
                self._wake.set()
            self._room.set()  # producers waiting for room look again

    async def _commit_session(self, session_id: str, session: _Session, alone: bool) -> None:
        batch, session.pending = session.pending, []
        size, session.pending_bytes = session.pending_bytes, 0
        self._committing_since, session.since = session.since, None
        self._committing_events = len(batch)
        session.committing = True
        started = time.monotonic()
        events: list[Event] = []
        try:
            events = await self._commit(session_id, batch, alone)
        finally:
            session.committing = False
            self._committing_since = None
            self._committing_events = 0
            self._pending_bytes -= size
            self._publish(session_id, session, events, time.monotonic() - started)
        if session.forget and session.settled:
            self.forget(session_id)

    async def _commit(self, session_id: str, batch: list[_Pending], alone: bool) -> list[Event]:
        """Append a batch, with the execution records it implies, in one transaction;
        transient failures (a busy or restarting database) are retried."""
        items = [(p.execution_id, p.kind, b"".join(p.parts)) for p in batch]
        starts = [p.record for p in batch if p.record is not None]
        progress = {p.execution_id: p.progress for p in batch if p.progress and p.execution_id}
        delay = 0.05
        for attempt in range(8):
            try:
                small = alone and sum(len(i[2]) for i in items) <= INLINE_BYTES
                if self.writer.inline and self._busy == 0 and small:
                    # Nothing else writes now (writes start only from this thread), so a
                    # small SQLite append cannot wait on a lock: no thread hand-off. Big or
                    # many batches go to the writer thread, not to block the event loop.
                    return self.writer.append(session_id, items, starts, progress)
                return await self.write(self.writer.append, session_id, items, starts, progress)
            except NotFoundError:
                return []  # the session is gone: nobody can follow it
            except Exception:
                if attempt == 7:
                    log.exception("dropping %d events of session %s", len(items), session_id)
                    return []
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        return []

    def _publish(
        self, session_id: str, session: _Session, events: list[Event], seconds: float
    ) -> None:
        before = session.recent_bytes
        for event in events:
            session.recent.append(event)
            session.recent_bytes += len(event.data)
        while len(session.recent) > 1 and (
            session.recent_bytes > RECENT_BYTES or len(session.recent) > RECENT_EVENTS
        ):
            session.recent_bytes -= len(session.recent.popleft().data)
        self._recent_bytes += session.recent_bytes - before
        session.touched = now = time.monotonic()
        if self._recent_bytes > RECENT_TOTAL:
            self._trim_recent()
        if now > self._next_sweep:
            self._next_sweep = now + IDLE_SECONDS / 10
            self._drop_idle(now - IDLE_SECONDS)
        if events:
            session.latest = events[-1].seq
        session.changed.set()
        if self._on_commit is not None and events:
            try:
                self._on_commit(events, seconds)
            except Exception:  # an observer's bug must not stop the log
                log.exception("an observer of the event log failed")

    def _drop_idle(self, before: float) -> None:
        """Sessions that are never forgotten (a durable session outlives its sandboxes) still
        leave memory once idle; a later follower or writer starts afresh from the store."""
        for session_id, session in list(self._sessions.items()):
            if session.settled and not session.followers and session.touched < before:
                del self._sessions[session_id]
                self._recent_bytes -= session.recent_bytes

    def _trim_recent(self) -> None:
        """Over the total memory for recent events: the sessions committed to least recently
        give theirs up first (their followers read the store instead)."""
        for session in sorted(self._sessions.values(), key=lambda s: s.touched):
            while session.recent and self._recent_bytes > RECENT_TOTAL:
                size = len(session.recent.popleft().data)
                session.recent_bytes -= size
                self._recent_bytes -= size
            if self._recent_bytes <= RECENT_TOTAL:
                return

    # -- following --------------------------------------------------------------------------

    async def follow(
        self,
        session_id: str,
        after: int,
        *,
        execution_id: str | None = None,
        follow: bool = True,
        until_terminal: bool = False,
        heartbeat: float | None = None,
    ) -> AsyncIterator[list[Event]]:
        """Committed events with ``seq > after``, then new ones as they are committed, in
        batches (whatever is ready at once, so a client gets one write, not one per event).

        With ``execution_id``, only that execution's; ``until_terminal`` ends after its exit
        or error. Without ``follow``, ends once the log is exhausted; following ends when the
        session does. An empty batch comes after ``heartbeat`` quiet seconds (a keep-alive).
        """
        session = self._session(session_id)
        session.followers += 1
        try:
            if not follow:
                # "The log so far" includes what was queued before this read (a note written
                # just before the caller's answer): the writer commits it a moment later.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.flushed(session_id), SNAPSHOT_WAIT)
            batches = self._follow(
                session, session_id, after, execution_id, follow, until_terminal, heartbeat
            )
            async for batch in batches:
                yield batch
        finally:
            session.followers -= 1
            if (
                not session.followers
                and session.latest is None
                and session.settled
                and self._sessions.get(session_id) is session
            ):
                del self._sessions[session_id]  # a reader of an old log: nothing to keep

    async def _follow(
        self,
        session: _Session,
        session_id: str,
        after: int,
        execution_id: str | None,
        follow: bool,
        until_terminal: bool,
        heartbeat: float | None,
    ) -> AsyncIterator[list[Event]]:
        last = after
        while True:
            seen = session.latest
            batch = self._recent_after(session, last)
            if batch is None:
                batch = await asyncio.to_thread(
                    self.log.read, session_id, last, execution_id=execution_id, limit=500
                )
            if batch:
                last = batch[-1].seq
                if execution_id is not None:
                    batch = [e for e in batch if e.execution_id == execution_id]
                if until_terminal:
                    for i, event in enumerate(batch):
                        if event.kind in TERMINAL:
                            yield batch[: i + 1]
                            return
                    if batch and batch[-1].kind == "pruned":
                        # Retention dropped the rest, end included (only ended sessions'
                        # logs are dropped): nothing more of it will come.
                        yield batch
                        return
                if batch:
                    yield batch
                continue
            if session.latest != seen:
                continue
            if not follow or session.ended:
                return
            if not await self._changed(session, heartbeat):
                yield []

    @staticmethod
    async def _changed(session: _Session, timeout: float | None) -> bool:
        """Wait for a commit to the session; False if ``timeout`` passed first."""
        session.changed.clear()
        try:
            await asyncio.wait_for(session.changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _recent_after(session: _Session, after: int) -> list[Event] | None:
        """Events after ``after`` from memory, or None if memory does not reach back."""
        if session.latest is None:
            return None
        if after >= session.latest:
            return []
        recent = session.recent
        if not recent or recent[0].seq > after + 1:
            return None
        # Sequence numbers in memory are contiguous: index straight to the first one wanted.
        return list(itertools.islice(recent, after + 1 - recent[0].seq, None))
