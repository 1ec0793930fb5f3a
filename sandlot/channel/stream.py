"""A byte stream with one interface over two transports: an asyncio socket, or one
connection carried by the agent's channel (a :class:`~sandlot.channel.connection.Request`).

The egress proxy and the callback bridge are written against :class:`ByteStream`, so they
serve a sandbox's connections and a test's plain sockets with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..agent import protocol as p
from ..errors import SandlotError
from .connection import Request

READ_SIZE = p.MAX_DATA


class StreamTooLong(Exception):
    """``readuntil`` found no separator within its limit."""


class ByteStream:
    """Buffered reads (``read``, ``readexactly``, ``readuntil``) over a transport's ``_recv``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False

    async def _recv(self) -> bytes:  # b"" at end of stream
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting while the other side is behind (flow control)."""
        raise NotImplementedError

    def write_eof(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def _fill(self) -> bool:
        if self._eof:
            return False
        data = await self._recv()
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    async def read(self, n: int = READ_SIZE) -> bytes:
        """Up to ``n`` bytes; b"" at end of stream."""
        if not self._buffer:  # the common case when copying: hand the chunk on, uncopied
            if self._eof:
                return b""
            data = await self._recv()
            if not data:
                self._eof = True
                return b""
            if len(data) > n:
                self._buffer += memoryview(data)[n:]
                return data[:n]
            return data
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if not await self._fill():
                raise asyncio.IncompleteReadError(bytes(self._buffer), n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readuntil(self, separator: bytes, limit: int) -> bytes:
        """Bytes up to and including ``separator``; StreamTooLong past ``limit`` bytes,
        IncompleteReadError at end of stream."""
        start = 0
        while True:
            found = self._buffer.find(separator, start)
            if found >= 0:
                end = found + len(separator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > limit:
                raise StreamTooLong(f"no {separator!r} within {limit} bytes")
            start = max(0, len(self._buffer) - len(separator) + 1)
            if not await self._fill():
                raise asyncio.IncompleteReadError(bytes(self._buffer), None)

    def take_buffered(self) -> bytes:
        """What was read ahead and not yet returned (to forward it before splicing)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class SocketStream(ByteStream):
    """A ByteStream over an asyncio StreamReader/StreamWriter pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer

    async def _recv(self) -> bytes:
        try:
            return await self.reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class TunnelStream(ByteStream):
    """A ByteStream over one connection the agent carries (ops ``connect`` and ``accepted``):
    DATA from the sandbox side is read, our writes go to it under the agent's credit."""

    def __init__(self, request: Request) -> None:
        super().__init__()
        self.request = request

    async def _recv(self) -> bytes:
        while True:
            try:
                kind, _, payload = await self.request.receive()
            except SandlotError:  # the agent ended the connection, or the channel dropped
                return b""
            if kind == p.DATA:
                self.request.consumed(len(payload))
                return payload
            if kind in (p.EOF, p.END):
                return b""

    async def write(self, data: bytes) -> None:
        await self.request.send_data(data)

    def write_eof(self) -> None:
        self.request.send_eof()

    async def aclose(self) -> None:
        self.request.cancel()


async def pipe(source: ByteStream, target: ByteStream, limit: int | None = None) -> int:
    """Copy ``source`` to ``target`` until end of stream, then half-close ``target``;
    the bytes copied. With ``limit``, only that many are copied and the rest is read and
    dropped. A failing side ends the copy."""
    copied = 0
    try:
        while data := await source.read():
            if limit is not None and len(data) > limit - copied:
                data = data[: limit - copied]
                if not data:
                    continue
            await target.write(data)
            copied += len(data)
    except (ConnectionError, OSError, SandlotError):
        pass
    target.write_eof()
    return copied


async def splice_streams(a: ByteStream, b: ByteStream) -> tuple[int, int]:
    """Copy both ways until both have ended; (bytes a->b, bytes b->a). Closes both."""
    try:
        forward, backward = await asyncio.gather(pipe(a, b), pipe(b, a))
    finally:
        await a.aclose()
        await b.aclose()
    return forward, backward
