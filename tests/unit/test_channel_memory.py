"""A closed channel's memory: the read buffer goes with the connection (issue 16).

The channel, its transport, its protocol and the closing error hold each other, so only the
cyclic gc's full pass frees them, which an idle server may not run for a long time; the
buffer (64 KiB, up to 4 MiB after a stream) must not wait for it. Over a real socket pair.
"""

from __future__ import annotations

import asyncio
import socket

from sandlot.agent import protocol as p
from sandlot.channel.connection import Channel


def frame(kind: int, rid: int, payload: bytes = b"") -> bytes:
    return p.pack(kind, rid, payload, 0) + payload


async def test_a_lost_connection_gives_its_read_buffer_back() -> None:
    ours, theirs = socket.socketpair()
    theirs.sendall(frame(p.HELLO, 0, p.dumps({"version": p.VERSION, "pid": 1})))

    async def dial() -> socket.socket:
        return ours

    channel = await Channel.connect_with(dial)
    protocol = channel._protocol
    assert protocol is not None and len(protocol.buffer) > 0
    theirs.close()
    for _ in range(200):
        if channel.closed is not None:
            break
        await asyncio.sleep(0.01)
    assert channel.closed is not None
    assert len(protocol.buffer) == 0
    assert protocol.large is None
