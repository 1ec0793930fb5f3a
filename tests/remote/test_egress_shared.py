"""The egress tests again, through a real server: the proxy and the bridge run in the server
process, secrets are the tenant's (stored through ``sandlot secrets set``, which talks to the
server), and every connection is also an event in the session's log.

The upstreams live on this host's loopback, which a tenant may name in its rules only when
the operator allows it: this module's server runs with ``--egress-private``; the test at the
end checks the refusal on the shared server, which does not.
"""

from __future__ import annotations

import json
import signal
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.egress_helpers import Upstream, fetch, put_secret
from integration.test_egress import *  # noqa: F403

import sandlot
from sandlot.errors import ForbiddenError

from .server import ServerProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    home = Path(tempfile.mkdtemp(prefix="slsrv-", dir="/tmp"))
    process = ServerProcess(home, args=("--kill-on-exit", "--egress-private")).start()
    yield process
    process.stop()


def test_connections_are_events_in_the_session_log(server: ServerProcess) -> None:
    with sandlot.Sandbox.create(network={"allow": ["only.test"]}) as sb:
        sb.commands.run("python3 -c \"import urllib.request as u; u.urlopen('http://x.test/')\"")
        url = f"{server.url}/v1/sandboxes/{sb.id}/events?follow=false"
        with urllib.request.urlopen(url, timeout=30) as answer:
            text = answer.read().decode()
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    egress = [e["data"] for e in events if (e.get("data") or {}).get("host") == "x.test"]
    assert egress and egress[0]["verdict"] == "refused"


def test_private_rules_need_the_operators_consent() -> None:
    """On a server without --egress-private (a fresh one, as operators start it)."""
    home = Path(tempfile.mkdtemp(prefix="slsrv-", dir="/tmp"))
    plain = ServerProcess(home).start()
    try:
        client = sandlot.Client(url=plain.url)
        for rule in ("127.0.0.1", "10.0.0.0/8", "169.254.169.254", "::1"):
            with pytest.raises(ForbiddenError) as caught:
                sandlot.Sandbox.create(network={"allow": ["a.test", rule]}, client=client)
            assert rule in str(caught.value)
        bridge = {"target": "http://127.0.0.1:9/api", "routes": [["GET", "/x"]]}
        with pytest.raises(ForbiddenError, match=r"127\.0\.0\.1"):
            sandlot.Sandbox.create(bridge=bridge, client=client)
        sb = sandlot.Sandbox.create(network={"allow": ["a.test"]}, client=client)
        with sb, pytest.raises(ForbiddenError):
            sb.set_network(allow=["127.0.0.1"])
    finally:
        plain.stop()


# A server refuses the process provider itself (ProviderUnavailableError, its own test).
del test_the_process_provider_cannot_take_an_allowlist  # noqa: F821


def test_a_restarted_server_serves_the_proxy_and_bridge_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sandbox outlives a SIGKILLed server; the next one adopts it and takes its
    listeners over, with the same policy, token and (re-resolved) credentials."""
    upstream = Upstream("127.0.0.1")
    home = Path(tempfile.mkdtemp(prefix="slrst-", dir="/tmp"))
    server = ServerProcess(home, args=("--egress-private",)).start()
    client = sandlot.Client(url=server.url)
    try:
        monkeypatch.setenv("SANDLOT_URL", server.url)
        put_secret("restart-token", "tok-restart-1234")
        bridge = {
            "target": upstream.url,
            "headers": {"X-Token": {"secret": "restart-token"}},
            "routes": [["GET", "/**"]],
        }
        network = {"allow": ["files.test", "127.0.0.1"], "resolve": {"files.test": "127.0.0.1"}}
        sb = sandlot.Sandbox.create(network=network, bridge=bridge, client=client, timeout=120)
        url = f"http://files.test:{upstream.port}/before"
        assert fetch(sb, "GET", url)["status"] == 200
        server.stop(signal.SIGKILL)
        server.start()
        sb = sandlot.Sandbox.connect(sb.id, client=client)
        assert fetch(sb, "GET", url.replace("before", "after"))["status"] == 200
        env = sb.commands.run("echo $SANDLOT_BRIDGE_URL $SANDLOT_BRIDGE_TOKEN").stdout.split()
        answer = fetch(sb, "GET", env[0] + "/x", headers={"Authorization": f"Bearer {env[1]}"})
        assert answer["status"] == 200
        assert upstream.seen[-1]["headers"]["X-Token"] == "tok-restart-1234"
        sb.kill()
    finally:
        server.stop()
        upstream.close()
