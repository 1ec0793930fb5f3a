"""The client's backstop for an execution's ``timeout``.

The side that runs the execution (the agent, or the server in front of it) enforces the
timeout and answers with the end. When that answer does not come (a server that stopped
answering, a connection that carries nothing), the caller must still get its
``CommandTimeoutError``/``CodeTimeoutError`` rather than wait forever: after the timeout and
:data:`GRACE` more seconds, a wait for the next frame gives up.

Only waiting counts: a frame that is already on its way never trips the deadline, and neither
does time the caller's own callbacks take, so a slow reader of a fast stream is not cut off.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..channel.base import RequestLike

GRACE = 5.0  # seconds past the timeout for the other side's own answer


class DeadlinePassed(Exception):
    """The execution ran ``GRACE`` seconds past its timeout with no end from the other side."""


class Deadline:
    def __init__(self, seconds: float | None) -> None:
        """``seconds``: how long the other side may take before it ends the execution itself
        (its timeout, plus any grace it gives an interrupt); None: no deadline."""
        loop = asyncio.get_running_loop()
        self.at = None if seconds is None else loop.time() + seconds + GRACE

    async def receive(self, request: RequestLike) -> tuple[int, int, bytes]:
        """The next frame; :class:`DeadlinePassed` when it does not come in time."""
        if self.at is None:
            return await request.receive()
        # At least GRACE for every frame: past the deadline, a stream that still flows is read
        # to its end; only silence gives up.
        scope = asyncio.timeout_at(max(self.at, asyncio.get_running_loop().time() + GRACE))
        try:
            async with scope:
                return await request.receive()
        except TimeoutError:
            if scope.expired():
                raise DeadlinePassed from None
            raise
