"""The callback bridge's host side against real components: a real aiohttp upstream on
loopback that records what reached it, the Bridge served over real sockets (``SocketStream``,
the same ByteStream the agent's tunnel provides), and real clients (aiohttp, raw sockets,
urllib, curl). No sandbox is needed: the agent only carries the bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sandlot.channel.stream import SocketStream
from sandlot.egress.bridge import Bridge, BridgeConfig, BridgeRecord

TOKEN = "bridge-token-0123456789abcdef"
SECRET = "upstream-secret-value-42"
ROUTES = [
    ["POST", "/runs/*/events"],
    ["GET", "/runs/*"],
    ["HEAD", "/runs/*"],
    ["*", "/echo/**"],
    ["GET", "/slow"],
    ["GET", "/redirect"],
    ["GET", "/etag"],
    ["GET", "/big"],
    ["GET", "/gzip"],
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Upstream:
    url: str
    hits: list[dict[str, Any]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)


UP = web.AppKey("up", Upstream)


@dataclass
class Served:
    url: str
    port: int
    bridge: Bridge
    upstream: Upstream
    records: list[BridgeRecord]


async def _upstream_handler(request: web.Request) -> web.StreamResponse:
    up = request.app[UP]
    body = await request.read()
    up.hits.append(
        {
            "method": request.method,
            "path_qs": request.path_qs,
            "headers": [(k.lower(), v) for k, v in request.headers.items()],
            "body": body,
        }
    )
    up.started.set()
    tail = request.match_info["tail"]
    if tail == "slow":
        await asyncio.sleep(float(request.query.get("s", "1")))
    elif tail == "redirect":
        raise web.HTTPFound(f"{up.url}/api/runs/1")
    elif tail == "etag":
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.json_response({"v": 1}, headers={"ETag": '"v1"', "Last-Modified": "x"})
    elif tail == "big":
        return web.Response(body=b"x" * (16 * 1024 * 1024 + 1))
    elif tail == "gzip":
        return web.Response(
            body=gzip.compress(b'{"zipped": true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    return web.json_response(
        {"method": request.method, "path_qs": request.path_qs, "body": body.decode()},
        headers={"X-Upstream-Private": "internal", "Set-Cookie": "s=1"},
    )


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    up = Upstream(f"http://127.0.0.1:{sock.getsockname()[1]}")
    app = web.Application()
    app[UP] = up
    app.router.add_route("*", "/api/{tail:.*}", _upstream_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    yield up
    await runner.cleanup()


@pytest.fixture
async def serve(upstream: Upstream) -> AsyncIterator[Callable[..., Any]]:
    """serve(**config overrides) -> Served: a Bridge on a loopback port."""
    cleanups: list[Callable[[], Any]] = []

    async def start(**overrides: Any) -> Served:
        config = BridgeConfig(
            **{
                "target": f"{upstream.url}/api/",
                "headers": {"Authorization": {"secret": "UPSTREAM"}},
                "routes": ROUTES,
                **overrides,
            }
        )
        records: list[BridgeRecord] = []
        bridge = Bridge(
            config,
            token=TOKEN,
            headers={"Authorization": f"Bearer {SECRET}"},
            identity={"X-Sandlot-Sandbox": "sb-123"},
            on_record=records.append,
        )
        server = await asyncio.start_server(
            lambda r, w: bridge.serve(SocketStream(r, w)), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]

        async def cleanup() -> None:
            server.close()
            await bridge.aclose()

        cleanups.append(cleanup)
        return Served(f"http://127.0.0.1:{port}", port, bridge, upstream, records)

    yield start
    for cleanup in cleanups:
        await cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _header(hit: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in hit["headers"] if k == name]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send raw bytes, read one response; (status, headers, body, closed by the bridge)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        status, headers, body = await _read_response(reader)
        closed = False
        if headers.get("connection") == "close":
            closed = await asyncio.wait_for(reader.read(1), 2) == b""
        return status, headers, body, closed
    finally:
        writer.close()


def _get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: bridge", f"Authorization: Bearer {TOKEN}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _check_error(status: int, headers: Any, body: bytes, want: int, rule: str) -> None:
    assert status == want, body
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    doc = json.loads(body)
    assert set(doc) == {"error", "message", "rule"}
    assert doc["rule"] == rule


# -- forwarding ---------------------------------------------------------------------------------


async def test_get_is_forwarded_with_credentials_identity_and_allowlisted_headers(serve, client):
    s = await serve()
    async with client.get(
        f"{s.url}/runs/7?x=1&y=%20z",
        headers={**AUTH, "Accept": "application/json", "X-Custom": "no", "Cookie": "c=1"},
    ) as r:
        assert r.status == 200
        assert await r.json() == {"method": "GET", "path_qs": "/api/runs/7?x=1&y=%20z", "body": ""}
        assert r.headers["Content-Type"].startswith("application/json")
        assert int(r.headers["Content-Length"]) == len(await r.read())
        assert "X-Upstream-Private" not in r.headers and "Set-Cookie" not in r.headers
    (hit,) = s.upstream.hits
    assert _header(hit, "authorization") == [f"Bearer {SECRET}"]  # not the sandbox's token
    assert _header(hit, "x-sandlot-sandbox") == ["sb-123"]
    assert _header(hit, "accept") == ["application/json"]
    assert _header(hit, "accept-encoding") == ["identity"]
    assert not _header(hit, "x-custom") and not _header(hit, "cookie")
    assert TOKEN not in json.dumps(hit["headers"])
    (rec,) = s.records
    assert (rec.method, rec.path, rec.status, rec.rule) == ("GET", "/runs/7", 200, "GET /runs/*")
    assert 0 < rec.duration < 5


async def test_post_json_body_and_token_header_variant(serve, client):
    s = await serve()
    async with client.post(
        f"{s.url}/runs/7/events",
        json={"event": "done", "n": 3},
        headers={"X-Sandlot-Bridge-Token": TOKEN},
    ) as r:
        assert r.status == 200
        assert json.loads((await r.json())["body"]) == {"event": "done", "n": 3}
    (hit,) = s.upstream.hits
    assert hit["path_qs"] == "/api/runs/7/events"
    assert _header(hit, "content-type") == ["application/json"]
    assert not _header(hit, "x-sandlot-bridge-token")
    assert s.records[0].rule == "POST /runs/*/events"


async def test_the_sandbox_cannot_override_credentials_or_identity(serve, client):
    s = await serve(
        headers={"X-Api-Key": {"secret": "KEY"}},
        request_headers=["accept", "content-type", "x-api-key", "x-sandlot-sandbox"],
    )
    bridge = Bridge(
        s.bridge.config,
        token=TOKEN,
        headers={"X-Api-Key": "real-key"},
        identity={"X-Sandlot-Sandbox": "sb-123"},
    )
    server = await asyncio.start_server(
        lambda r, w: bridge.serve(SocketStream(r, w)), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        headers = {**AUTH, "X-Api-Key": "fake", "x-sandlot-sandbox": "evil"}
        async with client.get(f"http://127.0.0.1:{port}/runs/1", headers=headers) as r:
            assert r.status == 200
    finally:
        server.close()
        await bridge.aclose()
    (hit,) = s.upstream.hits
    assert _header(hit, "x-api-key") == ["real-key"]
    assert _header(hit, "x-sandlot-sandbox") == ["sb-123"]
    assert not _header(hit, "authorization")  # the sandbox's Authorization is never copied


async def test_any_method_route_and_double_star(serve, client):
    s = await serve()
    async with client.delete(f"{s.url}/echo/a/b/c", headers=AUTH) as r:
        assert r.status == 200
        assert (await r.json())["path_qs"] == "/api/echo/a/b/c"
    async with client.get(f"{s.url}/echo", headers=AUTH) as r:
        assert r.status == 403  # ** needs at least one more segment
    assert s.records[0].rule == "* /echo/**"


async def test_redirects_are_returned_not_followed(serve, client):
    s = await serve()
    async with client.get(f"{s.url}/redirect", headers=AUTH, allow_redirects=False) as r:
        assert r.status == 302
        assert "Location" not in r.headers  # not allowlisted by default
    s2 = await serve(response_headers=["content-type", "location"])
    async with client.get(f"{s2.url}/redirect", headers=AUTH, allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/runs/1"  # the target's own URL, as a bridge path
    assert [h["path_qs"] for h in s.upstream.hits] == ["/api/redirect", "/api/redirect"]


async def test_etag_conditional_and_head(serve, client):
    s = await serve()
    async with client.get(f"{s.url}/etag", headers=AUTH) as r:
        assert r.status == 200
        assert r.headers["ETag"] == '"v1"' and r.headers["Last-Modified"] == "x"
    async with client.get(f"{s.url}/etag", headers={**AUTH, "If-None-Match": '"v1"'}) as r:
        assert r.status == 304 and r.headers["ETag"] == '"v1"'
    async with client.head(f"{s.url}/runs/1", headers=AUTH) as r:
        assert r.status == 200 and await r.read() == b""
    assert [h["method"] for h in s.upstream.hits] == ["GET", "GET", "HEAD"]


async def test_encoded_bodies_pass_through_with_their_encoding(serve, client):
    s = await serve()
    async with client.get(f"{s.url}/gzip", headers=AUTH, auto_decompress=False) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await r.read()) == b'{"zipped": true}'


async def test_keep_alive_and_pipelining_on_one_connection(serve):
    s = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    try:
        for path in ("/runs/1", "/nope", "/runs/2"):
            writer.write(_get(path))
            status, _, _ = await _read_response(reader)
            assert status == (403 if path == "/nope" else 200)
        # refused with a body: the body is read and dropped, the connection carries on
        body = b'{"a": 1}'
        writer.write(
            b"POST /runs/1/events HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status, _, _ = await _read_response(reader)
        assert status == 401
        writer.write(_get("/runs/3") + _get("/runs/4"))  # pipelined
        bodies = [json.loads((await _read_response(reader))[2]) for _ in range(2)]
        assert [b["path_qs"] for b in bodies] == ["/api/runs/3", "/api/runs/4"]
    finally:
        writer.close()
    assert [r.status for r in s.records] == [200, 403, 200, 401, 200, 200]


async def test_expect_100_continue(serve):
    s = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    try:
        body = b'{"x": 1}'
        writer.write(
            b"POST /runs/1/events HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % (TOKEN.encode(), len(body))
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        writer.write(body)
        status, _, data = await _read_response(reader)
        assert status == 200 and json.loads(data)["body"] == body.decode()
    finally:
        writer.close()


async def test_urllib_and_curl_clients(serve):
    s = await serve()

    def fetch() -> tuple[int, bytes]:
        req = urllib.request.Request(f"{s.url}/runs/5", headers=AUTH)
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()

    status, data = await asyncio.to_thread(fetch)
    assert status == 200 and json.loads(data)["path_qs"] == "/api/runs/5"

    def refused() -> int:
        req = urllib.request.Request(f"{s.url}/runs/5")
        try:
            urllib.request.urlopen(req, timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 0

    assert await asyncio.to_thread(refused) == 401

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        '{"from": "curl"}',
        f"{s.url}/runs/9/events",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    body, code = out.rsplit(b"\n", 1)
    assert code == b"200" and json.loads(json.loads(body)["body"]) == {"from": "curl"}


# -- refusals -----------------------------------------------------------------------------------


async def test_401_missing_and_wrong_token(serve, client):
    s = await serve()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        async with client.get(f"{s.url}/runs/1", headers=headers) as r:
            _check_error(r.status, r.headers, await r.read(), 401, "token")
            assert r.headers["WWW-Authenticate"] == "Bearer"
    async with client.get(f"{s.url}/runs/1", headers={"X-Sandlot-Bridge-Token": "x"}) as r:
        assert r.status == 401
    assert s.upstream.hits == []
    assert [r.rule for r in s.records] == ["token"] * 4


async def test_403_route_and_method(serve, client):
    s = await serve()
    async with client.get(f"{s.url}/admin", headers=AUTH) as r:
        _check_error(r.status, r.headers, await r.read(), 403, "route")
    async with client.delete(f"{s.url}/runs/1", headers=AUTH) as r:
        _check_error(r.status, r.headers, await r.read(), 403, "route")
    async with client.get(f"{s.url}/runs/1/events", headers=AUTH) as r:
        assert r.status == 403  # * is one segment
    assert s.upstream.hits == []


@pytest.mark.parametrize(
    "path",
    [
        "/runs/../admin",
        "/runs/..",
        "/runs/./1",
        "/runs/%2e%2e",
        "/runs/%2E%2e/x",
        "/runs/a%2fb",
        "/runs/a%2Fb",
        "/runs/a%5cb",
        "/runs/a\\b",
        "//runs/1",
        "/runs//1",
        "/runs/a%00",
        "/runs/a%zz",
        "http://127.0.0.1/runs/1",
        "/runs/1#x",
        # issue 15, hole 7: upstreams that drop ';' parameters or decode twice read these as '..'
        "/runs/..;/admin",
        "/runs/..;x=1",
        "/runs/.%2e;",
        "/runs/%252e%252e",
        "/runs/%25252e%25252e",
        "/runs/1/..%3B/x",
        "/runs/a%252fb",
        "/runs/;x",
        "/runs/%E2%80%A5",
    ],
)
async def test_path_tricks_are_refused(serve, path):
    s = await serve()
    status, headers, body, _ = await _raw(s.port, _get(path))
    _check_error(status, headers, body, 400, "path")
    assert s.upstream.hits == []
    assert s.records[0].rule == "path"


async def test_the_canonical_path_is_what_is_routed_and_forwarded(serve):
    s = await serve(routes=[["GET", "/runs/a~b"], ["GET", "/echo/*"]])
    cases = [
        ("/runs/a%7Eb?x=%2e%2e/&y=..;", "/api/runs/a~b?x=%2e%2e/&y=..;"),  # query as sent
        ("/echo/x;v=1", "/api/echo/x;v=1"),
        ("/echo/%2541", "/api/echo/%2541"),
        ("/echo/{x}", "/api/echo/%7Bx%7D"),
    ]
    for path, forwarded in cases:
        status, _, body, _ = await _raw(s.port, _get(path))
        assert status == 200, body
        assert s.upstream.hits[-1]["path_qs"] == forwarded
    assert [r.path for r in s.records] == [path.split("?")[0] for path, _ in cases]


async def test_non_ascii_and_garbage_are_malformed_and_closed(serve):
    s = await serve()
    status, headers, body, closed = await _raw(
        s.port, _get("/runs/\xe9".encode().decode("latin-1"))
    )
    _check_error(status, headers, body, 400, "malformed")
    assert closed
    status, headers, body, closed = await _raw(s.port, b"NOT HTTP AT ALL\r\n\r\n")
    _check_error(status, headers, body, 400, "malformed")
    assert closed and headers["connection"] == "close"
    status, _, _, closed = await _raw(s.port, _get("/runs/1", "X-Big: " + "a" * 40000))
    assert status == 431 and closed
    assert s.upstream.hits == []


async def test_413_by_content_length(serve, client):
    s = await serve(body_limit=1000)
    async with client.post(f"{s.url}/runs/1/events", json={"x": "a" * 2000}, headers=AUTH) as r:
        _check_error(r.status, r.headers, await r.read(), 413, "body_limit")
        assert r.headers["Connection"] == "close"
    async with client.post(f"{s.url}/runs/1/events", json={"x": "a" * 900}, headers=AUTH) as r:
        assert r.status == 200
    assert len(s.upstream.hits) == 1


async def test_413_chunked_stops_early(serve):
    s = await serve(body_limit=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    try:
        writer.write(
            b"POST /runs/1/events HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" % TOKEN.encode()
        )
        chunk = b"a" * 600
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2)  # 1200 bytes, never terminated
        status, headers, body = await asyncio.wait_for(_read_response(reader), 5)
        _check_error(status, headers, body, 413, "body_limit")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    finally:
        writer.close()
    assert s.upstream.hits == []


async def test_415_and_get_with_body(serve, client):
    s = await serve()
    url = f"{s.url}/runs/1/events"
    async with client.post(url, data=b"hello", headers={**AUTH, "Content-Type": "text/plain"}) as r:
        _check_error(r.status, r.headers, await r.read(), 415, "content_type")
    async with client.post(
        url, data=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
    ) as r:
        _check_error(r.status, r.headers, await r.read(), 415, "content_type")
    async with client.post(url, data=b'{"a": 1}', headers=AUTH) as r:  # no content type
        assert r.status == 415
    ct = {"Content-Type": "application/vnd.sandlot.event+json; charset=utf-8"}
    async with client.post(url, data=b'{"a": 1}', headers={**AUTH, **ct}) as r:
        assert r.status == 200
    async with client.post(url, headers=AUTH) as r:  # empty body: no content type needed
        assert r.status == 200
    async with client.get(f"{s.url}/runs/1", data=b"{}", headers=AUTH) as r:
        _check_error(r.status, r.headers, await r.read(), 400, "body")
    assert len(s.upstream.hits) == 2


async def test_503_when_the_queue_is_full(serve, client):
    s = await serve(queue=1)
    first = asyncio.ensure_future(client.get(f"{s.url}/slow?s=0.5", headers=AUTH))
    await asyncio.wait_for(s.upstream.started.wait(), 5)
    async with client.get(f"{s.url}/runs/1", headers=AUTH) as r:
        _check_error(r.status, r.headers, await r.read(), 503, "queue")
        assert r.headers["Retry-After"] == "1"
    response = await first
    assert response.status == 200
    response.release()
    async with client.get(f"{s.url}/runs/1", headers=AUTH) as r:  # a free slot again
        assert r.status == 200
    assert sorted(r.rule for r in s.records) == ["GET /runs/*", "GET /slow", "queue"]


async def test_504_when_upstream_is_slow(serve, client):
    s = await serve(timeout=0.2)
    async with client.get(f"{s.url}/slow?s=0.6", headers=AUTH) as r:
        _check_error(r.status, r.headers, await r.read(), 504, "timeout")
    assert s.records[0].status == 504 and s.records[0].rule == "timeout"


async def test_502_when_upstream_is_unreachable_or_too_large(serve, client):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()
    s = await serve(target=f"http://127.0.0.1:{closed_port}")
    async with client.get(f"{s.url}/runs/1", headers=AUTH) as r:
        _check_error(r.status, r.headers, await r.read(), 502, "upstream")
    s2 = await serve()
    async with client.get(f"{s2.url}/big", headers=AUTH) as r:
        _check_error(r.status, r.headers, await r.read(), 502, "upstream")


async def test_records_never_carry_credentials(serve, client):
    s = await serve()
    async with client.post(
        f"{s.url}/runs/1/events?token={TOKEN}", json={"secret": SECRET}, headers=AUTH
    ) as r:
        assert r.status == 200
    async with client.get(f"{s.url}/admin", headers=AUTH) as r:
        assert r.status == 403
    async with client.get(f"{s.url}/runs/1", headers={"Authorization": f"Bearer {SECRET}"}) as r:
        assert r.status == 401
    events = [r.to_event() for r in s.records]
    assert [set(e) for e in events] == [{"method", "path", "status", "duration", "rule"}] * 3
    assert events[0]["path"] == "/runs/1/events"  # no query
    text = json.dumps(events)
    assert TOKEN not in text and SECRET not in text
