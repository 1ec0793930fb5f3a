"""The server's half of the event log: group-committed appends and live followers.

Every execution's pump hands its events to the :class:`Hub`. One writer task commits whatever
has accumulated, per session in one transaction, while the next batch accumulates: an idle
server commits each event at once (low latency), a busy one commits many per transaction
(high throughput). Consecutive output of one execution is coalesced into chunks of up to
``CHUNK`` bytes first, so a flood of small writes does not become a flood of rows.

Only committed events are ever sent to a client: what a client saw survives a crash, and its
sequence number is never reused. Followers are woken after each commit and read from a small
per-session memory of recent events; one that fell behind reads the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import NotFoundError
from ..store.eventlog import Event, EventLog
from ..store.logwriter import LogWriter
from ..store.records import ExecutionRecord

log = logging.getLogger("sandlot.server")
T = TypeVar("T")
CHUNK = 1024 * 1024  # largest coalesced output event
PENDING_LIMIT = 8 * 1024 * 1024  # bytes waiting for commit before producers wait
RECENT_BYTES = 16 * 1024 * 1024  # per session, kept in memory for followers
RECENT_EVENTS = 4096  # and at most this many events
INLINE_BYTES = 256 * 1024  # a batch this small commits on the event loop's thread
OUTPUT = frozenset({"stdout", "stderr"})
TERMINAL = frozenset({"exit", "error"})


@dataclass
class _Pending:
    execution_id: str | None
    kind: str
    data: bytearray
    record: ExecutionRecord | None = None  # a "started" event records its execution


@dataclass
class _Session:
    pending: list[_Pending] = field(default_factory=list)
    recent: deque[Event] = field(default_factory=deque)
    recent_bytes: int = 0
    latest: int | None = None  # last committed seq this process knows of
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False  # forgotten: nothing more will be written
    followers: int = 0


class Hub:
    """Owns the database's one writer thread: every write of the server goes through it, so
    writes never queue on SQLite's lock (whose busy handler sleeps in milliseconds)."""

    def __init__(
        self,
        log: EventLog,
        writer: LogWriter,
        on_commit: Callable[[list[Event]], None] | None = None,
    ):
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
        self._on_commit = on_commit
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="sandlot-event-writer")

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        await self.write(self.writer.close)
        self._executor.shutdown(wait=True)

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
        """Queue an event; waits while too much is uncommitted (back-pressure to the agent)."""
        while self._pending_bytes > PENDING_LIMIT and not self._closed:
            self._room.clear()
            await self._room.wait()
        self.put_nowait(session_id, execution_id, kind, data)

    def put_nowait(
        self,
        session_id: str,
        execution_id: str | None,
        kind: str,
        data: bytes,
        record: ExecutionRecord | None = None,
    ) -> None:
        session = self._session(session_id)
        last = session.pending[-1] if session.pending else None
        if (
            kind in OUTPUT
            and last is not None
            and last.kind == kind
            and last.execution_id == execution_id
            and len(last.data) + len(data) <= CHUNK
        ):
            last.data += data
        else:
            session.pending.append(_Pending(execution_id, kind, bytearray(data), record))
        self._pending_bytes += len(data)
        self._dirty.add(session_id)
        self._wake.set()

    def latest(self, session_id: str) -> int:
        """The last seq this process committed for the session (0 if none yet): a new
        execution's events all come after it, so its stream can start there."""
        session = self._sessions.get(session_id)
        return session.latest or 0 if session is not None else 0

    def forget(self, session_id: str) -> None:
        """Drop a finished session's memory (its followers then read the store). Its log
        is committed; a follower waiting for news of it is woken to find the end."""
        session = self._sessions.get(session_id)
        if session is not None and not session.pending and session_id not in self._dirty:
            del self._sessions[session_id]
            session.ended = True
            session.changed.set()

    async def flushed(self, session_id: str) -> int:
        """Wait until everything queued for the session so far is committed; its last seq."""
        session = self._session(session_id)
        while session.pending or session_id in self._dirty:
            session.changed.clear()
            await session.changed.wait()
        if session.latest is None:
            session.latest = await asyncio.to_thread(self.log.last_seq, session_id)
        return session.latest

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            alone = len(dirty) == 1
            for session_id in dirty:
                session = self._sessions[session_id]
                batch, session.pending = session.pending, []
                events = await self._commit(session_id, batch, alone)
                self._pending_bytes -= sum(len(p.data) for p in batch)
                self._publish(session_id, session, events)
            if self._pending_bytes <= PENDING_LIMIT:
                self._room.set()
            if self._closed and not self._dirty:
                return

    async def _commit(self, session_id: str, batch: list[_Pending], alone: bool) -> list[Event]:
        """Append a batch, with the execution records it implies, in one transaction;
        transient failures (a busy or restarting database) are retried."""
        items = [(p.execution_id, p.kind, bytes(p.data)) for p in batch]
        starts = [p.record for p in batch if p.record is not None]
        delay = 0.05
        for attempt in range(8):
            try:
                small = alone and sum(len(i[2]) for i in items) <= INLINE_BYTES
                if self.writer.inline and self._busy == 0 and small:
                    # Nothing else writes now (writes start only from this thread), so a
                    # small SQLite append cannot wait on a lock: no thread hand-off. Big or
                    # many batches go to the writer thread, not to block the event loop.
                    return self.writer.append(session_id, items, starts)
                return await self.write(self.writer.append, session_id, items, starts)
            except NotFoundError:
                return []  # the session is gone: nobody can follow it
            except Exception:
                if attempt == 7:
                    log.exception("dropping %d events of session %s", len(items), session_id)
                    return []
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        return []

    def _publish(self, session_id: str, session: _Session, events: list[Event]) -> None:
        for event in events:
            session.recent.append(event)
            session.recent_bytes += len(event.data)
        while len(session.recent) > 1 and (
            session.recent_bytes > RECENT_BYTES or len(session.recent) > RECENT_EVENTS
        ):
            session.recent_bytes -= len(session.recent.popleft().data)
        if events:
            session.latest = events[-1].seq
        session.changed.set()
        if self._on_commit is not None and events:
            self._on_commit(events)

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
                and not session.pending
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
