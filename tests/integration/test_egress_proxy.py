"""The allowlist proxy, served over real sockets to real clients and real upstreams.

The proxy runs as ``serve_proxy`` behind ``asyncio.start_server`` on loopback (each connection
wrapped in a ``SocketStream``, as the agent's tunnel is wrapped in a ``TunnelStream``);
upstreams are aiohttp servers on 127.0.0.1 and ::1; clients are curl, urllib and raw sockets.
No DNS: test names are pinned by the policy's ``resolve`` map.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import struct
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sandlot.channel.stream import SocketStream
from sandlot.egress.policy import NetworkPolicy
from sandlot.egress.proxy import EgressRecord, serve_proxy

BIG = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("egress") / "big.bin"
    path.write_bytes(os.urandom(BIG))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Upstream:
    host: str
    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)  # requests, as the server saw them


async def _start_upstream(host: str, big: Path) -> tuple[Upstream, web.AppRunner]:
    upstream = Upstream(host, 0)

    async def hello(request: web.Request) -> web.Response:
        upstream.seen.append({"path": request.path_qs, "headers": dict(request.headers)})
        return web.Response(text="hello from upstream")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(text=f"{len(body)} {hashlib.sha256(body).hexdigest()}")

    async def big_response(request: web.Request) -> web.FileResponse:
        return web.FileResponse(big)

    app = web.Application(client_max_size=BIG)
    app.router.add_get("/hello", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/big", big_response)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    upstream.port = runner.addresses[0][1]
    return upstream, runner


class Proxy:
    """``serve_proxy`` on a loopback port; the policy can be swapped between connections."""

    def __init__(self, policy: NetworkPolicy, connect_timeout: float = 2.0) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.records: asyncio.Queue[EgressRecord] = asyncio.Queue()
        self.decided: list[tuple[str, str]] = []
        self.port = 0

    async def start(self) -> asyncio.Server:
        async def decided(record: EgressRecord) -> None:
            self.decided.append((record.host, record.verdict))

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            record = await serve_proxy(
                SocketStream(reader, writer),
                lambda: self.policy,
                connect_timeout=self.connect_timeout,
                on_decision=decided,
            )
            await self.records.put(record)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def record(self) -> EgressRecord:
        return await asyncio.wait_for(self.records.get(), 10)


@dataclass
class Env:
    proxy: Proxy
    up: Upstream  # on 127.0.0.1
    up6: Upstream  # on ::1
    big_sha256: str


@pytest.fixture
async def env(big_file: tuple[Path, str]) -> AsyncIterator[Env]:
    up, runner = await _start_upstream("127.0.0.1", big_file[0])
    up6, runner6 = await _start_upstream("::1", big_file[0])
    proxy = Proxy(
        NetworkPolicy(
            allow=["files.test", "127.0.0.1", "private.test", f"[::1]:{up6.port}", "v6.test"],
            resolve={"files.test": "127.0.0.1", "private.test": "10.1.2.3", "v6.test": "::1"},
        )
    )
    server = await proxy.start()
    try:
        yield Env(proxy, up, up6, big_file[1])
    finally:
        server.close()
        await runner.cleanup()
        await runner6.cleanup()


CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no proxy variables


async def curl(*args: str) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "15",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CLEAN_ENV,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def raw(port: int, data: bytes, read: Callable[[asyncio.StreamReader], Any] | None = None):
    """Send ``data`` to the proxy, read to the end (or with ``read``); the bytes read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if read is not None:
            return await asyncio.wait_for(read(reader), 5)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- allowed --------------------------------------------------------------------------------


async def test_plain_http_through_the_resolve_map(env: Env) -> None:
    url = f"http://files.test:{env.up.port}/hello?x=1"
    code, out, err = await curl("-x", env.proxy.url, "-H", "Proxy-Authorization: Basic eA==", url)
    assert code == 0, err
    assert out == b"hello from upstream"
    record = await env.proxy.record()
    assert record.protocol == "http"
    assert (record.host, record.port) == ("files.test", env.up.port)
    assert (record.verdict, record.rule, record.address) == ("allowed", "files.test", "127.0.0.1")
    assert record.bytes_up > 0 and record.bytes_down > len(out)
    assert record.duration > 0
    assert env.proxy.decided == [("files.test", "allowed")]
    # The upstream saw an origin-form request, its own Host, and no proxy headers.
    seen = env.up.seen[-1]
    assert seen["path"] == "/hello?x=1"
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    assert headers["host"] == f"files.test:{env.up.port}"
    assert headers["connection"] == "close"
    assert "proxy-authorization" not in headers and "proxy-connection" not in headers
    event = record.to_event()
    assert event["verdict"] == "allowed" and json.dumps(event)


async def test_connect_tunnel(env: Env) -> None:
    url = f"http://files.test:{env.up.port}/hello"
    code, out, err = await curl("-p", "-x", env.proxy.url, url)
    assert code == 0, err
    assert out == b"hello from upstream"
    record = await env.proxy.record()
    assert (record.protocol, record.verdict, record.address) == ("connect", "allowed", "127.0.0.1")
    assert record.bytes_down > len(out)


async def test_socks5_by_name_and_by_address(env: Env) -> None:
    socks = f"127.0.0.1:{env.proxy.port}"
    code, out, err = await curl(
        "--socks5-hostname", socks, f"http://files.test:{env.up.port}/hello"
    )
    assert (code, out) == (0, b"hello from upstream"), err
    record = await env.proxy.record()
    assert (record.protocol, record.host, record.verdict) == ("socks5", "files.test", "allowed")
    code, out, err = await curl("--socks5", socks, f"http://127.0.0.1:{env.up.port}/hello")
    assert (code, out) == (0, b"hello from upstream"), err
    record = await env.proxy.record()
    assert (record.protocol, record.host, record.rule) == ("socks5", "127.0.0.1", "127.0.0.1")


async def test_urllib_through_the_proxy(env: Env) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": env.proxy.url}))

    def fetch(url: str) -> tuple[int, bytes]:
        try:
            with opener.open(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, body = await asyncio.to_thread(fetch, f"http://files.test:{env.up.port}/hello")
    assert (status, body) == (200, b"hello from upstream")
    assert (await env.proxy.record()).verdict == "allowed"
    status, body = await asyncio.to_thread(fetch, "http://evil.example/")
    assert status == 403
    assert body == b"sandlot egress: evil.example:80 refused: no rule allows evil.example:80\n"
    assert (await env.proxy.record()).verdict == "refused"


async def test_ipv6_upstream(env: Env) -> None:
    port = env.up6.port
    code, out, err = await curl("-x", env.proxy.url, f"http://[::1]:{port}/hello")
    assert (code, out) == (0, b"hello from upstream"), err
    record = await env.proxy.record()
    assert (record.host, record.address, record.rule) == ("::1", "::1", f"[::1]:{port}")
    code, out, err = await curl("-p", "-x", env.proxy.url, f"http://v6.test:{port}/hello")
    assert (code, out) == (0, b"hello from upstream"), err
    assert (await env.proxy.record()).address == "::1"
    code, out, err = await curl(
        "--socks5", f"127.0.0.1:{env.proxy.port}", f"http://[::1]:{port}/hello"
    )
    assert (code, out) == (0, b"hello from upstream"), err
    assert (await env.proxy.record()).protocol == "socks5"
    # Another port on ::1 is not named by the rule.
    code, out, _ = await curl("-x", env.proxy.url, f"http://[::1]:{env.up.port}/hello")
    assert b"no rule allows [::1]:" in out
    assert (await env.proxy.record()).verdict == "refused"


async def test_large_transfers_arrive_intact(env: Env, tmp_path: Path) -> None:
    for name, args in {
        "http": ["-x", env.proxy.url],
        "connect": ["-p", "-x", env.proxy.url],
        "socks5": ["--socks5-hostname", f"127.0.0.1:{env.proxy.port}"],
    }.items():
        out = tmp_path / f"{name}.bin"
        url = f"http://files.test:{env.up.port}/big"
        code, _, err = await curl(*args, "-o", str(out), url)
        assert code == 0, err
        assert hashlib.sha256(out.read_bytes()).hexdigest() == env.big_sha256, name
        record = await env.proxy.record()
        assert record.bytes_down > BIG and record.verdict == "allowed", name
    # And the other way: a large upload (curl waits for 100 Continue), its bytes counted.
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(20 * 1024 * 1024))
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()
    for args in (["-x", env.proxy.url], ["-p", "-x", env.proxy.url]):
        url = f"http://files.test:{env.up.port}/echo"
        code, out, err = await curl(*args, "--data-binary", f"@{upload}", url)
        assert (code, out.decode()) == (0, f"{20 * 1024 * 1024} {digest}"), err
        assert (await env.proxy.record()).bytes_up > 20 * 1024 * 1024


# -- refused --------------------------------------------------------------------------------


async def test_refused_host_on_each_protocol(env: Env) -> None:
    code, out, _ = await curl("-x", env.proxy.url, "http://evil.example:8080/x")
    assert code == 0
    assert out == b"sandlot egress: evil.example:8080 refused: no rule allows evil.example:8080\n"
    record = await env.proxy.record()
    assert (record.protocol, record.verdict) == ("http", "refused")
    assert (record.reason, record.rule, record.address) == (
        "no rule allows evil.example:8080",
        None,
        None,
    )
    assert (record.bytes_up, record.bytes_down) == (0, 0)

    code, _, err = await curl("-p", "-x", env.proxy.url, "http://evil.example/")
    assert code == 56 and "403" in err
    assert (await env.proxy.record()).protocol == "connect"

    code, _, err = await curl("--socks5-hostname", f"127.0.0.1:{env.proxy.port}", "http://e.x/")
    assert code == 97, err  # curl: "proxy handshake error"
    record = await env.proxy.record()
    assert (record.protocol, record.host, record.verdict) == ("socks5", "e.x", "refused")


async def test_a_name_resolving_to_a_private_address_no_rule_names(env: Env) -> None:
    code, out, _ = await curl("-x", env.proxy.url, "http://private.test/")
    assert code == 0
    reason = "private.test resolves to 10.1.2.3, a private address no rule names"
    assert out == f"sandlot egress: private.test:80 refused: {reason}\n".encode()
    assert (await env.proxy.record()).reason == reason


async def test_an_ip_literal_no_rule_names(env: Env) -> None:
    port = env.up.port
    code, out, _ = await curl("-x", env.proxy.url, f"http://127.0.0.2:{port}/hello")
    assert code == 0
    assert b"no rule allows 127.0.0.2:" in out and b"loopback" in out
    assert (await env.proxy.record()).verdict == "refused"


async def test_the_metadata_address_is_refused(env: Env) -> None:
    env.proxy.policy = NetworkPolicy(
        allow=["metadata.google.internal", "*.example.com"],
        resolve={"metadata.google.internal": "169.254.169.254"},
    )
    head = await raw(env.proxy.port, b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"no rule allows 169.254.169.254:80, a link-local (cloud metadata) address" in head
    assert (await env.proxy.record()).verdict == "refused"
    head = await raw(
        env.proxy.port, b"GET http://metadata.google.internal/computeMetadata/v1/ HTTP/1.1\r\n\r\n"
    )
    assert b"resolves to 169.254.169.254, a link-local (cloud metadata) address" in head
    assert (await env.proxy.record()).verdict == "refused"
    # SOCKS5 to the address: "not allowed by ruleset".
    request = b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("169.254.169.254")
    reply = await raw(env.proxy.port, request + struct.pack("!H", 80))
    assert reply == b"\x05\x00" + b"\x05\x02\x00\x01" + bytes(6)
    assert (await env.proxy.record()).protocol == "socks5"


async def test_the_policy_is_read_for_each_connection(env: Env) -> None:
    url = f"http://files.test:{env.up.port}/hello"
    _, out, _ = await curl("-x", env.proxy.url, url)
    assert out == b"hello from upstream"
    assert (await env.proxy.record()).verdict == "allowed"
    env.proxy.policy = NetworkPolicy(allow=["other.test"])
    _, out, _ = await curl("-x", env.proxy.url, url)
    assert out.startswith(b"sandlot egress: files.test:") and b"no rule allows" in out
    assert (await env.proxy.record()).verdict == "refused"


# -- protocol edges -------------------------------------------------------------------------


async def test_one_request_per_plain_http_connection(env: Env) -> None:
    """A client that reuses a proxy connection for another host must not reach the first
    host with it: the response says ``Connection: close``, and the connection ends."""
    first = f"GET http://files.test:{env.up.port}/hello HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    second = "GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    data = await raw(env.proxy.port, (first + second).encode())
    assert data.count(b"HTTP/1.1 ") == 1
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close" in head
    assert body == b"hello from upstream"
    assert env.up.seen[-1]["headers"]["Host"] == f"files.test:{env.up.port}"
    assert len(env.up.seen) == 1
    assert (await env.proxy.record()).verdict == "allowed"


async def test_bad_requests(env: Env) -> None:
    reply = await raw(env.proxy.port, b"GET /hello HTTP/1.1\r\nHost: files.test\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"absolute URI" in reply
    assert (await env.proxy.record()).verdict == "refused"

    reply = await raw(env.proxy.port, b"CONNECT files.test HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert (await env.proxy.record()).protocol == "connect"

    reply = await raw(env.proxy.port, b"GET https://files.test/ HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and b"use CONNECT" in reply
    await env.proxy.record()

    smuggled = f"GET http://files.test:{env.up.port}/hello HTTP/1.1\r\nX: a\nHost: e\r\n\r\n"
    reply = await raw(env.proxy.port, smuggled.encode())
    assert reply.startswith(b"HTTP/1.1 400 ") and b"malformed request head" in reply
    assert env.up.seen == []
    await env.proxy.record()

    huge = b"GET http://files.test/ HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
    reply = await raw(env.proxy.port, huge)
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert (await env.proxy.record()).reason == "request head too long"

    reply = await raw(env.proxy.port, b"\x16\x03\x01\x00")
    assert reply == b""
    record = await env.proxy.record()
    assert (record.protocol, record.verdict) == ("unknown", "refused")

    _, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    writer.close()
    record = await env.proxy.record()
    assert (record.verdict, record.reason) == (
        "failed",
        "the client closed before sending a request",
    )


async def test_socks5_edges(env: Env) -> None:
    port = env.up.port
    # Only username/password offered: no acceptable method.
    assert await raw(env.proxy.port, b"\x05\x01\x02") == b"\x05\xff"
    assert (await env.proxy.record()).verdict == "refused"
    # BIND: command not supported.
    request = b"\x05\x01\x00\x05\x02\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 1)
    assert await raw(env.proxy.port, request) == b"\x05\x00\x05\x07\x00\x01" + bytes(6)
    assert (await env.proxy.record()).verdict == "refused"
    # Address type 9: not supported.
    assert await raw(env.proxy.port, b"\x05\x01\x00\x05\x01\x00\x09") == (
        b"\x05\x00\x05\x08\x00\x01" + bytes(6)
    )
    await env.proxy.record()
    # A domain, then data through the tunnel.
    name = b"files.test"
    request = b"\x05\x01\x00\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port)
    http = b"GET /hello HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n"
    reply = await raw(env.proxy.port, request + http)
    assert reply.startswith(b"\x05\x00\x05\x00\x00\x01" + bytes(6) + b"HTTP/1.1 200 OK")
    assert reply.endswith(b"hello from upstream")
    record = await env.proxy.record()
    assert record.bytes_up == len(http) and record.bytes_down == len(reply) - 12


async def test_upstream_connection_refused(env: Env) -> None:
    closed = _free_port()
    code, out, _ = await curl("-x", env.proxy.url, f"http://files.test:{closed}/")
    assert code == 0 and out.startswith(
        f"sandlot egress: could not connect to files.test:{closed}".encode()
    )
    record = await env.proxy.record()
    assert (record.verdict, record.rule, record.address) == ("failed", "files.test", None)
    assert "refused" in record.reason.lower()

    head = await raw(env.proxy.port, f"CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert (await env.proxy.record()).verdict == "failed"

    request = b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
    reply = await raw(env.proxy.port, request + struct.pack("!H", closed))
    assert reply == b"\x05\x00\x05\x05\x00\x01" + bytes(6)  # connection refused
    assert (await env.proxy.record()).protocol == "socks5"


async def test_upstream_connect_timeout() -> None:
    """A listener whose backlog is full drops new connections' SYNs: connecting hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port))
        proxy = Proxy(NetworkPolicy(allow=["127.0.0.1"]), connect_timeout=0.3)
        server = await proxy.start()
        try:
            head = await raw(proxy.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            assert head.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
            record = await proxy.record()
            assert (record.verdict, record.reason) == (
                "failed",
                f"could not connect to 127.0.0.1:{port}: 127.0.0.1: timed out",
            )
            request = b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
            reply = await raw(proxy.port, request + struct.pack("!H", port))
            assert reply == b"\x05\x00\x05\x04\x00\x01" + bytes(6)  # host unreachable
            assert (await proxy.record()).verdict == "failed"
        finally:
            server.close()
            filler.close()
