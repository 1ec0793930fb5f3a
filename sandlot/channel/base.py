"""The channel seam: what the layers above (the SDK, the run recorder) use of a channel.

Three classes implement it, each by subclassing these protocols (so the type checker holds
them to it): :class:`~sandlot.channel.connection.Channel`, the connection to an agent;
:class:`~sandlot.remote.channel.RemoteChannel`, the same operations over a sandlot server's
HTTP API; and :class:`~sandlot.manager.recorder.RecordingChannel`, a channel whose runs go
into a durable session's transcript. Code written against :class:`ChannelLike` drives any of
them; what only a connection to an agent has (credit windows, tunnels, hand-offs, redialling)
stays on :class:`~sandlot.channel.connection.Channel`, for the manager and the providers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from ..agent import protocol as p

Frame = tuple[int, int, bytes]  # kind, stream, payload (see sandlot.agent.protocol)


class RequestLike(Protocol):
    """One streaming operation: its frames in, its input out."""

    async def receive(self) -> Frame:
        """The next frame; an ERROR frame is raised as its error, END is returned last."""
        ...

    def consumed(self, amount: int) -> None:
        """The caller has taken ``amount`` bytes of DATA: the agent may send more."""
        ...

    async def send_data(self, data: bytes, stream: int = p.STDIN) -> None:
        """Send bytes on a stream (waiting for room as the transport needs)."""
        ...

    def send_eof(self, stream: int = p.STDIN) -> None:
        """No more input on the stream."""
        ...

    def cancel(self) -> None:
        """Abandon the operation; the agent stops it."""
        ...


class ChannelLike(Protocol):
    """The operations of one sandbox's agent: streaming ones and ones with one answer."""

    # Whether runs opened here go into a session's transcript: the SDK then passes the
    # values it resolved from secret references along, to be masked there (``_mask``).
    records: ClassVar[bool] = False

    def open(self, op: str, **args: Any) -> RequestLike:
        """Start a streaming operation; its frames arrive on the returned request."""
        ...

    async def call(self, op: str, **args: Any) -> Any:
        """An operation with a single JSON answer."""
        ...

    def close(self) -> None:
        """Drop this connection (the sandbox keeps running)."""
        ...


__all__ = ["ChannelLike", "Frame", "RequestLike"]
