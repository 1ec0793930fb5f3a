"""The callback bridge, host side: a sandbox's HTTP requests to ``SANDLOT_BRIDGE_URL``, checked
against a small policy and forwarded to one configured target with credentials the sandbox
never sees.

The agent accepts each connection inside the sandbox and carries it over its channel; here it is
a :class:`~sandlot.channel.stream.ByteStream`. :meth:`Bridge.serve` parses HTTP/1.1 from it with
h11 (keep-alive, pipelining, chunked bodies) and answers each request in this order:

1. token: ``Authorization: Bearer <token>`` or ``X-Sandlot-Bridge-Token: <token>``, else 401;
2. path: origin-form, printable ASCII, at most 8 KiB and 256 segments, no backslash or ``#``,
   and no segment that any reading of it (percent-decoded any number of times, ``;``
   parameters dropped, NFKC-folded) makes ``.``/``..``, empty, or split by an encoded ``/``,
   backslash, ``?``, ``#`` or control character, else 400 (rule ``path``); see
   :mod:`.bridge_paths`. From here on the path is its canonical form: what the route check
   sees is exactly what is forwarded;
3. route: method and path must match a configured route, else 403;
4. body size: over ``body_limit`` (by Content-Length, or counted while a chunked body is read,
   stopping early), 413 and the connection is closed;
5. body kind: GET and HEAD carry no body (400, rule ``body``); any other method's non-empty
   body must be declared ``application/json`` or ``application/*+json`` and parse as JSON
   (415, rule ``content_type``). An empty body needs no Content-Type;
6. queue: at most ``queue`` requests forwarded at once per :class:`Bridge`, else 503;
7. forward: target base path + canonical path + the query as sent, only the allowlisted
   request headers, then the credential and identity headers (which replace any the sandbox
   sent under the same names). Upstream timeout 504; connection refused, DNS failure, a
   broken or oversized (over 16 MiB) response 502. Redirects are returned as they are, never
   followed.

Every refusal is JSON ``{"error": ..., "message": ..., "rule": ...}``. Every request, answered or
refused, yields one :class:`BridgeRecord` (no bodies, headers or credentials).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar

import aiohttp
import h11
import orjson
from yarl import URL

from ..agent import protocol as p
from ..channel.stream import ByteStream
from ..errors import EgressError, InvalidArgumentError, SandlotError
from .bridge_config import (
    _BAD_QUERY,
    _HEADER_VALUE,
    MAX_HEAD,
    MAX_RECORD_PATH,
    READ_TIMEOUT,
    RESPONSE_LIMIT,
    BridgeConfig,
    _compile,
    _header_name,
)
from .bridge_paths import normalise_path

log = logging.getLogger(__name__)


@dataclass
class BridgeRecord:
    """One request through the bridge: what was asked and how it ended (never bodies, headers
    or credentials). ``rule`` is the route that matched (``"GET /runs/*"``) or the rule that
    refused: token, path, route, body_limit, body, content_type, queue, timeout, upstream,
    malformed."""

    kind: ClassVar[str] = "bridge"

    method: str
    path: str
    status: int
    duration: float
    rule: str

    def to_event(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration": round(self.duration, 6),
            "rule": self.rule,
        }


class _Refused(Exception):
    def __init__(self, status: int, rule: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.rule, self.message, self.close = status, rule, message, close


class _TooLarge(Exception):
    pass


_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    413: "payload_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
    502: "bad_gateway",
    503: "overloaded",
    504: "gateway_timeout",
}
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_EXTRA = {401: [(b"www-authenticate", b"Bearer")], 503: [(b"retry-after", b"1")]}
_NO_LENGTH = frozenset({204, 304})
_SILENT = (ConnectionError, OSError, SandlotError, TimeoutError)


def _error_body(status: int, rule: str, message: str) -> bytes:
    return orjson.dumps(
        {"error": _ERROR_CODES.get(status, "error"), "message": message, "rule": rule}
    )


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    kind, _, subtype = media.partition(b"/")
    return kind == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))


class Bridge:
    """Serves one sandbox's bridge connections (any number of them, one policy, one queue)."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        token: str,
        headers: dict[str, str],
        identity: dict[str, str],
        session: aiohttp.ClientSession | None = None,
        on_record: Callable[[BridgeRecord], None] | None = None,
    ) -> None:
        if not token or not _HEADER_VALUE.fullmatch(token) or token != token.strip():
            raise EgressError("the bridge token must be non-empty printable ASCII")
        fixed: dict[str, str] = {}
        for source in (headers, identity):
            for name, value in source.items():
                try:
                    _header_name(name, what="header")
                except ValueError as exc:
                    raise EgressError(str(exc)) from None
                if not _HEADER_VALUE.fullmatch(value):
                    raise EgressError(f"header {name!r}: value must be printable ASCII")
                for other in [k for k in fixed if k.lower() == name.lower()]:
                    del fixed[other]
                fixed[name] = value
        allowed = set(config.request_headers)
        if "accept-encoding" not in allowed and not any(
            k.lower() == "accept-encoding" for k in fixed
        ):
            # Bodies pass through untouched (no decompression): ask for them plain.
            fixed["Accept-Encoding"] = "identity"
        fixed.setdefault("User-Agent", "sandlot-bridge")
        self.config = config
        self._token = token.encode()
        self._fixed = list(fixed.items())
        fixed_lower = {k.lower().encode() for k in fixed}
        self._request_allow = frozenset(n.encode() for n in allowed) - fixed_lower
        self._response_allow = frozenset(n.encode() for n in config.response_headers) | {
            b"content-encoding"
        }
        self._routes = [
            (method.encode(), _compile(pattern), f"{method} {pattern}")
            for method, pattern in config.routes
        ]
        self._base = config.target
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._session = session
        self._owns_session = session is None
        self._on_record = on_record
        self._in_flight = 0

    # -- public -----------------------------------------------------------------------------

    async def serve(self, stream: ByteStream) -> None:
        """Answer HTTP/1.1 requests on ``stream`` until either side ends it; closes it."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while await self._one(conn, stream):
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
        except _SILENT:
            pass
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client session if the bridge made it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- one request ------------------------------------------------------------------------

    async def _event(self, conn: h11.Connection, stream: ByteStream) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(READ_TIMEOUT):
                data = await stream.read(p.MAX_DATA)
            conn.receive_data(data)

    async def _one(self, conn: h11.Connection, stream: ByteStream) -> bool:
        """Serve one request; whether the connection may carry another."""
        try:
            event = await self._event(conn, stream)
        except h11.RemoteProtocolError as exc:
            await self._malformed(stream, exc, "", "", time.perf_counter())
            return False
        if type(event) is not h11.Request:
            return False  # ConnectionClosed: the client is done
        start = time.perf_counter()
        method = event.method.decode()
        target: bytes = event.target
        path, _, _query = target.partition(b"?")
        record_path = path[:MAX_RECORD_PATH].decode("ascii", "replace")
        try:
            status, headers, body, rule = await self._handle(conn, stream, event, method, path)
        except h11.RemoteProtocolError as exc:
            await self._malformed(stream, exc, method, record_path, start)
            return False
        except _Refused as refused:
            status, rule = refused.status, refused.rule
            close = refused.close or not await self._drain(conn, stream)
            body = _error_body(status, rule, refused.message)
            headers = [_JSON, (b"content-length", str(len(body)).encode())]
            headers += _EXTRA.get(status, ())
            if close:
                headers.append(_CLOSE)
        if event.method == b"HEAD":
            body = b""
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.write(data)
        self._record(method, record_path, status, start, rule)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _handle(
        self, conn: h11.Connection, stream: ByteStream, event: h11.Request, method: str, path: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, str]:
        head = _scan_head(event, self._request_allow)
        clean, rule = self._admit(event, head, method, path)
        body = await self._request_body(conn, stream, event, head, method)
        if self._in_flight >= self.config.queue:
            raise _Refused(503, "queue", f"more than {self.config.queue} requests in flight")
        self._in_flight += 1
        try:
            query = event.target[len(path) :]  # '?...' as sent, or nothing
            status, headers, data = await self._forward(method, clean + query, head.forward, body)
        finally:
            self._in_flight -= 1
        return status, headers, data, rule

    def _admit(
        self, event: h11.Request, head: _Head, method: str, path: bytes
    ) -> tuple[bytes, str]:
        """Steps 1-3 (and the size of the head): the canonical path and the route's label."""
        if head.size > MAX_HEAD:
            raise _Refused(431, "malformed", "request headers too large", close=True)
        if not any(hmac.compare_digest(t, self._token) for t in head.tokens):
            raise _Refused(401, "token", "missing or wrong bridge token")
        if _BAD_QUERY.search(event.target):
            raise _Refused(400, "path", "the request target must be printable ASCII, no '#'")
        try:
            clean = normalise_path(path)
        except InvalidArgumentError as exc:
            raise _Refused(400, "path", f"refused path: {exc}") from None
        rule = self._route(event.method, clean)
        if rule is None:
            raise _Refused(403, "route", f"no route allows {method} {clean.decode()}")
        return clean, rule

    async def _request_body(
        self,
        conn: h11.Connection,
        stream: ByteStream,
        event: h11.Request,
        head: _Head,
        method: str,
    ) -> bytes:
        """Steps 4-5: the body, read within the limit and checked to be JSON; its
        Content-Type is forwarded (allowlisted or not)."""
        limit = self.config.body_limit
        if head.length is not None and head.length > limit:
            raise _Refused(413, "body_limit", f"body over {limit} bytes", close=True)
        if conn.they_are_waiting_for_100_continue:
            await stream.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        try:
            body = await self._body(conn, stream, limit)
        except _TooLarge:
            raise _Refused(413, "body_limit", f"body over {limit} bytes", close=True) from None
        if body:
            if event.method in (b"GET", b"HEAD"):
                raise _Refused(400, "body", f"{method} requests carry no body")
            if not _is_json(head.content_type):
                raise _Refused(415, "content_type", "the body must be application/json")
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                raise _Refused(415, "content_type", "the body is not valid JSON") from None
            if head.content_type is not None and b"content-type" not in self._request_allow:
                head.forward.append(("content-type", head.content_type.decode("latin-1")))
        return body

    def _route(self, method: bytes, path: bytes) -> str | None:
        for allowed, pattern, label in self._routes:
            if (allowed == method or allowed == b"*") and pattern.fullmatch(path):
                return label
        return None

    async def _body(self, conn: h11.Connection, stream: ByteStream, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._event(conn, stream)
            if type(event) is h11.Data:
                size += len(event.data)
                if size > limit:
                    raise _TooLarge
                chunks.append(event.data)
            elif type(event) is h11.EndOfMessage:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            else:  # ConnectionClosed mid-body surfaces as RemoteProtocolError from h11
                raise h11.RemoteProtocolError("request ended early", error_status_hint=400)

    async def _drain(self, conn: h11.Connection, stream: ByteStream) -> bool:
        """Read and drop a refused request's body so the connection can carry the next one;
        False if that is not worth it (too large, or the client waits for 100-continue)."""
        if conn.their_state is not h11.SEND_BODY:
            return conn.their_state is h11.DONE
        if conn.they_are_waiting_for_100_continue:
            return False
        try:
            await self._body(conn, stream, self.config.body_limit)
        except (_TooLarge, h11.RemoteProtocolError):
            return False
        return True

    async def _forward(
        self, method: str, target: bytes, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=self.config.queue),
                trust_env=False,
            )
        url = URL(self._base + target.decode("ascii"), encoded=True)
        headers.extend(self._fixed)
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if response.status < 200:
                    raise _Refused(502, "upstream", f"upstream answered {response.status}")
                if (response.content_length or 0) > RESPONSE_LIMIT:
                    raise _Refused(502, "upstream", "upstream response over 16 MiB")
                chunks: list[bytes] = []
                size = 0
                while chunk := await response.content.readany():
                    size += len(chunk)
                    if size > RESPONSE_LIMIT:
                        raise _Refused(502, "upstream", "upstream response over 16 MiB")
                    chunks.append(chunk)
                data = b"".join(chunks)
                out = self._response_headers(response)
        except TimeoutError:
            raise _Refused(
                504, "timeout", f"upstream did not answer within {self.config.timeout:g} s"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise _Refused(
                502, "upstream", f"upstream failed: {type(exc).__name__}: {exc}"
            ) from None
        status = response.status
        if status not in _NO_LENGTH:
            length = response.content_length if method == "HEAD" else None
            out.append((b"content-length", str(len(data) if length is None else length).encode()))
        return status, out, data

    def _response_headers(self, response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
        allow = self._response_allow
        out = []
        for name, value in response.raw_headers:
            lower = name.lower()
            if lower in allow:
                if lower == b"location":
                    value = self._relative(value)
                out.append((lower, value))
        return out

    def _relative(self, location: bytes) -> bytes:
        """A redirect to the target itself, as a path on the bridge (the sandbox cannot reach
        the target's own address); other locations unchanged."""
        base = self._base.encode()
        if location.startswith(base):
            rest = location[len(base) :]
            if rest[:1] == b"/":
                return rest
            if rest == b"" or rest[:1] == b"?":
                return b"/" + rest
        return location

    # -- refusals and records ---------------------------------------------------------------

    async def _malformed(
        self, stream: ByteStream, exc: h11.RemoteProtocolError, method: str, path: str, start: float
    ) -> None:
        status = exc.error_status_hint if exc.error_status_hint in (400, 413, 431) else 400
        body = _error_body(status, "malformed", f"malformed HTTP request: {exc}")
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _reason(status), len(body))
        )
        try:
            await stream.write(head + body)
        except _SILENT:
            pass
        self._record(method, path, status, start, "malformed")

    def _record(self, method: str, path: str, status: int, start: float, rule: str) -> None:
        if self._on_record is None:
            return
        record = BridgeRecord(method, path, status, time.perf_counter() - start, rule)
        try:
            self._on_record(record)
        except Exception:
            log.exception("bridge: on_record failed")


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


@dataclass
class _Head:
    """What one pass over a request's headers finds."""

    tokens: list[bytes] = field(default_factory=list)  # bridge tokens offered
    content_type: bytes | None = None
    length: int | None = None  # Content-Length, as h11 checked it
    forward: list[tuple[str, str]] = field(default_factory=list)  # the allowlisted headers
    size: int = 0  # of the target and the headers


def _scan_head(event: h11.Request, allow: frozenset[bytes]) -> _Head:
    head = _Head()
    head.size = len(event.target)
    for name, value in event.headers:
        head.size += len(name) + len(value)
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                head.tokens.append(value[7:].strip())
        elif name == b"x-sandlot-bridge-token":
            head.tokens.append(value.strip())
        elif name == b"content-type":
            head.content_type = value
        elif name == b"content-length":
            head.length = int(value)  # h11 checked it
        if name in allow:
            head.forward.append((name.decode(), value.decode("latin-1")))
    return head
