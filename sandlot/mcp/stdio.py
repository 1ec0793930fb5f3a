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
import signal
import sys
from typing import TYPE_CHECKING

from .book import Book, Defaults
from .tools import build_server

if TYPE_CHECKING:
    from mcp.server.mcpserver import Context

    from ..remote import Client

log = logging.getLogger("sandlot.mcp")
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


async def serve(book: Book) -> None:
    """Serve one stdio connection with ``book``, then end what it made."""

    async def book_for(ctx: Context) -> Book:
        return book

    server = build_server(book_for)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in ENDING_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    try:
        await server.run_stdio_async()
    except asyncio.CancelledError:
        log.info("sandlot mcp: stopping on a signal")
    finally:
        for sig in ENDING_SIGNALS:
            loop.remove_signal_handler(sig)
        await asyncio.shield(_end(book))


async def _end(book: Book) -> None:
    await book.close()
    if book.client is not None:
        await book.client.aclose()


def run(defaults: Defaults, client: Client | None = None) -> None:
    """Serve stdin/stdout until the client goes away (blocking)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="sandlot mcp: %(message)s")
    book = Book(client, defaults, default_sandbox=True, kill_on_close=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(book))
