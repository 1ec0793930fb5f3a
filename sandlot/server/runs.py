"""Executions the server runs: each pumps its agent request's frames into the event log.

The pump belongs to the server, not to an HTTP connection: a client that drops keeps nothing
from running, and reads what it missed from the log when it comes back. Output is taken from
the agent only as fast as the log commits it, so the agent's credit window carries the
back-pressure all the way to the command.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..agent import protocol as p
from ..channel import Request
from ..errors import ProtocolError, RunCancelledError, SandlotError
from ..secrets.mask import Masker
from ..store.records import ExecutionRecord
from ..supervisor import Supervisor
from .hub import Hub

STREAMS = {p.STDOUT: "stdout", p.STDERR: "stderr"}
KINDS = {"exec": "command", "code.run": "code", "code.install": "install"}


def new_execution_id() -> str:
    return "ex-" + uuid.uuid4().hex[:16]


@dataclass
class Run:
    id: str
    op: str
    session_id: str
    sandbox_id: str
    request: Request
    hub: Hub
    max_log_bytes: int = 256 * 1024 * 1024
    base_seq: int = 0  # every event of this execution comes after this seq
    logged: int = 0  # output bytes logged so far
    dropped: int = 0  # output bytes over max_log_bytes, not logged
    pid: int | None = None
    outcome: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    created_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    secrets: list[str] = field(default_factory=list, repr=False)  # masked in the output
    maskers: dict[str, Masker] = field(default_factory=dict, repr=False)
    # A durable session's run lock, released as the run ends: False when a forced takeover
    # took it meanwhile (the run then ends with a run_cancelled error).
    release: Callable[[], Awaitable[bool]] | None = field(default=None, repr=False)
    taken_over: bool = False  # set by the taker before it cancels this run's task
    _released: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.secrets:
            for name in STREAMS.values():
                masker = Masker(self.secrets)
                if masker.values:
                    self.maskers[name] = masker

    @property
    def kind(self) -> str:
        return KINDS[self.op]

    async def started(self, summary: dict[str, Any]) -> None:
        """Wait for the agent to accept the request (raising its refusal), then log it with
        the execution's record (one transaction)."""
        try:
            kind, _, payload = await self.request.receive()
        except BaseException:
            self.request.cancel()
            raise
        if kind != p.EVENT:
            self.request.cancel()
            raise ProtocolError(f"the agent answered {self.op} with frame kind {kind}")
        event = _json(payload)
        pid = event.get("pid")
        self.pid = pid if isinstance(pid, int) else None
        started = {"event": "started", "op": self.op, "pid": self.pid, **summary}
        record = ExecutionRecord(
            id=self.id,
            session_id=self.session_id,
            sandbox_id=self.sandbox_id,
            kind=self.kind,
            state="running",
            pid=self.pid,
            created_at=datetime.fromtimestamp(self.created_at, UTC),
        )
        self.hub.put_nowait(self.session_id, self.id, "started", _dumps(started), record)

    async def pump(self) -> None:
        """Log every frame until the request ends; then the outcome is final."""
        request, hub, sid, eid = self.request, self.hub, self.session_id, self.id
        try:
            while True:
                kind, stream, payload = await request.receive()
                if kind == p.DATA:
                    name = STREAMS.get(stream)
                    if name is not None and payload:
                        await self._output(name, payload)
                    request.consumed(len(payload))
                elif kind == p.EVENT:
                    event = _json(payload)
                    await hub.put(sid, eid, str(event.get("event", "event")), payload)
                elif kind == p.END:
                    for name, masker in self.maskers.items():  # what a partial match held
                        rest = masker.flush()
                        if rest:
                            await self._output(name, rest, masked=True)
                    outcome = _json(payload)
                    if self.dropped:
                        outcome["log_dropped"] = self.dropped
                        payload = _dumps(outcome)
                    if not await self._unlock():
                        return await self._cancelled_by_takeover()
                    self.outcome = outcome
                    await hub.put(sid, eid, "exit", payload)
                    return
        except asyncio.CancelledError:
            request.cancel()
            if self.taken_over:
                self.outcome = self._takeover_outcome()
            else:
                self.outcome = {"code": "cancelled", "message": "the execution was cancelled"}
                self._unlock_later()
            hub.put_nowait(sid, eid, "error", _dumps(self.outcome))
            raise
        except SandlotError as exc:
            if not await self._unlock():
                return await self._cancelled_by_takeover()
            self.outcome = exc.to_dict()
            await hub.put(sid, eid, "error", _dumps(self.outcome))
        except Exception as exc:  # a bug must still end the stream for its followers
            self._unlock_later()
            self.outcome = {"code": "sandlot_error", "message": f"server error: {exc}"}
            hub.put_nowait(sid, eid, "error", _dumps(self.outcome))
            raise
        finally:
            self.ended_at = time.time()
            self.done.set()

    async def _unlock(self) -> bool:
        """Release the session's run lock (if it took one); False: it was taken over."""
        if self.release is None or self._released:
            return not self.taken_over
        self._released = True
        return await self.release() and not self.taken_over

    def _unlock_later(self) -> None:
        if self.release is not None and not self._released:
            self._released = True
            Supervisor.current().spawn(self.release(), "unlock-run")

    def _takeover_outcome(self) -> dict[str, Any]:
        error = RunCancelledError(
            f"this run was cancelled: another caller took session {self.session_id} over",
            id=self.id,
        )
        return error.to_dict()

    async def _cancelled_by_takeover(self) -> None:
        self.taken_over = True
        self.outcome = self._takeover_outcome()
        await self.hub.put(self.session_id, self.id, "error", _dumps(self.outcome))

    async def _output(self, name: str, data: bytes, masked: bool = False) -> None:
        masker = None if masked else self.maskers.get(name)
        if masker is not None:  # a secret's value never reaches the log or a stream
            data = masker.feed(data)
        room = self.max_log_bytes - self.logged
        if len(data) > room:
            if self.dropped == 0:
                notice = {"event": "truncated", "after": self.max_log_bytes}
                await self.hub.put(self.session_id, self.id, "truncated", _dumps(notice))
            self.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        if data:
            self.logged += len(data)
            await self.hub.put(self.session_id, self.id, name, data)

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


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ProtocolError(f"malformed message from the agent: {payload[:200]!r}")
    return value


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
