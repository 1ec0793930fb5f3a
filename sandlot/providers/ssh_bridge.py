"""The ssh provider's channel: an SSH direct-streamlocal channel to the agent's Unix socket
on the remote host, bridged to a local socketpair so that a :class:`~sandlot.channel.Channel`
can run over it like over any socket. The SSH channel's window is the flow control."""

from __future__ import annotations

import asyncio
import socket
from typing import Any


class _LocalEnd(asyncio.Protocol):
    """Our end of the socketpair: what the Channel writes goes into the SSH channel."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chan: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chan.write(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.chan is not None:
            self.chan.close()

    # The SSH channel's window is the real flow control; these only stop buffering without
    # bound when the Channel reads more slowly than the network delivers.
    def pause_writing(self) -> None:
        if self.chan is not None:
            self.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.chan is not None:
            self.chan.resume_reading()


def _remote_end_class() -> type:
    import asyncssh

    class RemoteEnd(asyncssh.SSHUNIXSession[bytes]):
        """The SSH channel's session: what the agent sends goes to the socketpair."""

        def __init__(self, local: _LocalEnd) -> None:
            self.local = local

        def data_received(self, data: bytes, datatype: Any) -> None:
            assert self.local.transport is not None
            self.local.transport.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.local.transport is not None:
                self.local.transport.close()

        def pause_writing(self) -> None:
            if self.local.transport is not None:
                self.local.transport.pause_reading()

        def resume_writing(self) -> None:
            if self.local.transport is not None:
                self.local.transport.resume_reading()

    return RemoteEnd


async def open_bridge(conn: Any, path: str) -> socket.socket:
    """A local socket connected, through the SSH connection, to the remote Unix socket."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    local = _LocalEnd()
    try:
        await loop.create_connection(lambda: local, sock=ours)
        remote_end = _remote_end_class()
        chan, _ = await conn.create_unix_connection(lambda: remote_end(local), path)
    except BaseException:
        if local.transport is not None:
            local.transport.close()
        else:
            ours.close()
        theirs.close()
        raise
    local.chan = chan
    return theirs
