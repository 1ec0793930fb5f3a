"""stdin and stdout for the stdio transport, read and written on the event loop.

The mcp package's ``stdio_server`` reads each line and writes each message through a worker
thread (``anyio.wrap_file``): three thread hand-offs per call, a large share of the budget of
an MCP round trip over the SDK's own (benchmarks/bench_mcp.py). Given explicit streams it uses
them as they are; these are asyncio pipes over private duplicates of descriptors 0 and 1.
As the package does for its own, descriptor 1 then points at stderr and 0 at /dev/null, so
nothing else in the process (a stray print, a child process) can write to the protocol's
stream or take its input. Either is put back at the end.

A stdin that is not a pipe, socket or terminal (a regular file) gets ``None``: the caller
falls back to the package's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

MAX_LINE = 64 * 1024 * 1024  # one JSON-RPC message; a longer one is answered as a parse error


class Lines:
    """``async for line in stdin`` (text lines, newline kept), as stdio_server reads them."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    def __aiter__(self) -> Lines:
        return self

    async def __anext__(self) -> str:
        try:
            line = await self.reader.readline()
        except ValueError:  # longer than MAX_LINE: dropped; an invalid message says so
            return "{\n"
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", "replace")


class Output:
    """``await stdout.write(text)`` and ``await stdout.flush()``."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def write(self, text: str) -> None:
        self.writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self.writer.drain()


@contextlib.asynccontextmanager
async def stdio() -> AsyncIterator[tuple[Any, Any] | None]:
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    reader = asyncio.StreamReader(limit=MAX_LINE)
    try:
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
        )
    except (OSError, ValueError):  # not a pipe, socket or terminal
        for fd in (wire_in, wire_out, saved_in, saved_out):
            with contextlib.suppress(OSError):
                os.close(fd)
        yield None
        return
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        yield Lines(reader), Output(writer)
    finally:
        with contextlib.suppress(Exception):
            await writer.drain()
        writer.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
