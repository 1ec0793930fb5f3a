"""The server on PostgreSQL (a real throwaway cluster): the same API, the same log."""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import Postgres, postgres  # noqa: F401 (a fixture)
from sqlalchemy import func, select

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


@pytest.mark.timeout(180)
def test_output_is_compressed_and_a_tenants_ended_logs_are_capped_on_postgresql(
    postgres: Postgres,  # noqa: F811
) -> None:
    """Through the server: big output is stored compressed in PostgreSQL and streams back
    exactly; with a tenant cap of nothing, an ended sandbox's log is dropped by the next
    maintenance pass (every 10 s with 43 s of retention: the cap, not the age, drops it)
    and reads as one ``pruned`` event; a running sandbox's log stays whole."""
    from sandlot.store.database import Database, events

    url = postgres.new_database()
    home = Path(tempfile.mkdtemp(prefix="slpg-", dir="/tmp"))
    args = ("--kill-on-exit", "--tenant-log-bytes", "0", "--retention-days", "0.0005")
    server = ServerProcess(home, database_url=url, args=args)
    server.start()
    db = Database(url)
    try:
        client = sandlot.Client(url=server.url)
        keep = sandlot.Sandbox.create(client=client)
        with sandlot.Sandbox.create(client=client) as gone:
            big = gone.commands.run("seq 1 300000").stdout
        assert big.splitlines()[-1] == "300000" and len(big) > 1_500_000
        assert keep.commands.run("seq 1 300000").stdout == big
        with db.read() as conn:
            rows = conn.execute(
                select(func.count(), func.sum(func.length(events.c.data))).where(
                    events.c.encoding == 1
                )
            ).one()
        # Both logs, compressed (seq's digits shrink to about a third, ISA-L or zlib alike).
        assert rows[0] >= 2 and rows[1] < 2 * len(big) * 0.4
        log = f"{server.url}/v1/sandboxes/{{}}/events?follow=false"
        deadline = time.monotonic() + 30
        while len(sse(log.format(gone.id))) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        [(seq, kind, data)] = sse(log.format(gone.id))
        assert (kind, data["data"]["why"], data["data"]["through"]) == (
            "pruned",
            "tenant_log_bytes",
            seq,
        )
        # killed and started again: the running sandbox's log is read from the store
        server.stop(signal.SIGKILL)
        server.start()
        kept = sse(log.format(keep.id))
        assert "pruned" not in {e[1] for e in kept}
        assert "".join(e[2].get("text", "") for e in kept if e[1] == "stdout") == big
        keep.kill()
    finally:
        db.close()
        server.stop()


@pytest.mark.timeout(180)
def test_a_killed_server_re_attaches_to_a_running_command_on_postgresql(
    pg_server: ServerProcess,
) -> None:
    """Where a command stands in its agent's log commits with its output on PostgreSQL
    too: the restarted server carries its record on (tests/remote/test_restart.py)."""
    from .test_restart import SCRIPT, STDERR, STDOUT

    pg_server.start()
    client = sandlot.Client(url=pg_server.url)
    sb = sandlot.Sandbox.create(client=client, timeout=120)
    try:
        seen: list[str] = []
        handle = sb.commands.run(SCRIPT, background=True, on_stdout=seen.append)
        deadline = time.monotonic() + 20
        while "".join(seen).count("\n") < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        pg_server.stop(signal.SIGKILL)
        time.sleep(1.0)
        pg_server.start()
        result = handle.wait()
        assert (result.stdout, result.stderr, result.exit_code) == (STDOUT, STDERR, 7)
        assert "".join(seen) == STDOUT
        events = sse(f"{pg_server.url}/v1/sandboxes/{sb.id}/events?follow=false")
        assert [e[0] for e in events] == list(range(1, len(events) + 1))
        assert "".join(e[2]["text"] for e in events if e[1] == "stdout") == STDOUT
    finally:
        sb.kill()
