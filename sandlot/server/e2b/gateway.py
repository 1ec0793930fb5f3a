"""Routing for the E2B gateway: a request that names a sandbox (the ``E2b-Sandbox-Id``
header, which the SDKs send when ``E2B_SANDBOX_URL`` points at this server) is the sandbox
side's, by the ``E2b-Sandbox-Port`` it names: envd's (:data:`ENVD_PORT`) or the code
interpreter's (:data:`INTERPRETER_PORT`). Everything else is sandlot's own API, where the
control plane's routes (:mod:`.control`) live beside ``/v1``.

The gateway sits outside the app's other middleware: its requests carry their own bounds
(Connect messages, uploads that stream), so the JSON body limit does not buffer them.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Router

from . import files, filesystem, interpreter, ports, process
from .access import ENVD_PORT, INTERPRETER_PORT

SANDBOX_HEADER = b"e2b-sandbox-id"
PORT_HEADER = b"e2b-sandbox-port"


def envd_router() -> Router:
    return Router(routes=[*process.routes, *filesystem.routes, *files.routes])


def interpreter_router() -> Router:
    return Router(routes=interpreter.routes)


class E2BGateway:
    """ASGI middleware: the sandbox side's requests to their router, the rest to ``app``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.envd = envd_router()
        self.interpreter = interpreter_router()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sandbox = port = None
        for name, value in scope["headers"]:
            if name == SANDBOX_HEADER:
                sandbox = value
            elif name == PORT_HEADER:
                port = value
        if sandbox is None:
            await self.app(scope, receive, send)
            return
        router: Any = self.interpreter if port == str(INTERPRETER_PORT).encode() else self.envd
        if port not in (None, str(ENVD_PORT).encode(), str(INTERPRETER_PORT).encode()):
            router = ports.forward  # another port of the sandbox: the port proxy's
        await router(scope, receive, send)
