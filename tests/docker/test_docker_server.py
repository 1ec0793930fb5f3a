"""Docker sandboxes through a real ``sandlot serve``: a caller names the provider and the
image, and everything else (commands, files, code, exposed ports) works as embedded."""

from __future__ import annotations

import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker_env
import pytest
from integration.ports_helpers import wait_for_http
from remote.server import ServerProcess

import sandlot


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="slsrv-docker-", dir="/tmp"))
    # The operator's defaults for docker: never pull (a caller cannot change that).
    process = ServerProcess(
        home, env={"SANDLOT_PROVIDER": "bwrap", "SANDLOT_PROVIDER_CONFIG": ""}
    ).start()
    yield process
    process.stop()


def test_a_caller_names_docker_and_an_image(server: ServerProcess) -> None:
    client = sandlot.Client(url=server.url)
    with sandlot.Sandbox.create(provider="docker", image=docker_env.IMAGE, client=client) as sb:
        assert sb.info.provider == "docker"
        uid = int(sb.commands.run("id -u").stdout)
        assert uid not in (0, 1000)  # a fresh host uid of its own
        sb.files.write("/workspace/site/index.html", "from a container, through a server")
        assert sb.run_code("6 * 7").text == "42"
        sb.commands.run(
            "cd /workspace/site && python3 -m http.server 8000 --bind 127.0.0.1",
            background=True,
            timeout=None,
        )
        url = sb.expose(8000)
        assert url.startswith(server.url + "/v1/sandboxes/")
        assert wait_for_http(url + "index.html") == b"from a container, through a server"


def test_host_touching_docker_settings_stay_the_operators(server: ServerProcess) -> None:
    client = sandlot.Client(url=server.url)
    for setting in ({"user": "0:0"}, {"runtime": "runc"}, {"docker_host": "unix:///x.sock"}):
        with pytest.raises(sandlot.ProviderUnavailableError, match="provider settings"):
            sandlot.Sandbox.create(
                provider="docker", image=docker_env.IMAGE, client=client, **setting
            )


def test_a_missing_image_is_a_clear_error_through_the_server(server: ServerProcess) -> None:
    client = sandlot.Client(url=server.url)
    with pytest.raises(sandlot.ImageNotFoundError, match="sandlot-test-no-such-image"):
        sandlot.Sandbox.create(
            provider="docker", image="sandlot-test-no-such-image:1", client=client
        )
    with urllib.request.urlopen(server.url + "/healthz", timeout=10) as answer:
        assert answer.status == 200
