"""``/mcp`` loaded off the start-up path.

Importing the mcp package (sandlot.mcp.http) takes most of a second, which ``sandlot serve``
would spend before it binds its port. It is imported in a worker thread once the server runs
instead; the endpoint's session manager then runs in a task of its own until shutdown. A
request that comes before that waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from typing import TYPE_CHECKING, Any

from .http_errors import error_response

if TYPE_CHECKING:
    from .state import ServerSettings

log = logging.getLogger("sandlot.server")
READY_WAIT = 60.0  # seconds a first request waits for the endpoint to load


class McpFront:
    """The ASGI app at ``/mcp``: :meth:`start` and :meth:`stop` go in the server's lifespan."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.endpoint: Any = None
        self.missing = ""  # why there is no endpoint, once loading ended without one
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._serve())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def _serve(self) -> None:
        try:
            module = await asyncio.to_thread(importlib.import_module, "sandlot.mcp.http")
            endpoint = module.McpEndpoint(self.settings)
            async with endpoint.running():
                self.endpoint = endpoint
                self._ready.set()
                await self._stopping.wait()
        except ModuleNotFoundError as exc:
            if not str(exc.name).startswith("mcp"):
                raise
            log.info("no /mcp: the mcp package is not installed")
            self.missing = "the mcp package is not installed on this server"
        except Exception:
            log.exception("the MCP endpoint failed")
            self.missing = "the MCP endpoint failed (see the server's log)"
            raise
        finally:
            self.endpoint = None
            self._ready.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), READY_WAIT)
        endpoint = self.endpoint
        if endpoint is None:
            answer = error_response(404, "not_found", f"no /mcp: {self.missing or 'not loaded'}")
            await answer(scope, receive, send)
            return
        await endpoint(scope, receive, send)
