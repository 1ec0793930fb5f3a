"""A sandlot server as a provider: an embedded manager (or another server) sends sandboxes
to it, falls back to a local provider while it is down, and comes back to it after."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot.remote.breaker import states

from .server import ServerProcess
from .test_server import http, sse


@pytest.fixture
def far() -> Iterator[ServerProcess]:
    """The server the work is sent to."""
    home = Path(tempfile.mkdtemp(prefix="slfar-", dir="/tmp"))
    process = ServerProcess(home).start()
    yield process
    process.stop()


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's SDK calls run embedded; only the provider talks to the server."""
    monkeypatch.delenv("SANDLOT_URL", raising=False)


@pytest.mark.timeout(120)
def test_remote_provider_with_fallback_and_recovery(
    far: ServerProcess, embedded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sandlot.remote.breaker.COOLDOWN", 1.0)  # the provider's breaker's
    monkeypatch.setenv("SANDLOT_RETRY_FOR", "1")  # read as the provider makes its clients
    with sandlot.Sandbox.create("remote", url=far.url, fallback="bwrap") as sb:
        assert sb.provider == "remote"
        assert sb.commands.run("echo far away").stdout == "far away\n"
        sb.files.write("/workspace/f", "on the server")
        on_server = http("GET", f"{far.url}/v1/sandboxes")[1]
        assert len(on_server) == 1
        assert sb.files.read("/workspace/f") == "on the server"
        assert sb.run_code("21 * 2").text == "42"
        again = sandlot.Sandbox.connect(sb.id)  # through the local record
        assert again.commands.run("echo connected").stdout == "connected\n"
    assert http("GET", f"{far.url}/v1/sandboxes")[1] == []  # killed there too

    far.stop()
    started = time.monotonic()
    with sandlot.Sandbox.create("remote", url=far.url, fallback="bwrap") as sb:
        assert sb.provider == "bwrap"  # the server is down: a local sandbox instead
        assert sb.commands.run("echo local").stdout == "local\n"
    with sandlot.Sandbox.create("remote", url=far.url, fallback="bwrap") as sb:
        assert sb.provider == "bwrap"
    assert states()[far.url] == "open"  # 5 calls in a row failed
    quick = time.monotonic()
    with sandlot.Sandbox.create("remote", url=far.url, fallback="bwrap") as sb:
        assert sb.provider == "bwrap"
    assert time.monotonic() - quick < 1.0  # the open breaker fails at once
    assert time.monotonic() - started < 15

    # No fallback: no breaker either; the server is waited for (here 1 s), then the error.
    with pytest.raises(sandlot.RemoteUnavailableError, match="cannot reach"):
        sandlot.Sandbox.create("remote", url=far.url)

    far.start()
    time.sleep(1.1)  # past the cooldown: the next call is the probe
    with sandlot.Sandbox.create("remote", url=far.url, fallback="bwrap") as sb:
        assert sb.provider == "remote"
    assert states()[far.url] == "closed"


@pytest.mark.timeout(120)
def test_a_server_forwarding_to_another_logs_the_fallback_and_reports_its_breaker(
    far: ServerProcess, embedded: None
) -> None:
    home = Path(tempfile.mkdtemp(prefix="slnear-", dir="/tmp"))
    near = ServerProcess(
        home, env={"SANDLOT_REMOTE_URL": far.url, "SANDLOT_REMOTE_FALLBACK": "bwrap"}
    ).start()
    try:
        client = sandlot.Client(url=near.url)
        with sandlot.Sandbox.create("remote", client=client) as sb:
            assert sb.provider == "remote"
            assert sb.commands.run("echo via near").stdout == "via near\n"
            assert len(http("GET", f"{far.url}/v1/sandboxes")[1]) == 1
        # A caller cannot point the server somewhere else.
        with pytest.raises(sandlot.ProviderUnavailableError, match="own settings"):
            sandlot.Sandbox.create("remote", client=client, url="http://127.0.0.1:9")
        far.stop()
        with sandlot.Sandbox.create("remote", client=client) as sb:
            assert sb.provider == "bwrap"
        with sandlot.Sandbox.create("remote", client=client) as sb:
            assert sb.provider == "bwrap"
            events = sse(f"{near.url}/v1/sandboxes/{sb.id}/events?follow=false")
            notes = [e[2]["data"] for e in events if e[1] == "sandbox"]
            assert notes[0]["event"] == "fallback"
            assert (notes[0]["from"], notes[0]["to"]) == ("remote", "bwrap")
            assert "cannot reach" in notes[0]["reason"] or "failing" in notes[0]["reason"]
        health = http("GET", f"{near.url}/healthz")[1]
        assert health["status"] == "degraded"
        assert health["breakers"][far.url] == "open"
    finally:
        near.stop()


@pytest.mark.timeout(120)
def test_the_remote_providers_api_key_as_a_secret(embedded: None) -> None:
    """A provider setting its schema marks secret (the remote provider's ``api_key``) given
    as ``{"secret": NAME}``: resolved from this host's secrets when the sandbox is created,
    and again by name when another process connects; the key itself never reaches the host
    registry."""
    import asyncio
    import sqlite3

    from sandlot.secrets.store import LocalSecrets
    from sandlot.store import default_home

    home = Path(tempfile.mkdtemp(prefix="slkeyed-", dir="/tmp"))
    server = ServerProcess(home, args=("--kill-on-exit", "--host", "0.0.0.0"))
    key = server.keys("create", "--name", "provider")
    server.start()
    secrets = LocalSecrets(default_home())
    asyncio.run(secrets.set("far-api-key", key))
    try:
        with pytest.raises(sandlot.AuthenticationError):
            sandlot.Sandbox.create("remote", url=server.url)  # no key: refused
        with sandlot.Sandbox.create(
            "remote", url=server.url, api_key={"secret": "far-api-key"}
        ) as sb:
            assert sb.commands.run("echo keyed").stdout == "keyed\n"
            again = sandlot.Sandbox.connect(sb.id)  # the key found again by its name
            assert again.commands.run("echo again").stdout == "again\n"
            registry = sqlite3.connect(default_home() / "state.db")
            stored = "".join(str(row) for row in registry.execute("SELECT * FROM sandboxes"))
            registry.close()
            assert key not in stored and "far-api-key" in stored
    finally:
        asyncio.run(secrets.delete("far-api-key"))
        server.stop()


@pytest.mark.timeout(120)
def test_the_remote_provider_keeps_the_api_key_it_was_given(
    embedded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``api_key`` passed to the provider (no ``SANDLOT_REMOTE_API_KEY``) is used for
    everything it does with the sandbox later: connecting again and killing it."""
    monkeypatch.delenv("SANDLOT_REMOTE_API_KEY", raising=False)
    home = Path(tempfile.mkdtemp(prefix="slgiven-", dir="/tmp"))
    server = ServerProcess(home, args=("--kill-on-exit", "--host", "0.0.0.0"))
    key = server.keys("create", "--name", "provider")
    server.start()
    try:
        sb = sandlot.Sandbox.create("remote", url=server.url, api_key=key)
        assert sb.commands.run("echo keyed").stdout == "keyed\n"
        again = sandlot.Sandbox.connect(sb.id)  # through the local record
        assert again.commands.run("echo again").stdout == "again\n"
        assert len(http("GET", f"{server.url}/v1/sandboxes", key=key)[1]) == 1
        sb.kill()
        assert http("GET", f"{server.url}/v1/sandboxes", key=key)[1] == []  # killed there
    finally:
        server.stop()
