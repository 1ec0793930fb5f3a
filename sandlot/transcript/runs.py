"""Pumped runs: a run whose agent request is read by a task of its own, into the event log.

A server runs executions this way: the pump belongs to the process, not to an HTTP
connection, so a client that drops keeps nothing from running, and reads what it missed from
the log when it comes back. Output is taken from the agent only as fast as the log commits
it, so the agent's credit window carries the back-pressure all the way to the command. What
is logged is the recorder's business (:mod:`sandlot.transcript.recorder`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..agent import protocol as p
from ..channel.base import RequestLike
from ..errors import ProtocolError, SandlotError
from .recorder import KINDS, STREAMS, RunRecorder, new_execution_id, parse, takes_run_lock

__all__ = ["KINDS", "STREAMS", "Run", "new_execution_id", "takes_run_lock"]


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
            request.cancel()
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
