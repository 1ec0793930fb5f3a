"""The server on PostgreSQL (a real throwaway cluster): the same API, the same log."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import Postgres, postgres  # noqa: F401 (a fixture)

import sandlot

from .server import ServerProcess
from .test_server import http, sse


@pytest.fixture
def pg_server(postgres: Postgres) -> Iterator[ServerProcess]:  # noqa: F811
    home = Path(tempfile.mkdtemp(prefix="slpg-", dir="/tmp"))
    process = ServerProcess(home, database_url=postgres.new_database(), args=())
    yield process
    process.stop()


@pytest.mark.timeout(180)
def test_the_server_on_postgresql(pg_server: ServerProcess) -> None:
    key = pg_server.keys("create", "--name", "pg")
    pg_server.start()
    assert http("GET", f"{pg_server.url}/healthz")[1]["database"] == "postgresql"
    assert http("GET", f"{pg_server.url}/v1/sandboxes")[0] == 401
    client = sandlot.Client(url=pg_server.url, api_key=key)
    sb = sandlot.Sandbox.create(client=client, metadata={"db": "pg"})
    try:
        seen: list[str] = []
        result = sb.commands.run("for i in 1 2 3; do echo $i; done; exit 5", on_stdout=seen.append)
        assert (result.stdout, result.exit_code, "".join(seen)) == ("1\n2\n3\n", 5, "1\n2\n3\n")
        assert sb.run_code("x = 6\nx * 7").text == "42"
        sb.files.write("/workspace/a", b"\x00\xff" * 1000)
        assert sb.files.read("/workspace/a", format="bytes") == b"\x00\xff" * 1000
        events = sse(f"{pg_server.url}/v1/sandboxes/{sb.id}/events?follow=false", key)
        ids = [e[0] for e in events]
        assert ids == list(range(1, len(ids) + 1))

        # Killed and started again: the records and the log were in PostgreSQL.
        pg_server.stop(signal.SIGKILL)
        pg_server.start()
        again = sandlot.Sandbox.connect(sb.id, client=client)
        assert again.run_code("x").text == "6"  # the same sandbox, its context alive
        after = sse(f"{pg_server.url}/v1/sandboxes/{sb.id}/events?follow=false", key)
        assert after[: len(events)] == events
        assert after[len(events)][2]["data"]["event"] == "adopted"
        assert [s.id for s in sandlot.Sandbox.list(client=client)] == [sb.id]
    finally:
        sb.kill()
