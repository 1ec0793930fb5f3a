"""The allowlist proxy: one sandbox connection served as an HTTP or SOCKS5 proxy.

The agent accepts a connection on its loopback port inside the sandbox and carries it to the
host, where :func:`serve_proxy` serves it. The first byte tells the protocol:

- ``0x05``: SOCKS5, no authentication, CONNECT only, to an IPv4, IPv6 or domain address.
- Otherwise HTTP/1.x: ``CONNECT host:port`` opens a tunnel (what clients use for HTTPS);
  an absolute-form request (``GET http://host/path``) is proxied as plain HTTP.

Every destination goes through :func:`~sandlot.egress.policy.decide` with the policy as it is
at that moment; the proxy connects only to the addresses the decision checked. For plain HTTP
the request's ``Host`` is set from its URI and both sides are told ``Connection: close``: one
request per proxy connection, so a client that reuses proxy connections across hosts (curl,
urllib3 do) cannot send a request meant for one host to another.

A CONNECT tunnel carries whatever the client sends: the policy checks where it goes, not what
it says (TLS SNI and ``Host`` inside it are not inspected).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import inspect
import ipaddress
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, cast

from ..channel.stream import ByteStream, StreamTooLong, pipe, splice_streams
from .policy import Decision, NetworkPolicy, Resolver, decide

log = logging.getLogger("sandlot")

HEAD_LIMIT = 64 * 1024  # the longest request or response head
HEAD_TIMEOUT = 60.0  # for a client to send its request (head, or SOCKS5 handshake)
UPSTREAM_BUFFER = 4 * 1024 * 1024  # read ahead from an upstream at most this much
READ_BUFFER = 1024 * 1024  # one read from an upstream takes at most this much (one frame)
DRAIN_TIME = 1.0  # after a refusal, how long to read what the client still sends

Protocol = Literal["connect", "http", "socks5", "unknown"]
Verdict = Literal["allowed", "refused", "failed"]


@dataclass
class EgressRecord:
    """What one proxy connection did; safe to log (no headers, no bodies)."""

    protocol: Protocol = "unknown"
    host: str = ""
    port: int = 0
    verdict: Verdict = "failed"
    reason: str = ""
    rule: str | None = None  # the rule that allowed it
    address: str | None = None  # the address connected to
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client
    duration: float = 0.0  # seconds, the whole connection

    def to_event(self) -> dict[str, Any]:
        event = dataclasses.asdict(self)
        event["duration"] = round(self.duration, 4)
        return event


OnDecision = Callable[[EgressRecord], Awaitable[None] | None]


async def serve_proxy(
    client: ByteStream,
    policy: Callable[[], NetworkPolicy],
    *,
    resolver: Resolver | None = None,
    connect_timeout: float = 10.0,
    on_decision: OnDecision | None = None,
) -> EgressRecord:
    """Serve one client connection as a proxy until both sides are done; closes ``client``.

    ``policy`` is called once, when the destination is known. ``resolver`` looks up names the
    policy's ``resolve`` map does not pin (default: the system's). ``connect_timeout`` bounds
    the connection to the upstream (all its addresses together). ``on_decision`` (sync or
    async) is called with the record once the policy has decided, before connecting. The
    record returned says what happened; it never raises for what a client or upstream does.
    """
    session = _Session(client, policy, resolver, connect_timeout, on_decision)
    started = time.monotonic()
    try:
        await session.run()
    except Exception as exc:  # a bug, or a transport failing in a way not foreseen
        log.warning("egress proxy: %s", exc, exc_info=True)
        session.record.verdict = "failed"
        session.record.reason = session.record.reason or f"proxy error: {exc}"
    finally:
        await session.close()
        session.record.duration = time.monotonic() - started
    return session.record


class _UpstreamProtocol(asyncio.BufferedProtocol):
    """Received data kept as the chunks the socket gave (no copying into one buffer), reading
    paused while more than ``UPSTREAM_BUFFER`` waits; writes paused by the transport's limits.

    The socket reads into large buffers that are filled front to back and never reused, so a
    chunk is a view of one (no copy) and as large as what the socket held, up to READ_BUFFER:
    fewer, larger frames to the agent than asyncio's 256 KiB reads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._buffer = bytearray(READ_BUFFER)
        self._filled = 0
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.paused = False
        self.eof = False
        self.lost: BaseException | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.readable: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (a server's loop) are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=UPSTREAM_BUFFER // 4)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._buffer) - self._filled < READ_BUFFER // 16:
            self._buffer, self._filled = bytearray(READ_BUFFER), 0
        return memoryview(self._buffer)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        start = self._filled
        self._filled += nbytes
        self.data_received(memoryview(self._buffer)[start : self._filled])  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > UPSTREAM_BUFFER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return True  # keep the transport open: the other direction may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc or ConnectionResetError("the upstream connection is closed")
        self._wake_reader()
        if self.writable is not None and not self.writable.done():
            self.writable.set_exception(self.lost)
            self.writable.exception()  # retrieved: nobody may be waiting
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def _wake_reader(self) -> None:
        if self.readable is not None and not self.readable.done():
            self.readable.set_result(None)


class Upstream(ByteStream):
    """A ByteStream over a TCP connection to an upstream, made for copying: each read is a
    chunk as the socket delivered it, with no copy between the socket and the other side."""

    def __init__(self, protocol: _UpstreamProtocol) -> None:
        super().__init__()
        self.protocol = protocol

    @classmethod
    async def connect(cls, address: str, port: int) -> Upstream:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: _UpstreamProtocol(loop), address, port, flags=socket.AI_NUMERICHOST
        )
        return cls(protocol)

    @classmethod
    async def wrap(cls, sock: socket.socket) -> Upstream:
        """The same over a connected socket we were given (a sandbox's, handed over by its
        agent): the client side of the proxy and the bridge, copied as cheaply."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: _UpstreamProtocol(loop), sock=sock)
        return cls(protocol)

    async def _recv(self) -> bytes:
        protocol = self.protocol
        while not protocol.chunks:
            if protocol.eof:
                return b""
            protocol.readable = protocol.loop.create_future()
            await protocol.readable
        data = protocol.chunks.popleft()
        protocol.size -= len(data)
        if protocol.paused and protocol.size <= UPSTREAM_BUFFER // 2:
            protocol.paused = False
            if protocol.transport is not None and not protocol.transport.is_closing():
                protocol.transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol.lost is not None or protocol.transport is None:
            raise ConnectionResetError("the upstream connection is closed")
        protocol.transport.write(data)
        if protocol.writable is not None and not protocol.writable.done():
            await protocol.writable

    def write_eof(self) -> None:
        transport = self.protocol.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()

    async def aclose(self) -> None:
        transport = self.protocol.transport
        if transport is None:
            return
        transport.close()
        try:  # what is still buffered is sent first, but not to a peer that stopped reading
            await asyncio.wait_for(asyncio.shield(self.protocol.closed), 2.0)
        except TimeoutError:
            transport.abort()


class _Refused(Exception):
    """The request ends here: the client has been answered (or cannot be)."""


class _ConnectFailed(Exception):
    def __init__(self, message: str, *, timed_out: bool, code: int | None) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.code = code


class _Session:
    def __init__(
        self,
        client: ByteStream,
        policy: Callable[[], NetworkPolicy],
        resolver: Resolver | None,
        connect_timeout: float,
        on_decision: OnDecision | None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.on_decision = on_decision
        self.record = EgressRecord()
        self.upstream: Upstream | None = None

    async def close(self) -> None:
        for stream in (self.upstream, self.client):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    def _end(self, verdict: Verdict, reason: str) -> None:
        self.record.verdict = verdict
        self.record.reason = reason

    async def run(self) -> None:
        try:
            first = await asyncio.wait_for(self.client.readexactly(1), HEAD_TIMEOUT)
        except asyncio.IncompleteReadError:
            return self._end("failed", "the client closed before sending a request")
        except TimeoutError:
            return self._end("failed", f"the client sent nothing within {HEAD_TIMEOUT:g} s")
        try:
            if first == b"\x05":
                self.record.protocol = "socks5"
                await self._socks()
            elif first.isalpha() and first.isupper():
                self.record.protocol = "http"
                await self._http(first)
            elif first == b"\x04":
                self._end("refused", "SOCKS4 is not supported; use SOCKS5 or HTTP")
            else:
                self._end("refused", f"not an HTTP or SOCKS5 request (first byte {first!r})")
        except _Refused:
            pass

    # -- the decision and the connection ---------------------------------------------------

    async def _decide(self, host: str, port: int) -> Decision:
        self.record.host, self.record.port = host, port
        try:
            current = self.policy()
        except Exception as exc:  # no policy: nothing is allowed
            decision = Decision(False, reason=f"no network policy: {exc}")
        else:
            decision = await decide(current, host, port, resolver=self.resolver)
        self.record.verdict = "allowed" if decision.allowed else "refused"
        self.record.reason = decision.reason
        self.record.rule = decision.rule
        if self.on_decision is not None:
            try:
                result = self.on_decision(self.record)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.warning("egress proxy: on_decision failed", exc_info=True)
        return decision

    async def _connect(self, decision: Decision, port: int) -> Upstream:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        errors: list[str] = []
        timed_out, code = False, None
        left = len(decision.addresses)
        for address in decision.addresses:
            budget = (deadline - loop.time()) / left
            left -= 1
            if budget <= 0:
                timed_out = True
                break
            try:
                async with asyncio.timeout(budget):
                    upstream = await Upstream.connect(address, port)
            except TimeoutError:
                errors.append(f"{address}: timed out")
                timed_out, code = True, None
                continue
            except OSError as exc:
                errors.append(f"{address}: {os.strerror(exc.errno) if exc.errno else exc}")
                timed_out, code = False, exc.errno
                continue
            self.record.address = address
            self.upstream = upstream
            return upstream
        where = _host_port(self.record.host, port)
        raise _ConnectFailed(
            f"could not connect to {where}: {'; '.join(errors) or 'timed out'}",
            timed_out=timed_out,
            code=code,
        )

    # -- HTTP ------------------------------------------------------------------------------

    async def _reply(self, status: str, body: str, verdict: Verdict, reason: str) -> NoReturn:
        """Answer with an error status and a text body, and end."""
        self._end(verdict, reason)
        data = (body + "\n").encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(Exception):
            await self.client.write(head.encode() + data)
            self.client.write_eof()
            await self._drain_client()
        raise _Refused

    async def _drain_client(self) -> None:
        """Read what the client still sends for a moment, so closing does not reset the
        connection before it has read the answer."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DRAIN_TIME):
                while await self.client.read():
                    pass

    async def _http(self, first: bytes) -> None:
        try:
            rest = await asyncio.wait_for(
                self.client.readuntil(b"\r\n\r\n", HEAD_LIMIT), HEAD_TIMEOUT
            )
        except StreamTooLong:
            rest = b""
        except asyncio.IncompleteReadError:
            return self._end("failed", "the client closed in the middle of its request head")
        except TimeoutError:
            return self._end("failed", f"no request head within {HEAD_TIMEOUT:g} s")
        head = first + rest
        if not rest or len(head) > HEAD_LIMIT:
            await self._reply(
                "431 Request Header Fields Too Large",
                f"sandlot egress proxy: request head over {HEAD_LIMIT // 1024} KiB",
                "refused",
                "request head too long",
            )
        request = _parse_head(head)
        if request is None:
            await self._bad_request("malformed request head")
        method, target, version, headers = request
        if method == "CONNECT":
            self.record.protocol = "connect"
            authority = _split_authority(target)
            if authority is None:
                await self._bad_request(f"CONNECT needs host:port, got {target!r}")
            await self._connect_tunnel(*authority)
        else:
            await self._forward(method, target, version, headers)

    async def _bad_request(self, reason: str) -> NoReturn:
        await self._reply(
            "400 Bad Request",
            f"sandlot egress proxy: {reason}; send CONNECT host:port, or a request with an "
            "absolute URI (GET http://host/path)",
            "refused",
            reason,
        )

    async def _http_decision(self, host: str, port: int) -> Decision:
        decision = await self._decide(host, port)
        if not decision.allowed:
            await self._reply(
                "403 Forbidden",
                f"sandlot egress: {_host_port(host, port)} refused: {decision.reason}",
                "refused",
                decision.reason,
            )
        return decision

    async def _http_connect(self, decision: Decision, port: int) -> Upstream:
        try:
            return await self._connect(decision, port)
        except _ConnectFailed as exc:
            status = "504 Gateway Timeout" if exc.timed_out else "502 Bad Gateway"
            await self._reply(status, f"sandlot egress: {exc}", "failed", str(exc))

    async def _connect_tunnel(self, host: str, port: int) -> None:
        decision = await self._http_decision(host, port)
        upstream = await self._http_connect(decision, port)
        await self.client.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await self._splice(upstream)

    async def _forward(
        self, method: str, target: str, version: str, headers: list[tuple[str, str]]
    ) -> None:
        url = _split_url(target)
        if url is None:
            if target.lower().startswith("https://"):
                await self._bad_request("https:// through a plain proxy request; use CONNECT")
            await self._bad_request(f"not an absolute http:// URI: {target[:200]!r}")
        host, port, authority, path = url
        decision = await self._http_decision(host, port)
        upstream = await self._http_connect(decision, port)
        upgrade = any(name.lower() == "upgrade" for name, _ in headers) and any(
            name.lower() == "connection" and "upgrade" in value.lower() for name, value in headers
        )
        body = _body_length(headers, upgrade)
        if body == -1:
            await self._bad_request("conflicting or malformed Content-Length")
        lines = [f"{method} {path} {version}", f"Host: {authority}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _HOP]
        lines.append("Connection: Upgrade" if upgrade else "Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        await self._relay(upstream, head, body)

    async def _relay(self, upstream: Upstream, head: bytes, body: int | None) -> None:
        """Send the rewritten request, pass its body on (``body`` bytes; None: all the client
        sends) while the response head is read and rewritten (``Connection: close``), then
        copy the response."""
        await upstream.write(head)
        self.record.bytes_up = len(head)
        # The declared body only; a request pipelined after it is read and dropped.
        up = asyncio.ensure_future(pipe(self.client, upstream, limit=body))
        try:
            while True:
                try:
                    raw = await upstream.readuntil(b"\r\n\r\n", HEAD_LIMIT)
                except (StreamTooLong, asyncio.IncompleteReadError):
                    raw = b""
                response = _rewrite_response(raw) if 0 < len(raw) <= HEAD_LIMIT else None
                if response is None:
                    await _stop(up)  # one reader of the client at a time
                    reason = "no HTTP/1.x response from the upstream"
                    if raw:
                        reason = "the upstream's response head is malformed or too long"
                    await self._reply(
                        "502 Bad Gateway", f"sandlot egress: {reason}", "failed", reason
                    )
                status, data = response
                await self.client.write(data)
                self.record.bytes_down += len(data)
                if not 100 <= status < 200 or status == 101:
                    break
            self.record.bytes_down += await pipe(upstream, self.client)
            self.record.bytes_up += await up
        finally:
            await _stop(up)

    async def _splice(self, upstream: Upstream) -> None:
        up, down = await splice_streams(self.client, upstream)
        self.record.bytes_up += up
        self.record.bytes_down += down

    # -- SOCKS5 (RFC 1928) -----------------------------------------------------------------

    async def _socks_reply(self, code: int, verdict: Verdict, reason: str) -> NoReturn:
        self._end(verdict, reason)
        with contextlib.suppress(Exception):
            await self.client.write(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
            self.client.write_eof()
        raise _Refused

    async def _socks(self) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                host, port, command = await self._socks_handshake()
        except asyncio.IncompleteReadError:
            return self._end("failed", "the client closed during the SOCKS5 handshake")
        except TimeoutError:
            return self._end("failed", f"no SOCKS5 request within {HEAD_TIMEOUT:g} s")
        if command != 1:
            self.record.host, self.record.port = host, port
            await self._socks_reply(7, "refused", f"SOCKS5 command {command} is not supported")
        decision = await self._decide(host, port)
        if not decision.allowed:
            await self._socks_reply(2, "refused", decision.reason)  # not allowed by ruleset
        try:
            upstream = await self._connect(decision, port)
        except _ConnectFailed as exc:
            await self._socks_reply(_socks_code(exc), "failed", str(exc))
        await self.client.write(bytes([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]))
        await self._splice(upstream)

    async def _socks_handshake(self) -> tuple[str, int, int]:
        """Method negotiation and the request: (host, port, command)."""
        client = self.client
        count = (await client.readexactly(1))[0]
        methods = await client.readexactly(count)
        if 0 not in methods:  # only "no authentication required"
            await client.write(b"\x05\xff")
            self._end("refused", "the client offers no SOCKS5 method this proxy takes (no auth)")
            raise _Refused
        await client.write(b"\x05\x00")
        version, command, _, kind = await client.readexactly(4)
        if version != 5:
            self._end("refused", f"SOCKS version {version} in the request")
            raise _Refused
        if kind == 1:
            host = str(ipaddress.IPv4Address(await client.readexactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await client.readexactly(16)))
        elif kind == 3:
            length = (await client.readexactly(1))[0]
            host = (await client.readexactly(length)).decode("latin-1")
        else:
            await self._socks_reply(8, "refused", f"SOCKS5 address type {kind} is not supported")
        port = int.from_bytes(await client.readexactly(2), "big")
        return host, port, command


def _body_length(headers: list[tuple[str, str]], upgrade: bool) -> int | None:
    """How many bytes of request body follow the head: None for all (chunked, or an upgrade),
    -1 if Content-Length is malformed or given twice with different values."""
    if upgrade or any(name.lower() == "transfer-encoding" for name, _ in headers):
        return None
    lengths = {value for name, value in headers if name.lower() == "content-length"}
    if not lengths:
        return 0
    value = lengths.pop()
    return int(value) if not lengths and value.isdigit() else -1


async def _stop(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _socks_code(exc: _ConnectFailed) -> int:
    if exc.timed_out or exc.code == errno.EHOSTUNREACH:
        return 4  # host unreachable
    if exc.code == errno.ECONNREFUSED:
        return 5  # connection refused
    if exc.code == errno.ENETUNREACH:
        return 3  # network unreachable
    return 1  # general failure


# -- HTTP heads ------------------------------------------------------------------------------

_HOP = frozenset(
    {"host", "connection", "keep-alive", "proxy-connection", "proxy-authorization"}
    | {"proxy-authenticate"}
)
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]] | None:
    """(method, target, version, headers) of a request head, or None if it is malformed
    (a bare CR or LF, or a NUL, is: a server might read it as a line end)."""
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\n"):
        return None
    if b"\0" in head:
        return None
    lines = head.decode("latin-1").split("\r\n")[:-2]
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3:
        return None
    method, target, version = parts
    if not method or not set(method) <= _TOKEN or version not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    if not target or any(c.isspace() or ord(c) < 0x21 for c in target):
        return None
    headers = _parse_fields(lines[1:])
    return None if headers is None else (method, target, version, headers)


def _parse_fields(lines: list[str]) -> list[tuple[str, str]] | None:
    fields = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= _TOKEN:  # also: obs-fold, space before ":"
            return None
        fields.append((name, value.strip(" \t")))
    return fields


def _split_authority(text: str, default: int | None = None) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` (the port may be left out if there is a default)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        return None  # IPv6 must be in brackets
    else:
        host, _, port_text = text.partition(":")
        if ":" not in text:
            port_text = ""
    if not host:
        return None
    if not port_text:
        return None if default is None or text.endswith(":") else (host, default)
    if not port_text.isdigit() or len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
        return None
    return host, int(port_text)


def _split_url(target: str) -> tuple[str, int, str, str] | None:
    """(host, port, authority, origin-form path) of an absolute ``http://`` URI."""
    if target[:7].lower() != "http://":
        return None
    rest = target[7:]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
    if "@" in authority:
        return None
    parsed = _split_authority(authority, 80)
    if parsed is None:
        return None
    if not path.startswith("/"):
        path = "/" + path
    return parsed[0], parsed[1], authority, path


def _rewrite_response(raw: bytes) -> tuple[int, bytes] | None:
    """(status, head to send) of a response head: ``Connection: close`` in the final one."""
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    parts = lines[0].split(" ", 2) if lines else []
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        return None
    status = int(parts[1])
    if 100 <= status < 200:
        return status, raw
    fields = _parse_fields(lines[1:])
    if fields is None:
        return None
    kept = [f"{name}: {value}" for name, value in fields if name.lower() not in _HOP - {"host"}]
    text = "\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n"
    return status, text.encode("latin-1")
