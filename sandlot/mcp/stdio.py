"""``sandlot mcp``: the MCP server over stdin/stdout, for one client (an MCP host that starts
it as a subprocess).

The connection has one :class:`~sandlot.mcp.book.Book`: a call that names no sandbox gets
the connection's default one, made on first use. When the connection ends (end of input,
SIGTERM, SIGHUP or Ctrl-C), every sandbox made through it is killed and every session sandbox
detached (checkpointed) before the process exits. The sandboxes' own lifetimes (1 h by
default) hold even if the process is killed outright.

Only the protocol goes to stdout: while serving, the mcp package points file descriptor 1
at stderr (so does everything the process starts), and logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

from . import pipes
from .book import Book, Defaults
from .tools import build_server

if TYPE_CHECKING:
    from mcp.server.mcpserver import Context

    from ..remote import Client

log = logging.getLogger("sandlot.mcp")
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
STOP_SECONDS = 10.0  # to end the sandboxes on a signal before the process exits anyway


async def serve(book: Book) -> None:
    """Serve one stdio connection with ``book``, then end what it made."""

    async def book_for(ctx: Context) -> Book:
        return book

    server = build_server(book_for)
    loop = asyncio.get_running_loop()
    for sig in ENDING_SIGNALS:
        loop.add_signal_handler(sig, _stop, book, sig)
    try:
        async with pipes.stdio() as streams:
            if streams is None:
                await server.run_stdio_async()
            else:
                await _run(server, *streams)
    finally:
        for sig in ENDING_SIGNALS:
            loop.remove_signal_handler(sig)
        await asyncio.shield(_end(book))


async def _run(server: MCPServer, stdin: Any, stdout: Any) -> None:
    """What ``server.run_stdio_async()`` does, over the event loop's pipes."""
    lowlevel = server._lowlevel_server  # as the mcp package's own Client reaches it
    async with stdio_server(stdin, stdout) as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


_stopping: set[asyncio.Task[None]] = set()


def _stop(book: Book, sig: int) -> None:
    """A signal: end the sandboxes, then the process. Cancelling the server would not do
    with the mcp package's own transport (a stdin that is a regular file): it waits for the
    thread that reads stdin, which waits for input that may never come."""

    async def stop() -> None:
        log.info("sandlot mcp: stopping on signal %d", sig)
        try:
            await asyncio.wait_for(_end(book), STOP_SECONDS)
        finally:
            os._exit(128 + sig)

    if not _stopping:
        _stopping.add(asyncio.ensure_future(stop()))


async def _end(book: Book) -> None:
    await book.close()
    if book.client is not None:
        await book.client.aclose()


def run(defaults: Defaults, client: Client | None = None) -> None:
    """Serve stdin/stdout until the client goes away (blocking)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="sandlot mcp: %(message)s")
    book = Book(client, defaults, default_sandbox=True, kill_on_close=True)
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        runner.run(serve(book))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (the server extra has it, as ``sandlot serve`` uses it): its
    pipes and callbacks cut the protocol's own share of a round trip."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
