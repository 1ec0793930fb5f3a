"""``/mcp`` on ``sandlot serve``: the same MCP tools over streamable HTTP, stateless.

Stateless, because every call names its sandbox: any request can go to any server process,
and nothing is kept per MCP session. The caller is checked before the MCP layer runs, as
``/v1`` checks it (``Authorization: Bearer <key>``; a missing or wrong key answers 401 once
the server has keys). While the server has no keys (loopback only), a request must also carry
a loopback ``Host`` and no ``Origin`` but a loopback one (the mcp package's DNS-rebinding
check): a web page the user visits cannot drive the key-less local server.

The tools run as the caller, through the SDK in remote mode against this very server
(``sandlot.Client`` on its loopback address, with the caller's key): tenants, limits, secret
masking and transcripts are exactly those of ``/v1``, and the tools are written once for both
transports. One :class:`~sandlot.mcp.book.Book` per key (at most :data:`MAX_BOOKS`, the least
recently used let go first) remembers the sandboxes the key's calls made or named.
Sandboxes made here live 1 h at most and end after 10 min unused, unless the call asks
otherwise (at most 24 h).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request

from ..errors import AuthenticationError, InvalidArgumentError
from ..remote import Client
from .book import Book, Defaults
from .tools import build_server

if TYPE_CHECKING:
    from ..server.state import ServerSettings

BOOK = "sandlot.mcp.book"  # where the endpoint leaves the caller's book in the ASGI scope
MAX_BOOKS = 256
LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
LOOPBACK_ORIGINS += [o.removesuffix(":*") for o in LOOPBACK_ORIGINS]


def own_url(settings: ServerSettings) -> str:
    """This server's address as seen from the same host (a wildcard bind is loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


class McpEndpoint:
    """The ASGI app at ``/mcp``. :meth:`running` goes in the server's lifespan."""

    def __init__(self, settings: ServerSettings, defaults: Defaults | None = None) -> None:
        self.settings = settings
        self.defaults = defaults or Defaults()
        self.books: OrderedDict[str, Book] = OrderedDict()
        self.server = build_server(self._book_for)
        # Host and Origin are checked here, before the key (see the module's docstring);
        # the transport still checks the content type.
        self.server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.manager = self.server.session_manager
        self.local_only = TransportSecurityMiddleware(
            TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=LOOPBACK_HOSTS,
                allowed_origins=LOOPBACK_ORIGINS,
            )
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run():
            try:
                yield
            finally:
                books, self.books = list(self.books.values()), OrderedDict()
                for book in books:
                    await book.close()
                    if book.client is not None:
                        await book.client.aclose()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from ..server.deps import get_principal
        from ..server.http_errors import error_response

        state = scope["app"].state.sandlot
        request = Request(scope)
        authorization = request.headers.get("authorization")
        if not await state.auth_required():
            refused = await self.local_only.validate_request(request)
            if refused is not None:
                await refused(scope, receive, send)
                return
        try:
            await get_principal(state, authorization)
        except AuthenticationError as exc:
            answer = error_response(401, exc.code, exc.message)
            answer.headers["WWW-Authenticate"] = "Bearer"
            await answer(scope, receive, send)
            return
        token = authorization[7:].strip() if authorization else None
        scope = {**scope, BOOK: self._book(token)}
        await self.manager.handle_request(scope, receive, send)

    def _book(self, token: str | None) -> Book:
        name = hashlib.sha256((token or "").encode()).hexdigest()
        book = self.books.get(name)
        if book is None:
            client = Client(url=own_url(self.settings), api_key=token)
            book = self.books[name] = Book(client, self.defaults)
            while len(self.books) > MAX_BOOKS:
                _, dropped = self.books.popitem(last=False)
                _let_go(dropped)
        self.books.move_to_end(name)
        return book

    async def _book_for(self, ctx: Context) -> Book:
        request = ctx.request_context.request
        book = getattr(request, "scope", {}).get(BOOK)
        if not isinstance(book, Book):
            raise InvalidArgumentError("this call did not come through sandlot's /mcp endpoint")
        return book


_letting_go: set[asyncio.Task[None]] = set()


def _let_go(book: Book) -> None:
    """Close an evicted book in the background (kept until done)."""

    async def close() -> None:
        await book.close()
        if book.client is not None:
            await book.client.aclose()

    task = asyncio.ensure_future(close())
    _letting_go.add(task)
    task.add_done_callback(_letting_go.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
