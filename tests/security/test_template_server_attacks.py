"""Attacks on a server's templates by a tenant: make the build read the server's own files
(a file step naming a server path, a base that reads its folders, tar files or engine), shape
a path with a template name, send oversized uploads, and start a sandbox from another
tenant's template by its digest or with the build engine's writable root."""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from remote.server import ServerProcess

from sandlot.api_templates import MAX_UPLOAD

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="sltplatk-", dir="/tmp"))
    process = ServerProcess(home).start()
    yield process
    process.stop()
    shutil.rmtree(home, ignore_errors=True)


def _build(server: ServerProcess, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/templates", json=body, timeout=60)


@pytest.mark.attack("a tenant's build reads server files: file step paths, host-reading bases")
def test_a_build_never_reads_the_servers_files(server: ServerProcess) -> None:
    """A file step through a server carries its bytes; one naming a path (the local form)
    is refused, as are bases that read the server's folders, tar files or docker engine
    (the operator's --allow-local-template-bases). Nothing of the named files comes back."""
    for src in ("/etc/shadow", "/root/.ssh/id_rsa", "../../etc/passwd", str(server.home)):
        step = {"kind": "file", "src": src, "dst": "/opt/loot"}
        answer = _build(server, {"name": "loot", "steps": [step]})
        assert answer.status_code == 422, answer.text
        assert "root:" not in answer.text
    for base in ("tar:/etc/passwd", "rootfs:/", "rootfs:/root", "docker:alpine", "tar:x"):
        answer = _build(server, {"name": "loot", "base": base})
        assert answer.status_code == 403 and answer.json()["code"] == "forbidden", answer.text
        assert "--allow-local-template-bases" in answer.json()["message"]
    answer = _build(server, {"name": "loot", "base": "file:///etc/passwd"})
    assert answer.status_code == 422
    listed = httpx.get(f"{server.url}/v1/templates", timeout=30).json()
    assert listed == []


@pytest.mark.attack("template names and upload paths that shape server or template paths")
def test_names_and_destinations_cannot_shape_paths(server: ServerProcess) -> None:
    content = base64.b64encode(b"x").decode()
    for name in ("../x", "..", "a/b", "A", ".hidden", "x" * 64, "a\x00b", ""):
        answer = _build(server, {"name": name})
        assert answer.status_code == 422, (name, answer.text)
    for path in ("..%2F..%2Fetc%2Fpasswd", "..", "%2E%2E", "A", "x" * 64):
        for method in ("GET", "DELETE"):
            answer = httpx.request(method, f"{server.url}/v1/templates/{path}", timeout=30)
            assert answer.status_code in (404, 422), (method, path, answer.text)
        assert "root:" not in httpx.get(f"{server.url}/v1/templates/{path}/log").text
    for dst in ("relative", "/", "/opt/../../etc/x", "/opt/\nx", ""):
        step = {"kind": "file", "dst": dst, "content_b64": content}
        answer = _build(server, {"name": "paths", "steps": [step]})
        assert answer.status_code == 422, (dst, answer.text)


@pytest.mark.attack("uploads past their bounds; content that is not base64")
def test_uploads_are_bounded(server: ServerProcess) -> None:
    big = base64.b64encode(b"\0" * (MAX_UPLOAD + 1)).decode()
    answer = _build(
        server, {"name": "big", "steps": [{"kind": "file", "dst": "/b", "content_b64": big}]}
    )
    assert answer.status_code == 422, answer.text[:200]
    # Three files each within the bound, beyond the bound of a build's files together.
    part = base64.b64encode(b"\0" * MAX_UPLOAD).decode()
    steps = [{"kind": "file", "dst": f"/b{n}", "content_b64": part} for n in range(3)]
    answer = _build(server, {"name": "big", "steps": steps})
    assert answer.status_code in (413, 422), answer.text[:200]
    bad = {"kind": "file", "dst": "/b", "content_b64": "not base64!"}
    assert _build(server, {"name": "bad", "steps": [bad]}).status_code == 422
    assert httpx.get(f"{server.url}/v1/templates", timeout=30).json() == []


@pytest.mark.attack("a sandbox from a template by digest, or with the build's writable root")
def test_a_sandbox_cannot_name_a_digest_or_build_mode(server: ServerProcess) -> None:
    """A digest names content, whoever built it: only the server turns names into digests.
    ``root_upper`` (a writable template root, run as uid 0) is the build engine's alone."""
    attempts = [
        {"template": "sha256:" + "0" * 64},
        {"template": "sha256:" + "f" * 64, "provider": "bwrap"},
        {"template": "sha256:" + "0" * 64, "provider": "remote"},
        {"config": {"root_upper": "/"}},
        {"config": {"root_upper": "/tmp"}, "template": "x"},
    ]
    for body in attempts:
        answer = httpx.post(f"{server.url}/v1/sandboxes", json=body, timeout=60)
        assert answer.status_code == 422, (body, answer.text)


@pytest.mark.attack("a build's steps given network to the server's own networks")
def test_a_builds_network_stays_off_the_servers_networks(server: ServerProcess) -> None:
    """``allow`` gives a build's steps the network a tenant's sandbox could have: loopback,
    private and link-local rules need the operator's --egress-private, as for a sandbox (a
    name rule is checked where it is resolved: it cannot lead to those networks either)."""
    step = {"kind": "run", "command": "true"}
    for rule in ("127.0.0.1", "10.0.0.0/8", "169.254.169.254", "[::1]:8787", "fe80::/10"):
        answer = _build(server, {"name": "net", "steps": [step], "allow": [rule]})
        assert answer.status_code in (403, 422), (rule, answer.text)
        if answer.status_code == 403:
            assert "--egress-private" in answer.json()["message"]
    answer = _build(server, {"name": "net", "steps": [step], "allow": ["not a rule!"]})
    assert answer.status_code == 422
    assert httpx.get(f"{server.url}/v1/templates", timeout=30).json() == []
