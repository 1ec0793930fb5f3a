"""The FastAPI application: routes, error answers, health, metrics, and the server's life.

Every error answers with a JSON :class:`~sandlot.api.ErrorBody` whose ``code`` is the stable
code of a :mod:`sandlot.errors` class; the SDK raises that same class again.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..api import Health
from ..errors import SandlotError
from ..supervisor import Supervisor
from . import (
    api_code,
    api_executions,
    api_files,
    api_keys,
    api_ports,
    api_pty,
    api_sandboxes,
    api_secrets,
    api_sessions,
    api_templates,
    api_volumes,
    health,
    watchdog,
)
from .deps import State
from .e2b import control as e2b_control
from .e2b.gateway import E2BGateway
from .http_errors import ERROR_RESPONSES, HTTP_CODES, error_response, status_of
from .mcp_front import McpFront
from .metrics import CONTENT_TYPE, Metrics
from .state import ServerSettings, ServerState

# FastAPI's body parameters make pydantic (2.12+) warn that an alias "has no effect" on the
# first request of each route: a false positive (pydantic issues 12356, 12362) that would
# greet every server log. Only that message is silenced.
warnings.filterwarnings("ignore", message="The 'alias' attribute with value", category=UserWarning)

MAX_JSON_BODY = 32 * 1024 * 1024  # JSON is parsed whole; raw uploads stream instead


def _is_port_proxy(path: str) -> bool:
    """``/v1/ports/<token>/...`` or ``/v1/sandboxes/<id>/ports/<port>/...``."""
    if path.startswith("/v1/ports/"):
        return True
    parts = path.split("/", 6)  # "", v1, sandboxes, id, ports, port, rest
    return len(parts) > 6 and parts[2] == "sandboxes" and parts[4] == "ports"


class BodyLimit:
    """Refuse a body larger than ``MAX_JSON_BODY`` before the app parses it; only raw
    uploads (``application/octet-stream``: files, stdin) and requests to an exposed port
    (whatever their type: the proxy streams them into the sandbox) go through unread."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if _is_port_proxy(scope.get("path", "")) or headers.get(b"content-type", b"").startswith(
            b"application/octet-stream"
        ):
            await self.app(scope, receive, send)  # raw uploads stream with back-pressure
            return
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_JSON_BODY:
            await _too_large()(scope, receive, send)
            return
        # A chunked body has no length up front: read it here (JSON is parsed whole anyway),
        # refuse it past the limit, else hand it on as one message.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_JSON_BODY:
                await _too_large()(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[Any], receive: Any) -> Any:
    async def replayed() -> Any:
        return messages.pop(0) if messages else await receive()

    return replayed


def _too_large() -> JSONResponse:
    return error_response(
        413, "file_too_large", f"a JSON body may be at most {MAX_JSON_BODY} bytes"
    )


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = Metrics()

    mcp = McpFront(settings) if settings.mcp else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await ServerState.start(settings, metrics)
        app.state.sandlot = state
        watching = watchdog.start(state)  # READY=1 to systemd: recovered, serving
        if mcp is not None:
            mcp.start()
        try:
            yield
        finally:
            if mcp is not None:
                await mcp.stop()
            watchdog.notify("STOPPING=1")
            if watching is not None:
                await Supervisor.current().stop(watching)
            await state.close()

    app = FastAPI(
        title="sandlot",
        version=__version__,
        summary="Disposable, isolated computers for AI agents",
        # WebSocket routes have no place in OpenAPI: named here, specified in docs/server.md.
        description="WebSocket endpoints (not listed below): `/v1/sandboxes/{id}/pty` starts a "
        "terminal, `/v1/sandboxes/{id}/pty/{pid}?offset=N` reattaches to a process; "
        "`/v1/sandboxes/{id}/ports/{port}/...` and `/v1/ports/{token}/...` proxy WebSockets "
        "to a sandbox's port. See docs/server.md.",
        lifespan=lifespan,
    )
    for module in (
        api_sandboxes,
        api_executions,
        api_files,
        api_code,
        api_keys,
        api_ports,
        api_pty,
        api_secrets,
        api_sessions,
        api_volumes,
        api_templates,
    ):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    if mcp is not None:
        app.router.routes.append(Route("/mcp", mcp, include_in_schema=False))
    _install_error_handlers(app)
    _install_health(app)
    app.add_middleware(metrics.Timing)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit)
    if settings.e2b:
        app.include_router(e2b_control.router)
        app.add_middleware(E2BGateway)  # outermost: its requests carry their own bounds
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SandlotError)
    async def sandlot_error(request: Request, exc: SandlotError) -> Response:
        return error_response(status_of(exc), exc.code, exc.message, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        fields = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return error_response(422, "invalid_argument", f"invalid request: {fields}", errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return error_response(500, "server_error", f"internal error: {type(exc).__name__}")


def _health_answer(report: Health) -> Response:
    status = 503 if report.status == "unhealthy" else 200
    return JSONResponse(report.model_dump(), status_code=status)


def _install_health(app: FastAPI) -> None:
    answers: dict[int | str, dict[str, Any]] = {
        503: {"model": Health, "description": "unhealthy: `problems` says why"}
    }

    @app.get("/healthz", response_model=Health, tags=["health"], responses=answers)
    async def healthz(state: State) -> Response:
        """Liveness: the event writer drains, the database answers, every background loop
        runs (503 when not, so that a supervisor restarts the server)."""
        return _health_answer(await health.check(state))

    @app.get("/readyz", response_model=Health, tags=["health"], responses=answers)
    async def readyz(state: State) -> Response:
        """Ready to serve: the same checks (the server is ready once it has started,
        adopted its sandboxes and can write its log)."""
        return _health_answer(await health.check(state))

    @app.get("/metrics", tags=["health"], responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def metrics(state: State) -> Response:
        """Prometheus text format."""
        counts = await asyncio.to_thread(state.records.count_sandboxes_by_state)
        rendered = state.metrics.render(counts, state.hub.health(), Supervisor.current())
        return Response(rendered, media_type=CONTENT_TYPE)
