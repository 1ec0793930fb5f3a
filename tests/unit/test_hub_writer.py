"""The event writer under concurrency and CPU pressure: it must never die, and no session's
end may be lost.

The wedge this guards against: the writer took the set of sessions with queued events, and
while it awaited one session's commit another session of that set was flushed and forgotten
(a sandbox's teardown); the writer then looked the forgotten one up, died of a KeyError, and
from then on nothing was committed and every command hung, while health said "ok". A slow
commit (CPU contention) makes that window wide; here real CPU hogs run beside the hub and the
database write itself is slowed a little at random, as a contended disk would.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlot.store.database import Database, sqlite_url
from sandlot.store.keys import LOCAL_TENANT, Keys
from sandlot.store.records import Records
from sandlot.store.retention import Retention
from sandlot.supervisor import Supervisor
from sandlot.transcript.eventlog import EventLog
from sandlot.transcript.hub import PENDING_LIMIT, RECENT_TOTAL, Hub
from sandlot.transcript.logwriter import LogWriter

SESSIONS = 500
BOUND = 60.0  # seconds for the whole churn: far beyond what it takes, short of a hang


@pytest.fixture
def cpu_hogs() -> Iterator[None]:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def make_hub(url: str, jitter: float) -> tuple[Hub, Records]:
    db = Database(url)
    db.migrate()
    Keys(db).ensure_tenant(LOCAL_TENANT)
    log, records = EventLog(db), Records(db)
    writer = LogWriter(db, log, records)
    append = writer.append

    def contended(*args: object) -> object:
        time.sleep(random.random() * jitter)
        return append(*args)  # type: ignore[arg-type]

    writer.append = contended  # type: ignore[method-assign]
    return Hub(log, writer), records


async def teardown_like_a_sandbox(hub: Hub, session_id: str, seen: dict[str, list[str]]) -> None:
    """What a sandbox's life does to the log: output, an end note, flushed, forgotten; with a
    follower that must see the end."""

    async def follow() -> None:
        async for batch in hub.follow(session_id, 0):
            seen[session_id].extend(json.loads(e.data).get("event", "") for e in batch)

    seen[session_id] = []
    follower = asyncio.ensure_future(follow())
    for _ in range(random.randint(1, 6)):
        hub.put_nowait(session_id, None, "note", b'{"event":"output"}')
        await asyncio.sleep(random.random() * 0.002)
    hub.put_nowait(session_id, None, "sandbox", b'{"event":"ended"}')
    await hub.flushed(session_id)
    hub.forget(session_id)
    await asyncio.wait_for(follower, BOUND)


async def churn(url: str) -> None:
    hub, records = make_hub(url, jitter=0.005)
    hub.start()
    seen: dict[str, list[str]] = {}
    ids = [records.create_session(LOCAL_TENANT, {}).id for _ in range(SESSIONS)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(teardown_like_a_sandbox(hub, i, seen) for i in ids)), BOUND
        )
        assert hub.health().writer_alive, Supervisor.current().problems()
        # Every session's end is in the log, and its follower saw it.
        for session_id in ids:
            logged = [json.loads(e.data)["event"] for e in hub.log.read(session_id, 0)]
            assert logged[-1] == "ended", (session_id, logged)
            assert seen[session_id][-1:] == ["ended"], (session_id, seen[session_id])
        # And the writer still takes new work.
        session = await hub.write(records.create_session, LOCAL_TENANT, {})
        hub.put_nowait(session.id, None, "note", b'{"event":"alive"}')
        assert await asyncio.wait_for(hub.flushed(session.id), 10) == 1
        assert Supervisor.current().problems() == []
    finally:
        await asyncio.wait_for(hub.close(), 30)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_writer_survives_teardowns_under_cpu_pressure(
    store: str, tmp_path: Path, cpu_hogs: None, request: pytest.FixtureRequest
) -> None:
    if store == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        url = request.getfixturevalue("postgres").new_database()
    asyncio.run(churn(url))


async def flood(url: str) -> None:
    """Many sessions' output: the memory kept for followers stays within its total, and a
    server whose sessions all ended keeps none of it."""
    hub, records = make_hub(url, jitter=0.0)
    hub.start()
    ids = [records.create_session(LOCAL_TENANT, {}).id for _ in range(12)]
    chunk = b"x" * (1024 * 1024)
    try:
        for _ in range(8):  # 12 sessions x 8 MiB: 96 MiB through the hub
            for session_id in ids:
                await hub.put(session_id, None, "stdout", chunk)
            assert hub.health().pending_bytes <= PENDING_LIMIT + len(chunk)
        for session_id in ids:
            await hub.flushed(session_id)
        assert hub.health().recent_bytes <= RECENT_TOTAL
        assert sum(len(e.data) for e in hub.log.read(ids[0], 0)) == 8 * len(chunk)
        for session_id in ids:
            hub.forget(session_id)
        after = hub.health()
        assert (after.recent_bytes, after.pending_bytes, after.sessions) == (0, 0, 0)
    finally:
        await hub.close()


def test_memory_for_followers_is_bounded_and_freed(tmp_path: Path) -> None:
    asyncio.run(flood(sqlite_url(tmp_path)))


async def follow_a_dropped_execution(url: str) -> None:
    """Retention dropped an ended session's log: following one of its executions to its end
    gets the 'pruned' event and ends, rather than waiting for an end that is gone."""
    hub, records = make_hub(url, jitter=0.0)
    hub.start()
    try:
        session = records.create_session(LOCAL_TENANT, {})
        hub.put_nowait(session.id, "ex-1", "stdout", b"gone\n")
        hub.put_nowait(session.id, "ex-1", "exit", b'{"exit_code":0}')
        await hub.flushed(session.id)
        hub.forget(session.id)
        await hub.write(records.end_session, session.id)
        retention = Retention(hub.log.db)
        while await hub.write(retention.step, time.time() + 1):
            pass
        batches = hub.follow(session.id, 0, execution_id="ex-1", until_terminal=True)
        kinds = [e.kind async for batch in batches for e in batch]
        assert kinds == ["pruned"]
    finally:
        await hub.close()


def test_a_stream_of_a_dropped_execution_ends(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(follow_a_dropped_execution(sqlite_url(tmp_path)), 30))


async def read_right_after_a_write(url: str) -> None:
    """A snapshot read (``follow=False``) sees what was queued before it, even when the
    writer has not got to it yet: a client reading a sandbox's notes right after creating it
    gets them."""
    hub, records = make_hub(url, jitter=0.0)
    session = records.create_session(LOCAL_TENANT, {})
    hub.put_nowait(session.id, None, "sandbox", b'{"event":"fallback"}')
    asyncio.get_running_loop().call_later(0.3, hub.start)  # a writer busy elsewhere
    try:
        batches = hub.follow(session.id, 0, follow=False)
        kinds = [e.kind async for batch in batches for e in batch]
        assert kinds == ["sandbox"]
    finally:
        await asyncio.sleep(0.4)
        await hub.close()


def test_a_snapshot_read_sees_what_was_queued_before_it(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(read_right_after_a_write(sqlite_url(tmp_path)), 30))
