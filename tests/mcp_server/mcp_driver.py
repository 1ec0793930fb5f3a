"""Drives sandlot's MCP server with the official ``mcp`` package's client, from synchronous
tests: :class:`Driven` holds one ``mcp.Client`` open on an event loop of its own thread (the
client's task group must be entered and left by one task), so a module shares one connection,
as an MCP host keeps one for a whole conversation. Used by tests/mcp_server and
tests/security/test_mcp_attacks.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import CallToolResult, TextContent

CALL_TIMEOUT = 120.0


def stdio_server(*args: str) -> StdioServerParameters:
    """``sandlot mcp`` as an MCP host starts it (this test run's state folder inherited)."""
    return StdioServerParameters(
        command=sys.executable, args=["-m", "sandlot.cli", "mcp", *args], env=dict(os.environ)
    )


@contextlib.asynccontextmanager
async def http_server(url: str, key: str | None) -> AsyncIterator[Any]:
    """The streamable HTTP transport to ``url`` with ``key`` as the bearer token (its HTTP
    client closed with it: a keep-alive connection left open would hold up the server's
    graceful stop)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


class Driven:
    """An ``mcp.Client`` connected on a thread of its own, called from synchronous tests."""

    def __init__(self, make: Callable[[], Client]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._stop: asyncio.Event | None = None
        self.client: Client | None = None
        asyncio.run_coroutine_threadsafe(self._ready(), self.loop).result(CALL_TIMEOUT)
        self._held = asyncio.run_coroutine_threadsafe(self._hold(make), self.loop)
        while self.client is None:
            if self._held.done():
                self._held.result()  # raises why it could not connect
            threading.Event().wait(0.01)

    async def _ready(self) -> None:
        self._stop = asyncio.Event()

    async def _hold(self, make: Callable[[], Client]) -> None:
        assert self._stop is not None
        async with make() as client:
            self.client = client
            await self._stop.wait()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)

    def call(self, tool: str, **arguments: Any) -> CallToolResult:
        assert self.client is not None
        result: CallToolResult = self.run(self.client.call_tool(tool, arguments))
        return result

    def tools(self) -> list[Any]:
        assert self.client is not None
        return list(self.run(self.client.list_tools()).tools)

    def close(self) -> None:
        """Disconnect (the stdio server's process ends) and stop the thread."""
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._held.result(CALL_TIMEOUT)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def text(result: CallToolResult) -> str:
    """Every text block of a result, joined."""
    return "\n".join(b.text for b in result.content if isinstance(b, TextContent))


def value(result: CallToolResult, field: str) -> str:
    """``field: value`` from a result's text (e.g. the sandbox_id create_sandbox returns)."""
    for line in text(result).splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in {text(result)!r}")


def ok(result: CallToolResult) -> str:
    assert not result.is_error, text(result)
    return text(result)


def refused(result: CallToolResult, code: str) -> str:
    """A tool error whose message starts with sandlot's ``code``."""
    assert result.is_error, text(result)
    assert text(result).startswith(code + ":"), text(result)
    return text(result)
