"""Host side of port forwarding: one TCP connection to a port inside the sandbox, carried
by the agent's ``connect`` operation, spliced onto a local stream (a client of an exposed
port, or the server's proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from ..agent import protocol as p
from ..errors import PortError, ProtocolError
from .connection import Channel, Request

READ_SIZE = p.MAX_DATA  # one frame per read when the client sends fast


async def open_tunnel(channel: Channel, port: int) -> Request:
    """Connect to ``port`` on the sandbox's loopback; PortError if nothing answers there."""
    request = channel.open("connect", port=port)
    try:
        kind, _, payload = await request.receive()  # ERROR frames raise PortError
    except BaseException:
        request.cancel()
        raise
    if kind != p.EVENT or json.loads(payload).get("event") != "connected":
        request.cancel()
        raise ProtocolError(f"the agent answered connect with frame kind {kind}")
    return request


async def splice(
    request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> int:
    """Copy both ways until both sides have ended; the bytes that reached the sandbox."""
    sent = 0

    async def upstream() -> None:
        nonlocal sent
        try:
            while data := await reader.read(READ_SIZE):
                sent += len(data)
                await request.send_data(data)
        except (ConnectionError, OSError):
            pass
        request.send_eof()

    async def downstream() -> None:
        try:
            while True:
                kind, _, payload = await request.receive()
                if kind == p.DATA:
                    writer.write(payload)
                    await writer.drain()
                    request.consumed(len(payload))
                elif kind == p.EOF:
                    if writer.can_write_eof():
                        writer.write_eof()
                elif kind == p.END:
                    return
        except (ConnectionError, OSError):
            request.cancel()  # our client went away: the sandbox's side is closed too

    up = asyncio.ensure_future(upstream())
    try:
        await downstream()
    finally:
        if not up.done():
            up.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await up
        request.cancel()
        writer.close()
    return sent


__all__ = ["PortError", "open_tunnel", "splice"]
