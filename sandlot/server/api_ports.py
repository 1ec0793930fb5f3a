"""Exposed ports through the server: ``POST /v1/sandboxes/{id}/ports/{port}`` names a URL,
and everything under it is reverse-proxied (HTTP/1.1 and WebSocket) to that port on the
sandbox's loopback, riding the agent's channel (op ``connect``): the sandbox's own network
stays off, and the server opens no port of its own per sandbox.

Two ways in: the tenant's key (``/v1/sandboxes/{id}/ports/{port}/...``), or a signed URL
(``/v1/ports/{token}/...``) whose token is the credential for one port until it expires
(see :mod:`.signing`). The key never reaches the sandbox. Bodies stream both ways under the
channel's credit; nothing is held whole in memory. A sandbox that ends fails its tunnels
(the channel closes), which cuts its proxied responses and closes its WebSockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import h11
from fastapi import APIRouter, FastAPI, Path, Query, Request, WebSocket
from prometheus_client import Counter
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..agent import protocol as p
from ..channel import Request as Tunnel
from ..channel.tunnel import open_tunnel, splice
from ..errors import InvalidArgumentError, PortError, SandboxClosedError, SandlotError
from .deps import Caller, State, get_principal
from .http_errors import error_response, status_of
from .signing import MAX_EXPIRES_IN, Grant, Signer
from .state import Principal, Served, ServerState

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

router = APIRouter(tags=["ports"])
log = logging.getLogger("sandlot.server")
# Set in a request's task when the proxy ends it early on purpose (see _ExpectedEnds).
_on_purpose: ContextVar[bool] = ContextVar("sandlot_port_ended_on_purpose", default=False)
EXPECTED_ENDS = frozenset(
    [
        "ASGI callable returned without completing handshake.",
        "ASGI callable returned without completing response.",
    ]
)


class _ExpectedEnds(logging.Filter):
    """uvicorn logs at ERROR level two endings that the proxy chooses: an upgrade refused
    with a real HTTP answer (401, 404, 502: uvicorn still calls the handshake incomplete),
    and an answer cut short because the sandbox or its server went away mid-way (a cut,
    never a clean end, tells the client it did not get all of it). Only those are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_on_purpose.get() and record.getMessage() in EXPECTED_ENDS)


logging.getLogger("uvicorn.error").addFilter(_ExpectedEnds())

SANDBOX_PORT = "/v1/sandboxes/{sandbox_id}/ports/{port}"
SIGNED = "/v1/ports/{token}"
# Path segments before the proxied part: "", v1, sandboxes, {id}, ports, {port} / "", v1,
# ports, {token}.
SANDBOX_SEGMENTS, SIGNED_SEGMENTS = 6, 4
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_HEAD = 64 * 1024  # an answer's status line and headers
MAX_MESSAGE = 16 * 1024 * 1024  # a WebSocket message from the sandbox (uvicorn's own limit)

# Never forwarded (RFC 9110 7.6.1), plus what this hop sets itself.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-connection proxy-authenticate proxy-authorization te "
    b"trailer trailers transfer-encoding upgrade host expect".split()
)
WEBSOCKET_OWN = frozenset(
    b"sec-websocket-key sec-websocket-version sec-websocket-extensions sec-websocket-accept "
    b"sec-websocket-protocol".split()
)
# uvicorn adds its own; two of each would confuse clients.
RESPONSE_OWN = frozenset([b"date", b"server"])

PortNumber = Annotated[int, Path(ge=1, le=65535, description="the port inside the sandbox")]
ExpiresIn = Annotated[
    int | None,
    Query(
        ge=1,
        le=MAX_EXPIRES_IN,
        description="also make a signed URL, valid this many seconds, that needs no key",
    ),
]


class ExposedPort(BaseModel):
    url: str = Field(description="reaches the port with the tenant's key (HTTP and WebSocket)")
    port: int
    signed_url: str | None = Field(
        None, description="reaches the port without a key until `expires_at` (with `expires_in`)"
    )
    expires_at: datetime | None = None


# -- expose ---------------------------------------------------------------------------------


@router.post(SANDBOX_PORT, response_model=ExposedPort, response_model_exclude_none=True)
async def expose(
    sandbox_id: str,
    port: PortNumber,
    request: Request,
    state: State,
    caller: Caller,
    expires_in: ExpiresIn = None,
) -> ExposedPort:
    """The URL of ``port`` inside the sandbox: under it, ``.../ports/{port}/{path}``, every
    method and WebSocket upgrades are proxied to the port with the caller's key (which is
    not passed on). With ``expires_in``, also a signed URL, ``/v1/ports/{token}/{path}``,
    that is its own credential until ``expires_at``. The proxied paths answer what the
    sandbox's server answers, so they are not operations of this document; one that finds
    nothing listening answers 502 ``port_error`` (see [ports.md](ports.md))."""
    await state.get(caller, sandbox_id)
    base = str(request.base_url).rstrip("/")  # from the Host header the caller used
    exposed = ExposedPort(
        url=f"{base}/v1/sandboxes/{quote(sandbox_id, safe='')}/ports/{port}/", port=port
    )
    if expires_in is not None:
        expires = int(time.time()) + expires_in
        token = _signer(request.app, state).sign(Grant(sandbox_id, port, caller.tenant, expires))
        exposed.signed_url = f"{base}/v1/ports/{token}/"
        exposed.expires_at = datetime.fromtimestamp(expires, UTC)
    return exposed


# A browser (which has a signed URL, not a key) at /v1/ports/{token} needs the slash for its
# relative links to resolve under it. The keyed path without it stays POST only.
@router.api_route(SIGNED, methods=["GET", "HEAD"], include_in_schema=False)
async def add_slash(token: str, request: Request) -> Response:
    query = request.scope.get("query_string", b"").decode("latin-1")
    location = quote(token, safe="") + "/" + (f"?{query}" if query else "")
    return Response(status_code=307, headers={"Location": location})


# -- HTTP -------------------------------------------------------------------------------------


@router.api_route(SANDBOX_PORT + "/{path:path}", methods=METHODS, include_in_schema=False)
async def proxy(
    sandbox_id: str, port: PortNumber, path: str, request: Request, state: State, caller: Caller
) -> Response:
    served = await state.get(caller, sandbox_id)
    return await proxy_http(
        request, state, served, port, SANDBOX_SEGMENTS, strip_authorization=True
    )


@router.api_route(SIGNED + "/{path:path}", methods=METHODS, include_in_schema=False)
async def signed_proxy(token: str, path: str, request: Request, state: State) -> Response:
    served, grant = await _granted(request, state, token)
    return await proxy_http(
        request, state, served, grant.port, SIGNED_SEGMENTS, strip_authorization=False
    )


async def proxy_http(
    request: Request,
    state: ServerState,
    served: Served,
    port: int,
    segments: int,
    strip_authorization: bool,
    drop: frozenset[bytes] = HOP_BY_HOP,
) -> Response:
    """Pass ``request`` on to ``port`` of the sandbox (also for the E2B gateway): the
    path after its first ``segments`` segments, the headers without those in ``drop``."""
    headers = _forward_headers(request, port, segments, strip_authorization, drop)
    declared = request.headers.get("content-length")
    if declared is None and "transfer-encoding" in request.headers:
        headers.append((b"transfer-encoding", b"chunked"))  # we re-frame the body ourselves
    headers.append((b"connection", b"close"))  # one tunnel per request
    try:
        tunnel = await open_tunnel(served.live.channel, port)
    except PortError as exc:
        return _bad_gateway(exc)
    exchange = _Exchange(tunnel, port, _port_bytes(request.app, state))
    try:
        target = _target(request.scope, segments)
        await exchange.send(h11.Request(method=request.method, target=target, headers=headers))
        exchange.start_upload(request)
        head = await exchange.head()
    except BaseException as exc:
        exchange.close()
        if isinstance(exc, PortError):
            return _bad_gateway(exc)
        if isinstance(exc, h11.LocalProtocolError):  # e.g. a target h11 will not write
            raise InvalidArgumentError(f"this request cannot be passed on: {exc}") from None
        raise
    if head is None:  # the client left: nobody reads this
        exchange.close()
        return Response(status_code=204)
    return _Streamed(exchange, head)


class _Exchange:
    """One proxied request: its tunnel, the HTTP/1.1 client state (h11) and the upload."""

    def __init__(self, tunnel: Tunnel, port: int, counter: Counter) -> None:
        self.tunnel = tunnel
        self.port = port
        self.counter = counter
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.sent = self.received = 0
        self.eof = False
        self.upload: asyncio.Future[None] | None = None
        self.watcher: asyncio.Future[None] | None = None
        self.closed = False

    async def send(self, event: h11.Event) -> None:
        data = self.http.send(event)
        if data:
            self.sent += len(data)
            await self.tunnel.send_data(data)

    def start_upload(self, request: Request) -> None:
        async def upload() -> None:
            async for chunk in request.stream():
                if chunk:
                    await self.send(h11.Data(data=chunk))
            await self.send(h11.EndOfMessage())

        self.upload = asyncio.ensure_future(upload())
        self.watcher = asyncio.ensure_future(self._watch(request.receive))

    async def _watch(self, receive: Receive) -> None:
        """Returns once the client has gone. Reads nothing while the upload still does."""
        assert self.upload is not None
        try:
            await asyncio.shield(self.upload)
        except ClientDisconnect:
            return
        except Exception:
            pass  # the tunnel failed: the answer's side sees it too
        while (await receive())["type"] != "http.disconnect":
            pass

    async def head(self) -> h11.Response | None:
        """The answer's status and headers; None if the client left first."""
        assert self.watcher is not None
        reading = asyncio.ensure_future(self._head())
        racing: set[asyncio.Future[Any]] = {reading, self.watcher}
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if reading.done():
            return reading.result()
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading
        return None

    async def _head(self) -> h11.Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):  # 100 Continue: not ours
                raise PortError(
                    f"the server on port {self.port} in the sandbox sent no HTTP answer",
                    port=self.port,
                )

    async def next_event(self) -> h11.Event:
        try:
            while True:
                event = self.http.next_event()
                if event is not h11.NEED_DATA:
                    assert not isinstance(event, type)  # PAUSED: only after a whole answer
                    return event
                if self.eof:
                    raise h11.RemoteProtocolError("the connection ended", 502)
                await self._fill()
        except h11.RemoteProtocolError as exc:
            raise PortError(
                f"the server on port {self.port} in the sandbox broke off its answer: {exc}",
                port=self.port,
            ) from None

    async def _fill(self) -> None:
        kind, _, payload = await self.tunnel.receive()  # PortError, SandboxClosedError
        if kind == p.DATA:
            self.received += len(payload)
            self.http.receive_data(payload)  # h11 copies it: the credit can go back now
            self.tunnel.consumed(len(payload))
        elif kind in (p.EOF, p.END):
            self.eof = True
            self.http.receive_data(b"")

    async def body(self, send: Send) -> None:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                await send(
                    {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                )
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self.upload, self.watcher):
            if task is not None and not task.done():
                task.cancel()
        self.tunnel.cancel()  # the agent closes its socket to the port
        self.counter.labels("to_sandbox").inc(self.sent)
        self.counter.labels("from_sandbox").inc(self.received)


class _Streamed(Response):
    """The sandbox's answer, passed on as it arrives; cut short if the client leaves."""

    def __init__(self, exchange: _Exchange, head: h11.Response) -> None:
        self.exchange = exchange
        self.status_code = head.status_code
        self.background = None
        self.raw_headers = _filtered(head.headers, HOP_BY_HOP | RESPONSE_OWN)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = self.exchange
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            pumping = asyncio.ensure_future(exchange.body(send))
            assert exchange.watcher is not None
            await asyncio.wait({pumping, exchange.watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not pumping.done():  # the client left
                pumping.cancel()
                with contextlib.suppress(BaseException):
                    await pumping
                return
            try:
                pumping.result()
            except (PortError, SandboxClosedError) as exc:
                # Returning without the end of the body makes the server drop the
                # connection: the client sees a cut answer, not a complete one.
                log.info("proxied answer from port %d cut short: %s", exchange.port, exc)
                _on_purpose.set(True)
        finally:
            exchange.close()


# -- WebSocket --------------------------------------------------------------------------------


@router.websocket(SANDBOX_PORT + "/{path:path}")
async def websocket_proxy(websocket: WebSocket, sandbox_id: str, port: str, path: str) -> None:
    state: ServerState = websocket.app.state.sandlot
    try:
        caller = await get_principal(state, websocket.headers.get("authorization"))
        number = _port_number(port)
        served = await state.get(caller, sandbox_id)
    except SandlotError as exc:
        await _deny(websocket, exc)
        return
    await _relay(websocket, state, served, number, SANDBOX_SEGMENTS, strip_authorization=True)


@router.websocket(SIGNED + "/{path:path}")
async def signed_websocket_proxy(websocket: WebSocket, token: str, path: str) -> None:
    state: ServerState = websocket.app.state.sandlot
    try:
        served, grant = await _granted(websocket, state, token)
    except SandlotError as exc:
        await _deny(websocket, exc)
        return
    await _relay(websocket, state, served, grant.port, SIGNED_SEGMENTS, strip_authorization=False)


async def _relay(
    websocket: WebSocket,
    state: ServerState,
    served: Served,
    port: int,
    segments: int,
    strip_authorization: bool,
) -> None:
    """Accept the client once the sandbox's server has accepted us, then pass messages both
    ways until either side closes; the close code goes across too."""
    try:
        tunnel = await open_tunnel(served.live.channel, port)
    except SandlotError as exc:
        await _deny(websocket, exc)
        return
    # The client library dials a socket; its other end is spliced onto the tunnel.
    near, far = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=far)
    splicing = asyncio.ensure_future(splice(tunnel, reader, writer))
    counter = _port_bytes(websocket.app, state)
    try:
        upstream = await _dial(websocket, near, port, segments, strip_authorization)
        if upstream is None:
            return
        await websocket.accept(subprotocol=upstream.subprotocol)
        await _pass_messages(websocket, upstream, counter, served)
    finally:
        near.close()
        splicing.cancel()
        await asyncio.gather(splicing, return_exceptions=True)
        tunnel.cancel()


async def _dial(
    websocket: WebSocket, sock: socket.socket, port: int, segments: int, strip_authorization: bool
) -> ClientConnection | None:
    """The WebSocket to the sandbox's server over ``sock``, with the client's headers and
    subprotocols; None once the client has been refused (with the sandbox's own answer if
    its server refused)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    headers = _forward_headers(
        websocket, port, segments, strip_authorization, HOP_BY_HOP | WEBSOCKET_OWN
    )
    uri = f"ws://127.0.0.1:{port}{_target(websocket.scope, segments).decode('latin-1')}"
    try:
        return await connect(
            uri,
            sock=sock,
            additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            subprotocols=websocket.scope.get("subprotocols") or None,
            compression=None,  # loopback: compressing would only cost CPU
            user_agent_header=None,  # the client's own is passed on
            proxy=None,
            ping_interval=None,
            max_size=MAX_MESSAGE,
            open_timeout=30,
        )
    except InvalidStatus as exc:  # the sandbox's server refused: its answer goes back
        answer = exc.response
        await _deny_with(
            websocket,
            Response(
                answer.body or b"",
                status_code=answer.status_code,
                media_type=answer.headers.get("Content-Type"),
            ),
        )
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        await _deny(
            websocket,
            PortError(f"no WebSocket answer from port {port} in the sandbox: {exc}", port=port),
        )
    return None


async def _pass_messages(
    websocket: WebSocket, upstream: ClientConnection, counter: Counter, served: Served
) -> None:
    """Both directions at once, until either side closes; then the other is closed too."""
    tasks = [
        asyncio.ensure_future(_from_client(websocket, upstream, counter)),
        asyncio.ensure_future(_to_client(websocket, upstream, counter, served)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await upstream.close()


async def _from_client(websocket: WebSocket, upstream: ClientConnection, counter: Counter) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(_sendable(message.get("code", 1000)), message.get("reason") or "")
            return
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        counter.labels("to_sandbox").inc(_size(data))
        await upstream.send(data)


async def _to_client(
    websocket: WebSocket, upstream: ClientConnection, counter: Counter, served: Served
) -> None:
    """The sandbox's messages, then its close code; a connection lost without a close frame
    closes the client with 1001 (the sandbox ended) or 1011 (its server went away)."""
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        async for data in upstream:
            counter.labels("from_sandbox").inc(_size(data))
            if isinstance(data, str):
                await websocket.send_text(data)
            else:
                await websocket.send_bytes(data)
    code, reason = upstream.close_code, upstream.close_reason or ""
    if code is None or code == 1006:  # no close frame: the connection was lost
        ended = served.live.channel.closed is not None
        code = 1001 if ended else 1011
        reason = "the sandbox has ended" if ended else "the server in the sandbox went away"
    with contextlib.suppress(Exception):
        await websocket.close(_sendable(code), reason)


def _sendable(code: int) -> int:
    """A close code that may be sent on (1005, 1006 and 1015 only describe a closing)."""
    return 1000 if code in (1005, 1006, 1015) or not 1000 <= code <= 4999 else code


def _size(data: str | bytes) -> int:
    return len(data.encode()) if isinstance(data, str) else len(data)


async def _deny(websocket: WebSocket, error: SandlotError) -> None:
    status = 502 if isinstance(error, PortError) else status_of(error)
    await _deny_with(websocket, error_response(status, error.code, error.message, **error.details))


async def _deny_with(websocket: WebSocket, response: Response) -> None:
    """Refuse an upgrade with a real HTTP answer where the server can send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
        _on_purpose.set(True)
    else:
        await websocket.close(1008)


# -- shared ---------------------------------------------------------------------------------


def _port_number(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise InvalidArgumentError(f"port must be a number from 1 to 65535, got {raw!r}")
    return int(raw)


def _signer(app: FastAPI, state: ServerState) -> Signer:
    signer: Signer | None = getattr(app.state, "port_signer", None)
    if signer is None:
        signer = app.state.port_signer = Signer(state.settings.resolved_home())
    return signer


async def _granted(conn: HTTPConnection, state: ServerState, token: str) -> tuple[Served, Grant]:
    grant = _signer(conn.app, state).verify(token)
    # The token stands for its tenant: another tenant's sandbox is not found, as ever.
    served = await state.get(Principal(grant.tenant, admin=False), grant.sandbox_id)
    return served, grant


def _port_bytes(app: FastAPI, state: ServerState) -> Counter:
    counter: Counter | None = getattr(app.state, "port_bytes", None)
    if counter is None:
        counter = app.state.port_bytes = Counter(
            "sandlot_port_bytes",
            "Bytes through exposed ports (HTTP as sent on the wire, WebSocket as messages)",
            ["direction"],
            registry=state.metrics.registry,
        )
    return counter


def _target(scope: Scope, segments: int) -> bytes:
    """What follows ``/ports/{port}`` (or ``/ports/{token}``), as the client encoded it, with
    the query. A run of leading slashes becomes one: ``url + "/x"`` on a URL that ends in a
    slash means ``/x``."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    root = scope.get("root_path", "").encode()
    if root and raw.startswith(root):
        raw = raw[len(root) :]
    parts = raw.split(b"/", segments)
    rest = parts[segments] if len(parts) > segments else b""
    target = b"/" + rest.lstrip(b"/")
    query: bytes = scope.get("query_string", b"")
    return target + b"?" + query if query else target


def _forward_headers(
    conn: HTTPConnection,
    port: int,
    segments: int,
    strip_authorization: bool,
    drop: frozenset[bytes],
) -> list[tuple[bytes, bytes]]:
    """The client's headers for the sandbox's server: without hop-by-hop ones, without the
    sandlot key, with ``Host`` its own and the ``X-Forwarded-*`` that say where it is seen."""
    headers = _filtered(conn.scope["headers"], drop)
    headers = [(k, v) for k, v in headers if not k.startswith(b"x-forwarded-")]
    if strip_authorization:
        headers = [(k, v) for k, v in headers if k != b"authorization"]
    else:  # a signed URL's caller may authenticate to the app itself, but never with our key
        headers = [(k, v) for k, v in headers if k != b"authorization" or not _sandlot_key(v)]
    raw_path: bytes = conn.scope.get("raw_path") or conn.scope["path"].encode()
    prefix = b"/".join(raw_path.split(b"/", segments)[:segments])
    forwarded = [
        (b"host", f"127.0.0.1:{port}".encode()),
        (b"x-forwarded-proto", conn.url.scheme.replace("ws", "http").encode()),
        (b"x-forwarded-prefix", prefix),
    ]
    if "host" in conn.headers:
        forwarded.append((b"x-forwarded-host", conn.headers["host"].encode("latin-1")))
    if conn.client is not None:
        forwarded.append((b"x-forwarded-for", conn.client.host.encode()))
    return forwarded + headers


def _filtered(headers: Any, drop: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """Headers without those in ``drop`` and those the ``Connection`` header names."""
    pairs = [(bytes(k).lower(), bytes(v)) for k, v in headers]
    named = {
        token.strip() for k, v in pairs if k == b"connection" for token in v.lower().split(b",")
    }
    return [(k, v) for k, v in pairs if k not in drop and k not in named]


def _sandlot_key(value: bytes) -> bool:
    return value.removeprefix(b"Bearer ").strip().startswith(b"sl_")


def _bad_gateway(error: PortError) -> Response:
    return error_response(502, error.code, error.message, **error.details)
