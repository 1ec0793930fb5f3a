"""A session sandbox's channel, as the SDK sees it in embedded mode: runs go in the transcript.

Every command, code cell and install opened through it takes the session's run lock first
(foreground runs only: a background command is a service, not a run), then its frames are
recorded into the session's event log as they reach the caller, by the same recorder as a
server's executions (:mod:`sandlot.transcript.recorder`). The lock is released at the end; if
a forced takeover cancelled the run meanwhile, the caller gets
:class:`~sandlot.errors.RunCancelledError`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..agent import protocol as p
from ..channel.base import ChannelLike, Frame, RequestLike
from ..errors import SandlotError
from ..transcript.recorder import KINDS, RunRecorder, takes_run_lock

if TYPE_CHECKING:
    from ..channel import Channel
    from .sessions import Sessions

__all__ = ["MASK_ARG", "RecordedRun", "RecordingChannel", "takes_run_lock"]
MASK_ARG = "_mask"  # values the SDK resolved from secret references for this run only
SUMMARY = ("cmd", "argv", "cwd", "context")  # what of a run's arguments its start tells


class RecordingChannel(ChannelLike):
    """Wraps a sandbox's channel: runs opened through it are recorded; the rest passes."""

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
        self.channel = channel
        self.sessions = sessions
        self.session_id = session_id
        self.sandbox_id = sandbox_id
        self.holder = holder
        self.force = force
        self.secrets = secrets

    def open(self, op: str, **args: Any) -> RequestLike:
        mask = args.pop(MASK_ARG, None) or []
        if op not in KINDS:
            return self.channel.open(op, **args)
        return RecordedRun(self, op, args, [*self.secrets, *mask])

    async def call(self, op: str, **args: Any) -> Any:
        return await self.channel.call(op, **args)

    def close(self) -> None:
        self.channel.close()


class RecordedRun(RequestLike):
    """A run's request, opened on its first use (once the lock is held) and recorded."""

    def __init__(self, owner: RecordingChannel, op: str, args: dict[str, Any], secrets: list[str]):
        self.owner = owner
        self.op = op
        self.args = args
        if op == "code.run":
            args["started"] = True  # its pid, for the lock (the SDK skips this event)
        self.locks = takes_run_lock(op, args)
        sessions, session_id = owner.sessions, owner.session_id
        self.recorder = RunRecorder(
            sessions.hub,
            op,
            session_id,
            owner.sandbox_id,
            summary=_summary(args),
            secrets=secrets,
            release=(lambda: sessions.unlock(session_id, self.id)) if self.locks else None,
        )
        self.id = self.recorder.id
        self._request: RequestLike | None = None
        self._opening = asyncio.Lock()
        self._cancelled = False

    async def _open(self) -> RequestLike:
        async with self._opening:
            if self._request is not None:
                return self._request
            if self._cancelled:
                raise asyncio.CancelledError
            owner = self.owner
            if self.locks:
                await owner.sessions.lock(
                    owner.session_id,
                    self.id,
                    owner.sandbox_id,
                    holder=owner.holder,
                    force=owner.force,
                )
            self._request = owner.channel.open(self.op, **self.args)
            return self._request

    async def receive(self) -> Frame:
        request = self._request or await self._open()
        recorder = self.recorder
        try:
            frame = await request.receive()
        except SandlotError as exc:
            if not await recorder.failed(exc):
                raise recorder.takeover_error() from None
            raise
        starting = not recorder.has_started
        if not await recorder.record(frame):
            raise recorder.takeover_error()
        if starting and recorder.has_started and self.locks and recorder.pid is not None:
            owner = self.owner
            await owner.sessions.set_lock_pid(owner.session_id, self.id, recorder.pid)
        return frame

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
            self.recorder.cancelled()  # (a run never opened never started)


def _summary(args: dict[str, Any]) -> dict[str, Any]:
    summary = {k: v for k, v in args.items() if k in SUMMARY}
    if "code" in args:
        summary["code"] = str(args["code"])[:4096]
    return summary
