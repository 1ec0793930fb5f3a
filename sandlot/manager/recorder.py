"""A session sandbox's channel, as the SDK sees it in embedded mode: runs go in the transcript.

Every command, code cell and install opened through it takes the session's run lock first
(foreground runs only: a background command is a service, not a run), then its frames are
copied into the session's event log as they reach the caller: ``started`` (with the
execution's record), ``stdout``/``stderr`` (secret values masked), the agent's events, and
``exit`` or ``error``. The lock is released at the end; if a forced takeover cancelled the
run meanwhile, the caller gets :class:`~sandlot.errors.RunCancelledError`.

The same kinds and payloads as a server's executions (:mod:`sandlot.server.runs`), so a
transcript reads the same wherever it was written.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..agent import protocol as p
from ..errors import RunCancelledError, SandlotError
from ..secrets.mask import Masker
from ..server.runs import KINDS, STREAMS, new_execution_id
from ..supervisor import Supervisor

if TYPE_CHECKING:
    from ..channel import Channel, Request
    from .sessions import Sessions

MASK_ARG = "_mask"  # values the SDK resolved from secret references for this run only


def takes_run_lock(op: str, args: dict[str, Any]) -> bool:
    """Whether a run of ``op`` takes its session's lock: all but a command that keeps its
    stdin open and has no time limit (a service, such as a server started in the
    background). The same rule embedded and in a server."""
    return not (op == "exec" and args.get("stdin") and args.get("timeout") is None)


class RecordingChannel:
    """Wraps a sandbox's channel; everything but :meth:`open` of a run passes through."""

    records = True  # the SDK passes per-run secret values (``_mask``) only to such a channel

    def __init__(
        self,
        channel: Channel,
        sessions: Sessions,
        session_id: str,
        sandbox_id: str,
        *,
        holder: str,
        force: bool,
        secrets: list[str],
    ) -> None:
        self._channel = channel
        self._sessions = sessions
        self.session_id = session_id
        self.sandbox_id = sandbox_id
        self.holder = holder
        self.force = force
        self.secrets = secrets

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def open(self, op: str, **args: Any) -> Any:
        mask = args.pop(MASK_ARG, None) or []
        if op not in KINDS:
            return self._channel.open(op, **args)
        return RecordedRun(self, op, args, [*self.secrets, *mask])


class RecordedRun:
    """A run's request, opened on its first use (once the lock is held) and recorded."""

    def __init__(self, owner: RecordingChannel, op: str, args: dict[str, Any], secrets: list[str]):
        self.owner = owner
        self.op = op
        self.args = args
        self.id = new_execution_id()
        if op == "code.run":
            args["started"] = True  # its pid, for the lock (the SDK skips this event)
        self.locks = takes_run_lock(op, args)
        self.maskers = {name: Masker(secrets) for name in STREAMS.values()} if secrets else {}
        self._request: Request | None = None
        self._opening = asyncio.Lock()
        self._ended = False
        self._cancelled = False
        self._started_at = time.time()

    @property
    def _hub(self) -> Any:
        return self.owner._sessions.hub

    def _put(self, kind: str, data: bytes, record: Any = None) -> None:
        self._hub.put_nowait(self.owner.session_id, self.id, kind, data, record)

    async def _open(self) -> Request:
        async with self._opening:
            if self._request is not None:
                return self._request
            if self._cancelled:
                raise asyncio.CancelledError
            owner = self.owner
            if self.locks:
                await owner._sessions.lock(
                    owner.session_id,
                    self.id,
                    owner.sandbox_id,
                    holder=owner.holder,
                    force=owner.force,
                )
            self._request = owner._channel.open(self.op, **self.args)
            return self._request

    async def receive(self) -> tuple[int, int, bytes]:
        request = self._request or await self._open()
        try:
            frame = await request.receive()
        except SandlotError as exc:
            await self._end("error", exc.to_dict())
            raise
        kind, stream, payload = frame
        if kind == p.DATA:
            name = STREAMS.get(stream)
            if name is not None and payload:
                masker = self.maskers.get(name)
                data = masker.feed(payload) if masker is not None else bytes(payload)
                if data:
                    self._put(name, data)
        elif kind == p.EVENT:
            event = _json(payload)
            name = str(event.get("event", "event"))
            if name == "started":
                await self._started(event)
            else:
                self._put(name, bytes(payload))
        elif kind == p.END:
            for name, masker in self.maskers.items():
                rest = masker.flush()
                if rest:
                    self._put(name, rest)
            await self._end("exit", _json(payload))
        return frame

    async def _started(self, event: dict[str, Any]) -> None:
        from ..store.records import ExecutionRecord

        owner = self.owner
        pid = event.get("pid") if isinstance(event.get("pid"), int) else None
        summary = {k: v for k, v in self.args.items() if k in ("cmd", "argv", "cwd", "context")}
        if "code" in self.args:
            summary["code"] = str(self.args["code"])[:4096]
        record = ExecutionRecord(
            id=self.id,
            session_id=owner.session_id,
            sandbox_id=owner.sandbox_id,
            kind=KINDS[self.op],
            pid=pid,
            created_at=datetime.fromtimestamp(self._started_at, UTC),
        )
        started = {"event": "started", "op": self.op, "pid": pid, **summary}
        self._put("started", json.dumps(started).encode(), record)
        if self.locks and pid is not None:
            await owner._sessions.set_lock_pid(owner.session_id, self.id, pid)

    async def _end(self, kind: str, outcome: dict[str, Any]) -> None:
        if self._ended:
            return
        self._ended = True
        if not self.locks:
            self._put(kind, json.dumps(outcome).encode())
            return
        owner = self.owner
        if await owner._sessions.unlock(owner.session_id, self.id):
            self._put(kind, json.dumps(outcome).encode())
            return
        error = RunCancelledError(
            f"this run was cancelled: another caller took session {owner.session_id} over",
            id=self.id,
        )
        self._put("error", json.dumps(error.to_dict()).encode())
        raise error

    def consumed(self, amount: int) -> None:
        if self._request is not None:
            self._request.consumed(amount)

    async def send_data(self, data: bytes, stream: int = p.STDIN) -> None:
        request = self._request or await self._open()
        await request.send_data(data, stream)

    def send_eof(self, stream: int = p.STDIN) -> None:
        if self._request is not None:
            self._request.send_eof(stream)

    def cancel(self) -> None:
        self._cancelled = True
        if self._request is not None:
            self._request.cancel()
        if not self._ended and self._request is not None:  # else it never started
            self._ended = True
            outcome = {"code": "cancelled", "message": "the execution was cancelled"}
            self._put("error", json.dumps(outcome).encode())
            if self.locks:
                owner = self.owner
                Supervisor.current().spawn(
                    owner._sessions.unlock(owner.session_id, self.id), "unlock-run"
                )

    def __getattr__(self, name: str) -> Any:
        if self._request is None:
            raise AttributeError(name)
        return getattr(self._request, name)


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
