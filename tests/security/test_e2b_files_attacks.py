"""The E2B gateway's file side and user ports, attacked from outside as an E2B client would:
raw HTTP to ``/files``, envd's ``filesystem.Filesystem`` and ``E2b-Sandbox-Port``, with a
valid access token of the attacker's own sandbox.

Blocked: ``..`` and NUL bytes lead nowhere outside the sandbox; a multipart body of 10,000
parts, an upload declared larger than the bound, or larger than the sandbox's disk, is
refused (the server holds none of it); a huge ``depth`` is bounded; a watcher or a sandbox
that is not the token's is not found or not authenticated, another tenant's ones too; the
token never reaches the sandbox's own server.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import NotEnoughSpaceException, Sandbox
from e2b_sandbox import e2b_sandbox, token_for
from remote.server import ServerProcess

import sandlot
from sandlot.providers import quota
from sandlot.server.e2b.files import MAX_PARTS
from sandlot.server.e2b.filesystem import MAX_WATCHERS
from sandlot.server.signing import Signer

pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20
FS = "/filesystem.Filesystem/"
HEADERS_ECHO = r"""
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 8124), H).serve_forever()
"""


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    """A server with two tenants: the attacker's two sandboxes and the victim's one."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="sle2bfa-", dir="/tmp"))
    server = ServerProcess(home).start()
    mine = server.keys("create", "--name", "attacker")
    theirs = server.keys("create", "--name", "victim")
    a = sandlot.Sandbox.create(client=sandlot.Client(url=server.url, api_key=mine))
    b = sandlot.Sandbox.create(client=sandlot.Client(url=server.url, api_key=mine))
    victim = sandlot.Sandbox.create(client=sandlot.Client(url=server.url, api_key=theirs))
    try:
        yield {"server": server, "key": mine, "a": a, "b": b, "victim": victim}
    finally:
        for sb in (a, b, victim):
            sb.kill()
        server.stop()


def _headers(world: dict[str, Any], sandbox_id: str, token_of: str | None = None) -> dict[str, str]:
    token = token_for(world["server"].home, token_of or sandbox_id)
    return {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": "49983", "X-Access-Token": token}


def _rpc(world: dict[str, Any], method: str, body: dict[str, Any], **who: Any) -> httpx.Response:
    sandbox_id = who.get("sandbox_id", world["a"].id)
    headers = _headers(world, sandbox_id, who.get("token_of"))
    return httpx.post(f"{world['server'].url}{FS}{method}", json=body, headers=headers)


@pytest.mark.attack("E2B /files: read the server's secret through .. out of the sandbox")
def test_dot_dot_leads_nowhere_outside(world: dict[str, Any]) -> None:
    signer = Signer(world["server"].home)
    signer.key()  # made by the first use; here at the latest
    secret = signer.path
    url = f"{world['server'].url}/files"
    headers = _headers(world, world["a"].id)
    for path in (f"/workspace/../../../../{secret}", f"../../../../..{secret}"):
        r = httpx.get(url, params={"path": path}, headers=headers)
        assert r.status_code == 404 and secret.read_bytes() not in r.content
        r = _rpc(world, "Stat", {"path": path})
        assert r.status_code == 404


@pytest.mark.attack("E2B /files and Filesystem: NUL bytes in a path")
def test_nul_bytes_are_refused(world: dict[str, Any]) -> None:
    url = f"{world['server'].url}/files"
    headers = _headers(world, world["a"].id)
    r = httpx.get(url, params={"path": "/workspace/a\x00/../../etc/passwd"}, headers=headers)
    assert r.status_code == 400 and r.json()["code"] == 400
    r = httpx.post(url, params={"path": "/workspace/x\x00y"}, content=b"x", headers=headers)
    assert r.status_code == 400
    for method in ("Stat", "ListDir", "MakeDir", "Remove"):
        r = _rpc(world, method, {"path": "/workspace/\x00"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"


@pytest.mark.attack("E2B /files: a multipart upload of 10,000 parts")
def test_ten_thousand_parts_are_refused(world: dict[str, Any]) -> None:
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="/workspace/parts/{i}"\r\n\r\nx\r\n'
        for i in range(10_000)
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    headers = {
        **_headers(world, world["a"].id),
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    r = httpx.post(f"{world['server'].url}/files", content=body, headers=headers, timeout=120)
    assert r.status_code == 400 and "at most" in r.json()["message"]
    written = world["a"].files.list("/workspace/parts")
    assert len(written) <= MAX_PARTS


@pytest.mark.attack("E2B /files: a part whose headers never end, a body without a boundary")
def test_malformed_multipart(world: dict[str, Any]) -> None:
    headers = {**_headers(world, world["a"].id), "Content-Type": "multipart/form-data; boundary=z"}
    body = b"--z\r\nContent-Disposition: form-data; " + b"a" * (1 << 20)
    r = httpx.post(f"{world['server'].url}/files", content=body, headers=headers)
    assert r.status_code == 400
    headers["Content-Type"] = "multipart/form-data"
    r = httpx.post(f"{world['server'].url}/files", content=b"--z--\r\n", headers=headers)
    assert r.status_code == 400


@pytest.mark.attack("E2B /files: an upload declared larger than the bound")
def test_an_upload_over_the_bound_is_refused_unread(world: dict[str, Any]) -> None:
    server = world["server"]
    head = "".join(f"{k}: {v}\r\n" for k, v in _headers(world, world["a"].id).items())
    request = (
        f"POST /files?path=/workspace/huge HTTP/1.1\r\nHost: x\r\n{head}"
        f"Content-Type: application/octet-stream\r\nContent-Length: {1 << 41}\r\n\r\n"
    ).encode() + b"x" * 1024  # far less than declared: the server must not wait for it
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(request)
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"413"


@pytest.mark.attack("E2B files.write: more than the sandbox's disk")
@pytest.mark.skipif(quota.unavailable_reason() is not None, reason="no caps on this host")
def test_an_upload_larger_than_the_disk(world: dict[str, Any]) -> None:
    server = world["server"]
    client = sandlot.Client(url=server.url, api_key=world["key"])
    with sandlot.Sandbox.create(client=client, resources={"disk_mb": 64}) as sb:
        e2b = e2b_sandbox(Sandbox, server, sb.id, world["key"])
        chunks = (b"\x01" * MiB for _ in range(128))
        with pytest.raises(NotEnoughSpaceException):
            e2b.files.write("/workspace/fill.bin", chunks)
        assert e2b.files.write("/workspace/small.txt", "still works").path == "/workspace/small.txt"


@pytest.mark.attack("E2B Filesystem: ListDir with a huge depth")
def test_a_huge_depth_is_bounded(world: dict[str, Any]) -> None:
    world["a"].files.write("/workspace/d/1/2/3/f", b"x")
    r = _rpc(world, "ListDir", {"path": "/workspace/d", "depth": 4294967295})
    assert r.status_code == 200
    assert "/workspace/d/1/2/3/f" in [e["path"] for e in r.json()["entries"]]
    r = _rpc(world, "ListDir", {"path": "/workspace/d", "depth": -1})
    assert r.status_code == 400


@pytest.mark.attack("E2B Filesystem: read or remove another sandbox's watcher by its id")
def test_a_watcher_of_another_sandbox_is_not_found(world: dict[str, Any]) -> None:
    world["a"].files.write("/workspace/w/keep", b"x")
    r = _rpc(world, "CreateWatcher", {"path": "/workspace/w"})
    watcher = r.json()["watcherId"]
    for method in ("GetWatcherEvents", "RemoveWatcher"):
        stolen = _rpc(world, method, {"watcherId": watcher}, sandbox_id=world["b"].id)
        assert stolen.status_code == 404
        stolen = _rpc(
            world,
            method,
            {"watcherId": watcher},
            sandbox_id=world["victim"].id,
            token_of=world["a"].id,
        )
        assert stolen.status_code == 401  # the attacker has no token for it
    assert _rpc(world, "GetWatcherEvents", {"watcherId": watcher}).status_code == 200
    assert _rpc(world, "RemoveWatcher", {"watcherId": watcher}).status_code == 200
    assert _rpc(world, "GetWatcherEvents", {"watcherId": watcher}).status_code == 404


@pytest.mark.attack("E2B Filesystem: a flood of watchers, each listing the folder")
def test_a_flood_of_watchers_is_bounded(world: dict[str, Any]) -> None:
    world["b"].files.write("/workspace/flood/f", b"x")
    made = []
    for _ in range(MAX_WATCHERS):
        r = _rpc(world, "CreateWatcher", {"path": "/workspace/flood"}, sandbox_id=world["b"].id)
        assert r.status_code == 200
        made.append(r.json()["watcherId"])
    r = _rpc(world, "CreateWatcher", {"path": "/workspace/flood"}, sandbox_id=world["b"].id)
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted"
    for watcher in made:
        r = _rpc(world, "RemoveWatcher", {"watcherId": watcher}, sandbox_id=world["b"].id)
        assert r.status_code == 200
    r = _rpc(world, "CreateWatcher", {"path": "/workspace/flood"}, sandbox_id=world["b"].id)
    assert r.status_code == 200  # the count went down with them
    _rpc(world, "RemoveWatcher", r.json(), sandbox_id=world["b"].id)


@pytest.mark.attack("E2B gateway: another tenant's sandbox with a valid token of one's own")
def test_another_tenants_sandbox_with_my_token(world: dict[str, Any]) -> None:
    victim = world["victim"]
    victim.files.write("/workspace/secret.txt", b"the victim's")
    server = world["server"]
    headers = _headers(world, victim.id, token_of=world["a"].id)
    r = httpx.get(f"{server.url}/files", params={"path": "/workspace/secret.txt"}, headers=headers)
    assert r.status_code == 401 and b"victim" not in r.content
    r = httpx.post(
        f"{server.url}/files",
        params={"path": "/workspace/secret.txt"},
        content=b"x",
        headers=headers,
    )
    assert r.status_code == 401
    r = _rpc(world, "ListDir", {"path": "/workspace"}, sandbox_id=victim.id, token_of=world["a"].id)
    assert r.status_code == 401
    r = httpx.get(f"{server.url}/", headers={**headers, "E2b-Sandbox-Port": "8124"})
    assert r.status_code == 401
    assert victim.files.read("/workspace/secret.txt") == "the victim's"


@pytest.mark.attack("E2B user port: the access token reaches the sandbox's server; odd ports")
def test_the_token_stays_out_of_the_sandbox(world: dict[str, Any]) -> None:
    a, server = world["a"], world["server"]
    a.files.write("/tmp/echo.py", HEADERS_ECHO)
    a.commands.run("python3 /tmp/echo.py", background=True, timeout=None)
    headers = {**_headers(world, a.id), "E2b-Sandbox-Port": "8124"}
    traffic = {**headers, "e2b-traffic-access-token": headers["X-Access-Token"]}
    seen: dict[str, Any] = {}
    for _ in range(200):  # the server starts in the background
        r = httpx.get(f"{server.url}/x", headers=traffic)
        if r.status_code == 200:
            seen = json.loads(r.content)
            break
        import time

        time.sleep(0.05)
    assert seen, "the echo server never answered"
    token = headers["X-Access-Token"]
    assert token not in json.dumps(seen)
    assert not {"x-access-token", "e2b-traffic-access-token", "e2b-sandbox-id"} & set(seen)
    for port in ("0", "65536", "99999999", "-1", "x"):
        r = httpx.get(f"{server.url}/", headers={**headers, "E2b-Sandbox-Port": port})
        assert r.status_code == 400
    r = httpx.get(f"{server.url}/", headers={**headers, "E2b-Sandbox-Port": "8999"})
    assert r.status_code == 502  # nothing listens there
