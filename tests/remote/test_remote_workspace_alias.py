"""``workspace_alias`` through a sandlot server: the SDK's create body carries it, the server's
provider mounts it; the remote provider passes it on to the server it sends sandboxes to; a
hostile alias is refused by the server as by the SDK."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import sandlot

from .server import ServerProcess

pytestmark = pytest.mark.timeout(120)


def test_the_server_mounts_the_alias(server: ServerProcess) -> None:
    with sandlot.Sandbox.create(workspace_alias="/home/user", workdir="/home/user") as sb:
        sb.files.write("/home/user/f", "one")
        r = sb.commands.run("pwd && cat /workspace/f")
        assert r.stdout == "/home/user\none"


def test_the_remote_provider_passes_it_on(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDLOT_URL", raising=False)  # embedded; the provider calls the server
    with sandlot.Sandbox.create("remote", url=server.url, workspace_alias="/srv/app") as sb:
        assert sb.provider == "remote"
        assert sb.commands.run("echo x > /srv/app/f && cat /workspace/f").stdout == "x\n"


@pytest.mark.parametrize("alias", ["/etc", "/home/../etc", "/proc/x", "rel/x", "/home/a\u0000b"])
def test_the_server_refuses_a_hostile_alias(server: ServerProcess, alias: str) -> None:
    body = json.dumps({"workspace_alias": alias}).encode()
    request = urllib.request.Request(
        server.url + "/v1/sandboxes", body, {"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code in (400, 422)
    assert "workspace_alias" in caught.value.read().decode()
