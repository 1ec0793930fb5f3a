"""Reading the server's binary event stream (``application/x-sandlot-frames``; the format is
specified in :mod:`sandlot.server.frames`) from an aiohttp response.

The server is trusted no more than the network: a frame's lengths are checked against each
other and against ``MAX_FRAME`` before anything is read for it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ProtocolError

if TYPE_CHECKING:
    import aiohttp

MEDIA_TYPE = "application/x-sandlot-frames"
LENGTH = struct.Struct(">I")
HEAD = struct.Struct(">QBB")  # seq, kind length, execution length
MAX_FRAME = 64 * 1024 * 1024
OUTPUT = frozenset({"stdout", "stderr"})


@dataclass(frozen=True, slots=True)
class FrameEvent:
    seq: int
    kind: str
    execution: str | None
    payload: bytes  # output's bytes, or the event's JSON value

    @property
    def output(self) -> bytes:
        """The bytes of a stdout/stderr event."""
        return self.payload

    @property
    def value(self) -> Any:
        """The JSON value of any other event."""
        try:
            return orjson.loads(self.payload)
        except ValueError:
            raise ProtocolError(
                f"malformed {self.kind} event from the server: {self.payload[:200]!r}"
            ) from None


async def frames(response: aiohttp.ClientResponse) -> AsyncIterator[FrameEvent]:
    """The events of a frames body, keep-alives skipped, until the body ends. A body cut off
    inside a frame ends like one cut between frames: the caller resumes after the last
    event it got."""
    content = response.content
    while True:
        try:
            (length,) = LENGTH.unpack(await content.readexactly(LENGTH.size))
            if not length:
                continue  # a keep-alive
            if not HEAD.size <= length <= MAX_FRAME:
                raise ProtocolError(f"malformed frame from the server: length {length}")
            seq, kind_size, execution_size = HEAD.unpack(await content.readexactly(HEAD.size))
            size = length - HEAD.size - kind_size - execution_size
            if size < 0:
                raise ProtocolError("malformed frame from the server: its names overrun it")
            names = await content.readexactly(kind_size + execution_size)
            # Read apart from the names: 1 MiB of output is not copied once more to cut it.
            payload = await content.readexactly(size) if size else b""
        except asyncio.IncompleteReadError:
            return
        kind = names[:kind_size].decode("ascii", "replace")
        execution = names[kind_size:].decode("ascii", "replace") or None
        yield FrameEvent(seq, kind, execution, payload)
