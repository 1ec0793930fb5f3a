"""The egress tests again, through a real server: the proxy and the bridge run in the server
process, secrets are the tenant's (stored through ``sandlot secrets set``, which talks to the
server), and every connection is also an event in the session's log.

The upstreams live on this host's loopback, which a tenant may name in its rules only when
the operator allows it: this module's server runs with ``--egress-private``; the test at the
end checks the refusal on the shared server, which does not.
"""

from __future__ import annotations

import json
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
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
        with pytest.raises(ForbiddenError, match="127.0.0.1"):
            sandlot.Sandbox.create(bridge=bridge, client=client)
        sb = sandlot.Sandbox.create(network={"allow": ["a.test"]}, client=client)
        with sb, pytest.raises(ForbiddenError):
            sb.set_network(allow=["127.0.0.1"])
    finally:
        plain.stop()


# A server refuses the process provider itself (ProviderUnavailableError, its own test).
del test_the_process_provider_cannot_take_an_allowlist  # noqa: F821
