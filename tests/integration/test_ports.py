"""Exposed ports: a server inside the sandbox, reached from the host through ``expose``
although the sandbox has no network. Real servers, real clients, real sockets.

Written against the ``sb`` fixture and the public SDK only, so the docker, ssh and remote
suites run these same tests on their providers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import pytest

import sandlot
from sandlot.errors import InvalidArgumentError

from .ports_helpers import TCP_ECHO, WS_ECHO, server_script, wait_for_http


def _start(sb: sandlot.Sandbox, name: str, source: str, port: int) -> None:
    sb.files.write(f"/tmp/{name}.py", server_script(source, port))
    sb.commands.run(f"python3 /tmp/{name}.py", background=True, timeout=None)


def _host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None and parsed.port is not None
    return parsed.hostname, parsed.port


def test_http_server_in_the_sandbox_is_reached_through_expose(sb: sandlot.Sandbox) -> None:
    sb.files.write("/workspace/site/index.html", "<h1>hello from inside</h1>")
    sb.commands.run(
        "cd /workspace/site && python3 -m http.server 8000 --bind 127.0.0.1",
        background=True,
        timeout=None,
    )
    url = sb.expose(8000)
    assert wait_for_http(url + "/index.html") == b"<h1>hello from inside</h1>"
    # The same port exposed twice is the same URL.
    assert sb.expose(8000) == url


def test_the_sandbox_itself_still_has_no_network(sb: sandlot.Sandbox) -> None:
    sb.expose(8000)
    probe = "python3 -c 'import socket; socket.create_connection((\"10.0.0.1\", 80), timeout=2)'"
    assert sb.commands.run(probe).exit_code != 0


def test_a_large_download_arrives_intact(sb: sandlot.Sandbox) -> None:
    sb.commands.run("head -c 30000000 /dev/urandom > /workspace/big.bin")
    digest = sb.commands.run("sha256sum /workspace/big.bin").stdout.split()[0]
    sb.commands.run(
        "cd /workspace && python3 -m http.server 8001 --bind 127.0.0.1",
        background=True,
        timeout=None,
    )
    url = sb.expose(8001)
    body = wait_for_http(url + "/big.bin")
    assert len(body) == 30_000_000
    assert hashlib.sha256(body).hexdigest() == digest


def test_bytes_flow_both_ways_at_once(sb: sandlot.Sandbox) -> None:
    _start(sb, "echo", TCP_ECHO, 9000)
    url = sb.expose(9000)
    payload = os.urandom(12 * 1024 * 1024)

    async def exchange() -> bytes:
        host, port = _host_port(url)
        for _ in range(200):  # the echo server starts in the background
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"x")
            first = await reader.read(1)
            if first == b"x":
                break
            writer.close()
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the echo server never answered")

        async def send() -> None:
            for i in range(0, len(payload), 1 << 20):
                writer.write(payload[i : i + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        sending = asyncio.ensure_future(send())
        received = bytearray()
        while chunk := await reader.read(1 << 20):
            received += chunk
        await sending
        writer.close()
        return bytes(received)

    assert asyncio.run(exchange()) == payload


def test_websocket_echo(sb: sandlot.Sandbox) -> None:
    _start(sb, "ws", WS_ECHO, 8765)
    url = sb.expose(8765)

    async def talk() -> list[object]:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    ws = await session.ws_connect(url.replace("http", "ws") + "/echo")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the WebSocket server never answered")
            await ws.send_str("hello")
            text = (await ws.receive()).data
            await ws.send_bytes(b"\x00\x01binary")
            data = (await ws.receive()).data
            await ws.close()
            return [text, data]

    assert asyncio.run(talk()) == ["hello", b"\x00\x01binary"]


def test_a_port_nothing_listens_on_gives_a_clean_502(sb: sandlot.Sandbox) -> None:
    url = sb.expose(8999)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url + "/", timeout=10)
    assert caught.value.code == 502
    body = json.loads(caught.value.read())
    assert body["code"] == "port_error"
    assert "8999" in body["message"]


def test_a_port_nothing_listens_on_closes_a_raw_connection(sb: sandlot.Sandbox) -> None:
    host, port = _host_port(sb.expose(8998))
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.settimeout(10)
        assert conn.recv(100) == b""  # closed, nothing sent


def test_bad_ports_are_refused(sb: sandlot.Sandbox) -> None:
    for bad in (0, 65536, -1, "80", 8.0, True):
        with pytest.raises(InvalidArgumentError):
            sb.expose(bad)  # type: ignore[arg-type]


def test_kill_releases_the_port() -> None:
    sb = sandlot.Sandbox.create()
    url = sb.expose(8000)
    sb.kill()
    if "/v1/" in url:
        return  # through a server the URL is a path: it answers 410 (test_ports_server)
    with pytest.raises(OSError):
        socket.create_connection(_host_port(url), timeout=5).close()
