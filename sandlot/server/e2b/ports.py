"""Any other port of a sandbox (``E2b-Sandbox-Port: N``, neither envd's nor the code
interpreter's): the request goes to that port on the sandbox's loopback through sandlot's
port proxy (:func:`sandlot.server.api_ports.proxy_http`), path and query as sent.

The credential is the sandbox's access token, as ``X-Access-Token`` or as E2B's
``e2b-traffic-access-token`` (the header E2B's proxy checks for user ports); neither, nor
the routing headers, reaches the sandbox's server. HTTP only: a WebSocket upgrade is not
passed on through these headers (sandlot's own ``/v1/sandboxes/{id}/ports/{port}`` is).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...errors import InvalidArgumentError, SandlotError
from ..api_ports import HOP_BY_HOP, proxy_http
from .access import sandbox_call
from .files import envd_error

TRAFFIC_HEADER = b"e2b-traffic-access-token"
ACCESS_HEADER = b"x-access-token"
# The gateway's own headers: the sandbox's server never sees them.
E2B_OWN = frozenset([ACCESS_HEADER, TRAFFIC_HEADER, b"e2b-sandbox-id", b"e2b-sandbox-port"])


async def forward(scope: Any, receive: Any, send: Any) -> None:
    headers = [(bytes(k).lower(), bytes(v)) for k, v in scope["headers"]]
    names = {k for k, _ in headers}
    if ACCESS_HEADER not in names:  # E2B's credential for user ports stands in
        headers += [(ACCESS_HEADER, v) for k, v in headers if k == TRAFFIC_HEADER][:1]
    request = Request({**scope, "headers": headers}, receive)
    response: Response
    try:
        call = await sandbox_call(request)
        if not 0 < call.port < 65536:
            raise InvalidArgumentError("E2b-Sandbox-Port must be a port number from 1 to 65535")
        response = await proxy_http(
            request,
            call.state,
            call.served,
            call.port,
            0,
            strip_authorization=False,
            drop=HOP_BY_HOP | E2B_OWN,
        )
    except SandlotError as exc:
        response = envd_error(exc)
    await response(scope, receive, send)
