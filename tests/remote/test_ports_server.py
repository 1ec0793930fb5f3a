"""Exposed ports through the server, as only the server does them: keys and tenants, the key
kept out of the sandbox, signed URLs, what passes through intact, and what a dead port, a bad
port or a killed sandbox answers. Real server process, real servers inside real sandboxes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from integration.ports_helpers import WS_ECHO, server_script

import sandlot
from sandlot.server.signing import SECRET_FILE, Grant, Signer

from .server import ServerProcess

# Answers every request with what it received: method, target, headers, and the body's
# SHA-256 and size (read as it comes, chunked or not). /stream sends one chunk, then hangs.
ECHO = r"""
import hashlib, json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def body(self):
        digest, size = hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                data = self.rfile.read(n)
                self.rfile.readline()
                digest.update(data)
                size += len(data)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 65536))
                digest.update(data)
                size += len(data)
                left -= len(data)
        return digest.hexdigest(), size

    def answer(self):
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nfirst\r\n")
            self.wfile.flush()
            time.sleep(3600)
            return
        digest, size = self.body()
        body = json.dumps({
            "method": self.command,
            "target": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "sha256": digest,
            "size": size,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", PORT), Echo).serve_forever()
"""
ECHO_PORT, WS_PORT = 8080, 8765


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def call(
    method: str,
    url: str,
    key: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request; status, headers and the whole body (errors are answers too)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=60) as answer:
            return answer.status, _lower(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers), error.read()


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def echoed(url: str, key: str | None = None, **kwargs: Any) -> dict[str, Any]:
    status, _, body = call(kwargs.pop("method", "GET"), url, key, **kwargs)
    assert status == 200, body
    found: dict[str, Any] = json.loads(body)
    found["headers"] = dict(found["headers"])
    return found


def error_of(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str, str]:
    status, _, body = answer
    parsed = json.loads(body)
    return status, parsed["code"], parsed["message"]


async def ws_talk(url: str, key: str | None = None, messages: tuple[Any, ...] = ()) -> list[Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url.replace("http", "ws", 1), headers=headers) as ws,
    ):
        out = []
        for message in messages:
            if isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_bytes(message)
            out.append((await ws.receive()).data)
        return out


def ws_refusal(url: str, key: str | None = None) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        asyncio.run(ws_talk(url, key))
    return caught.value.status


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    home = Path(tempfile.mkdtemp(prefix="slports-", dir="/tmp"))
    process = ServerProcess(home)
    alice = process.keys("create", "--name", "alice")
    bob = process.keys("create", "--name", "bob")
    process.start()
    yield process, {"alice": alice, "bob": bob}
    process.stop()


def _serve(sb: sandlot.Sandbox, name: str, source: str, port: int) -> None:
    sb.files.write(f"/tmp/{name}.py", server_script(source, port))
    sb.commands.run(f"python3 /tmp/{name}.py", background=True, timeout=None)


@pytest.fixture(scope="module")
def echo(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> Iterator[tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str]]:
    """Alice's sandbox with the echo server on 8080 and a WebSocket echo on 8765."""
    server, keys = keyed
    client = sandlot.Client(url=server.url, api_key=keys["alice"])
    with sandlot.Sandbox.create(client=client) as sb:
        _serve(sb, "echo", ECHO, ECHO_PORT)
        _serve(sb, "ws", WS_ECHO, WS_PORT)
        url = sb.expose(ECHO_PORT)
        for _ in range(200):  # both start in the background
            if call("GET", url, keys["alice"])[0] == 200:
                break
            time.sleep(0.05)
        yield server, keys, sb, url


def _expose(server: ServerProcess, sandbox_id: str, port: Any, key: str, query: str = "") -> Any:
    url = f"{server.url}/v1/sandboxes/{sandbox_id}/ports/{port}{query}"
    return call("POST", url, key)


def test_expose_names_a_url_under_the_server(
    echo: tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str],
) -> None:
    server, keys, sb, url = echo
    assert url == f"{server.url}/v1/sandboxes/{sb.id}/ports/{ECHO_PORT}/"
    status, _, body = _expose(server, sb.id, ECHO_PORT, keys["alice"])
    assert status == 200 and json.loads(body) == {"url": url, "port": ECHO_PORT}
    # Built from the Host the caller used, as a proxy in front passes it on.
    status, _, body = call(
        "POST",
        f"{server.url}/v1/sandboxes/{sb.id}/ports/{ECHO_PORT}",
        keys["alice"],
        headers={"Host": "sandlot.example.org:8443"},
    )
    assert json.loads(body)["url"].startswith("http://sandlot.example.org:8443/v1/sandboxes/")
    # Without its slash, a signed URL sends a browser to the one with it.
    signed = json.loads(_expose(server, sb.id, ECHO_PORT, keys["alice"], "?expires_in=60")[2])
    token = signed["signed_url"].rstrip("/").rsplit("/", 1)[1]
    status, headers, _ = call("GET", signed["signed_url"].rstrip("/") + "?a=1")
    assert (status, headers["location"]) == (307, f"{token}/?a=1")
    # The keyed URL without it is the expose operation itself: POST only.
    assert call("GET", url.rstrip("/"), keys["alice"])[0] == 405


def test_another_tenant_gets_404_and_no_key_401(
    echo: tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str],
) -> None:
    server, keys, sb, url = echo
    status, code, _ = error_of(_expose(server, sb.id, ECHO_PORT, keys["bob"]))
    assert (status, code) == (404, "sandbox_not_found")
    for method in ("GET", "POST", "DELETE"):
        assert error_of(call(method, url + "x", keys["bob"]))[:2] == (404, "sandbox_not_found")
        assert error_of(call(method, url + "x"))[:2] == (401, "unauthenticated")
    assert error_of(_expose(server, sb.id, ECHO_PORT, ""))[:2] == (401, "unauthenticated")
    ws = f"{server.url}/v1/sandboxes/{sb.id}/ports/{WS_PORT}/"
    assert ws_refusal(ws, keys["bob"]) == 404
    assert ws_refusal(ws) == 401
    assert ws_refusal(ws, "sl_wrong_key") == 401
    # With the right key, the same WebSocket works.
    assert asyncio.run(ws_talk(ws, keys["alice"], ("hi", b"\x00\xff"))) == ["hi", b"\x00\xff"]


def test_the_sandlot_key_never_reaches_the_sandbox(
    echo: tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str],
) -> None:
    server, keys, sb, url = echo
    # http.client, not urllib: urllib replaces a Connection header with its own.
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=60)
    sent = {"Authorization": f"Bearer {keys['alice']}", "X-Custom": "kept", "Cookie": "app=1"}
    conn.request(
        "GET", parts.path + "headers", headers={**sent, "Connection": "X-Hop", "X-Hop": "no"}
    )
    seen = json.loads(conn.getresponse().read())
    conn.close()
    headers = dict(seen["headers"])
    assert "authorization" not in headers
    assert keys["alice"] not in json.dumps(seen)
    assert headers["host"] == f"127.0.0.1:{ECHO_PORT}"
    assert headers["x-custom"] == "kept" and headers["cookie"] == "app=1"
    assert "x-hop" not in headers  # named by Connection: hop-by-hop
    assert headers["x-forwarded-prefix"] == f"/v1/sandboxes/{sb.id}/ports/{ECHO_PORT}"
    assert headers["x-forwarded-host"] == urllib.parse.urlsplit(server.url).netloc
    # Through a signed URL the app's own Authorization passes, a sandlot key never does.
    signed = json.loads(_expose(server, sb.id, ECHO_PORT, keys["alice"], "?expires_in=60")[2])
    assert "authorization" not in echoed(signed["signed_url"], keys["alice"])["headers"]
    app_auth = {"Authorization": "Basic YXBwOnB3"}
    assert echoed(signed["signed_url"], headers=app_auth)["headers"]["authorization"] == (
        "Basic YXBwOnB3"
    )


def test_paths_queries_and_bodies_pass_through_intact(
    echo: tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str],
) -> None:
    _, keys, _, url = echo
    target = "/a%2Fb/c%20d/%C3%A9?q=1&q=2&s=%2F%20x&u=%E2%9C%93&empty="
    seen = echoed(url + target.lstrip("/"), keys["alice"])
    assert (seen["method"], seen["target"]) == ("GET", target)
    assert echoed(url, keys["alice"])["target"] == "/"
    payload = os.urandom(5 * 1024 * 1024 + 7)
    digest = hashlib.sha256(payload).hexdigest()
    raw = {"Content-Type": "application/octet-stream"}
    # A declared length, then chunked (no length up front): both arrive whole.
    for method, body in (("POST", payload), ("PUT", iter([payload[:1000], payload[1000:]]))):
        seen = echoed(url + "upload?x=1", keys["alice"], method=method, body=body, headers=raw)
        assert (seen["method"], seen["target"], seen["sha256"], seen["size"]) == (
            method,
            "/upload?x=1",
            digest,
            len(payload),
        )
    small = json.dumps({"a": [1, 2, 3]}).encode()
    seen = echoed(
        url + "json",
        keys["alice"],
        method="POST",
        body=small,
        headers={"Content-Type": "application/json"},
    )
    assert (seen["sha256"], seen["size"]) == (hashlib.sha256(small).hexdigest(), len(small))
    # Past the server's own 32 MiB limit for JSON, in a type that is not octet-stream: the
    # proxy streams it all the same.
    text = b"line of text\n" * (3 * 1024 * 1024)
    seen = echoed(
        url + "big", keys["alice"], method="POST", body=text, headers={"Content-Type": "text/plain"}
    )
    assert (seen["sha256"], seen["size"]) == (hashlib.sha256(text).hexdigest(), len(text))
    status, headers, body = call("HEAD", url + "head", keys["alice"])
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_a_signed_url_works_without_a_key_until_it_expires(
    echo: tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str],
) -> None:
    server, keys, sb, _ = echo
    before = time.time()
    status, _, body = _expose(server, sb.id, ECHO_PORT, keys["alice"], "?expires_in=600")
    assert status == 200
    answer = json.loads(body)
    signed = answer["signed_url"]
    assert signed.startswith(f"{server.url}/v1/ports/") and signed.endswith("/")
    expires = datetime.fromisoformat(answer["expires_at"]).timestamp()
    assert before + 599 <= expires <= time.time() + 600
    assert echoed(signed + "p?a=b")["target"] == "/p?a=b"
    # The token is for its port only: WebSocket on the other port needs its own.
    ws_signed = json.loads(_expose(server, sb.id, WS_PORT, keys["alice"], "?expires_in=60")[2])
    assert asyncio.run(ws_talk(ws_signed["signed_url"], None, ("signed",))) == ["signed"]

    token = signed.rstrip("/").rsplit("/", 1)[1]
    payload, mac = token.split(".")
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    other_port = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    other_port["p"] = WS_PORT
    forgeries = [
        f"{payload}.{flipped}",  # a wrong MAC
        f"{_json_b64(other_port)}.{mac}",  # another port, the old MAC
        "not-a-token",
        f"{payload}.",
    ]
    for forged in forgeries:
        assert error_of(call("GET", f"{server.url}/v1/ports/{forged}/"))[:2] == (
            401,
            "unauthenticated",
        ), forged
        assert ws_refusal(f"{server.url}/v1/ports/{forged}/") == 401

    # Tokens made with the server's own secret: expired, and for another tenant.
    secret = server.home / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    signer = Signer(server.home)
    grant = Grant(sb.id, ECHO_PORT, other_port["t"], int(time.time()) - 1)
    expired = signer.sign(grant)
    assert error_of(call("GET", f"{server.url}/v1/ports/{expired}/"))[:2] == (403, "forbidden")
    assert ws_refusal(f"{server.url}/v1/ports/{expired}/") == 403
    stranger = signer.sign(Grant(sb.id, ECHO_PORT, "t-stranger", int(time.time()) + 60))
    status, code, _ = error_of(call("GET", f"{server.url}/v1/ports/{stranger}/"))
    assert (status, code) == (404, "sandbox_not_found")

    for bad in ("0", "-5", str(7 * 86400 + 1), "soon"):
        status, code, _ = error_of(
            _expose(server, sb.id, ECHO_PORT, keys["alice"], f"?expires_in={bad}")
        )
        assert (status, code) == (422, "invalid_argument"), bad


def _json_b64(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_port_nothing_listens_on_answers_502_json(
    echo: tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str],
) -> None:
    server, keys, sb, _ = echo
    url = f"{server.url}/v1/sandboxes/{sb.id}/ports/8999/"
    for method in ("GET", "POST"):
        status, code, message = error_of(call(method, url + "x?y=1", keys["alice"], body=b"z"))
        assert (status, code) == (502, "port_error") and "8999" in message
    signed = json.loads(_expose(server, sb.id, 8999, keys["alice"], "?expires_in=60")[2])
    status, code, message = error_of(call("GET", signed["signed_url"]))
    assert (status, code) == (502, "port_error") and "8999" in message
    assert ws_refusal(url, keys["alice"]) == 502


def test_bad_ports_are_refused_with_422(
    echo: tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str],
) -> None:
    server, keys, sb, _ = echo
    for bad in (0, 65536, -1, "http", "8o"):
        status, code, _ = error_of(_expose(server, sb.id, bad, keys["alice"]))
        assert (status, code) == (422, "invalid_argument"), bad
        url = f"{server.url}/v1/sandboxes/{sb.id}/ports/{bad}/x"
        assert error_of(call("GET", url, keys["alice"]))[:2] == (422, "invalid_argument")
    assert ws_refusal(f"{server.url}/v1/sandboxes/{sb.id}/ports/0/", keys["alice"]) == 422


def test_bytes_through_ports_are_counted(
    echo: tuple[ServerProcess, dict[str, str], sandlot.Sandbox, str],
) -> None:
    server, keys, _, url = echo
    echoed(url, keys["alice"])
    metrics = call("GET", f"{server.url}/metrics")[2].decode()
    counted = {
        line.split('"')[1]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("sandlot_port_bytes_total{")
    }
    assert counted["to_sandbox"] > 0 and counted["from_sandbox"] > 0


def test_a_killed_sandbox_cuts_its_connections_and_its_urls(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = keyed
    client = sandlot.Client(url=server.url, api_key=keys["alice"])
    sb = sandlot.Sandbox.create(client=client)
    _serve(sb, "echo", ECHO, ECHO_PORT)
    _serve(sb, "ws", WS_ECHO, WS_PORT)
    url = sb.expose(ECHO_PORT)
    signed = json.loads(_expose(server, sb.id, ECHO_PORT, keys["alice"], "?expires_in=60")[2])
    wait_for_http_with_key(url, keys["alice"])

    async def cut() -> tuple[Any, Any]:
        headers = {"Authorization": f"Bearer {keys['alice']}"}
        async with aiohttp.ClientSession() as session:
            ws_url = f"{server.url}/v1/sandboxes/{sb.id}/ports/{WS_PORT}/".replace("http", "ws")
            for _ in range(200):
                try:
                    ws = await session.ws_connect(ws_url, headers=headers)
                    break
                except aiohttp.WSServerHandshakeError:
                    await asyncio.sleep(0.05)
            await ws.send_str("before")
            assert (await ws.receive()).data == "before"
            stream = await session.get(url + "stream", headers=headers)
            assert stream.status == 200
            assert await stream.content.readexactly(5) == b"first"
            await asyncio.to_thread(sb.kill)
            closed = await ws.receive()
            try:
                rest: Any = await stream.content.read()
            except aiohttp.ClientPayloadError as exc:
                rest = exc
            return closed, rest

    closed, rest = asyncio.run(cut())
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert isinstance(rest, aiohttp.ClientPayloadError)  # cut, not a complete answer
    for answer in (call("GET", url, keys["alice"]), call("GET", signed["signed_url"])):
        assert error_of(answer)[:2] == (410, "sandbox_closed")


def wait_for_http_with_key(url: str, key: str) -> None:
    for _ in range(200):
        if call("GET", url, key)[0] == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


def test_the_signing_secret_is_the_owners_alone(tmp_path: Path) -> None:
    signer = Signer(tmp_path)
    token = signer.sign(Grant("sb-x", 80, "local", int(time.time()) + 60))
    secret = tmp_path / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert Signer(tmp_path).verify(token).port == 80  # the same secret, read back
    secret.chmod(0o644)
    with pytest.raises(sandlot.ServerError, match="readable by others"):
        Signer(tmp_path).sign(Grant("sb-x", 80, "local", int(time.time()) + 60))
