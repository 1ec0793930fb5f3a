"""The one run recorder: a run pumped by a server and one read by an embedded caller leave the
same transcript.

The log, the hub and the database are real (SQLite in a temporary folder); the agent's answer
is a scripted list of frames (:class:`Script`), since what is under test is what becomes of
frames, not how an agent produces them (the integration and remote suites run real agents
through both paths).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandlot.agent import protocol as p
from sandlot.channel.base import Frame, RequestLike
from sandlot.store.database import Database, sqlite_url
from sandlot.store.keys import LOCAL_TENANT, Keys
from sandlot.store.records import Records
from sandlot.transcript.eventlog import EventLog
from sandlot.transcript.hub import Hub
from sandlot.transcript.logwriter import LogWriter
from sandlot.transcript.recorder import RunRecorder
from sandlot.transcript.runs import Run

SECRET = "hunter2-very-secret"
FRAMES: list[Frame] = [
    (p.EVENT, 0, b'{"event":"started","pid":42}'),
    (p.DATA, p.STDOUT, b"one hunter2-"),  # the secret split across two chunks
    (p.DATA, p.STDOUT, b"very-secret two\n"),
    (p.DATA, p.STDERR, b"warning\n"),
    (p.EVENT, 0, b'{"event":"progress","done":1}'),
    (p.END, 0, b'{"exit_code":0}'),
]


class Script(RequestLike):
    """A request whose frames are given in advance (see the module docstring)."""

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = list(frames)
        self.consumed_bytes = 0
        self.cancelled = False

    async def receive(self) -> Frame:
        await asyncio.sleep(0)
        return self.frames.pop(0)

    def consumed(self, amount: int) -> None:
        self.consumed_bytes += amount

    async def send_data(self, data: bytes, stream: int = p.STDIN) -> None:
        return None

    def send_eof(self, stream: int = p.STDIN) -> None:
        return None

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    Keys(db).ensure_tenant(LOCAL_TENANT)
    log, records = EventLog(db), Records(db)
    hub = Hub(log, LogWriter(db, log, records))
    hub.start()
    try:
        yield hub
    finally:
        await hub.close()
        db.close()


def new_session(hub: Hub) -> str:
    return Records(hub.log.db).create_session(LOCAL_TENANT, {}).id


async def transcript(hub: Hub, session_id: str) -> list[tuple[str, Any]]:
    """The session's events, adjacent output of one stream joined (the hub coalesces output
    as commits happen to fall)."""
    await hub.flushed(session_id)
    out: list[tuple[str, Any]] = []
    for e in hub.log.read(session_id, 0):
        if e.kind in ("stdout", "stderr"):
            if out and out[-1][0] == e.kind:
                out[-1] = (e.kind, out[-1][1] + e.data)
            else:
                out.append((e.kind, e.data))
        else:
            out.append((e.kind, json.loads(e.data)))
    return out


async def test_pumped_and_read_runs_leave_the_same_transcript(hub: Hub) -> None:
    pumped, read = new_session(hub), new_session(hub)
    run = Run(Script(FRAMES), hub, "exec", pumped, "sb-1", summary={"cmd": "x"}, secrets=[SECRET])
    await run.accepted()
    await run.pump()
    recorder = RunRecorder(hub, "exec", read, "sb-1", summary={"cmd": "x"}, secrets=[SECRET])
    for frame in FRAMES:  # as an embedded caller reads them
        assert await recorder.record(frame)
    logged = await transcript(hub, pumped)
    assert logged == await transcript(hub, read)
    output = b"".join(data for kind, data in logged if kind == "stdout")
    assert output == b"one ******** two\n"  # masked, also split across chunks
    assert logged[0] == ("started", {"event": "started", "op": "exec", "pid": 42, "cmd": "x"})
    assert logged[-1] == ("exit", {"exit_code": 0})
    assert run.outcome == recorder.outcome == {"exit_code": 0}
    record = Records(hub.log.db).get_execution(run.id)
    assert record is not None and record.state == "ended" and record.pid == 42


async def test_output_past_the_cap_is_dropped_and_counted(hub: Hub) -> None:
    session = new_session(hub)
    recorder = RunRecorder(hub, "exec", session, "sb-1", max_log_bytes=10)
    recorder.started(7)
    await recorder.record((p.DATA, p.STDOUT, b"0123456789abcdef"))
    await recorder.record((p.END, 0, b'{"exit_code":0}'))
    logged = await transcript(hub, session)
    assert [kind for kind, _ in logged] == ["started", "truncated", "stdout", "exit"]
    assert logged[2][1] == b"0123456789"
    assert logged[-1][1] == {"exit_code": 0, "log_dropped": 6}


async def test_a_run_taken_over_ends_with_run_cancelled(hub: Hub) -> None:
    session = new_session(hub)

    async def taken() -> bool:
        return False  # a forced takeover took the lock meanwhile

    recorder = RunRecorder(hub, "exec", session, "sb-1", release=taken)
    recorder.started(7)
    assert not await recorder.record((p.END, 0, b'{"exit_code":-9}'))
    assert recorder.takeover_error().code == "run_cancelled"
    recorder.cancelled()  # after its end: nothing more
    logged = await transcript(hub, session)
    assert [kind for kind, _ in logged] == ["started", "error"]
    assert logged[-1][1]["code"] == "run_cancelled"


async def test_a_cancelled_run_ends_once_and_releases_its_lock(hub: Hub) -> None:
    session = new_session(hub)
    released = asyncio.Event()

    async def release() -> bool:
        released.set()
        return True

    recorder = RunRecorder(hub, "exec", session, "sb-1", release=release)
    recorder.started(7)
    recorder.cancelled()
    await recorder.record((p.DATA, p.STDOUT, b"late\n"))  # after the end: not logged
    assert await recorder.record((p.END, 0, b'{"exit_code":0}'))
    await asyncio.wait_for(released.wait(), 5)
    logged = await transcript(hub, session)
    assert [kind for kind, _ in logged] == ["started", "error"]
    assert logged[-1][1]["code"] == "cancelled"


# -- carrying a record on after a restart ---------------------------------------------------

# An agent's output log: the secret split over three frames with the other stream between, one
# whole, output after it; offsets count both streams' bytes in arrival order.
AGENT_LOG: list[tuple[int, bytes]] = [
    (p.STDOUT, b"a hun"),
    (p.STDERR, b"e1 hunter"),
    (p.STDOUT, b"ter2-ve"),
    (p.STDERR, b"2-very-secret\n"),
    (p.STDOUT, b"ry-secret b\n"),
    (p.STDOUT, b"hunter2-very-secrethunter2-very-secret c\n"),
    (p.STDERR, b"e2\n"),
]
END = (p.END, 0, b'{"exit_code":3,"end":99}')  # exec's and proc.attach's: the final offset too


def replay(offset: int) -> list[Frame]:
    """What ``proc.attach`` at ``offset`` sends: the log's frames from there on."""
    frames: list[Frame] = []
    at = 0
    for stream, data in AGENT_LOG:
        if at + len(data) > offset:
            frames.append((p.DATA, stream, data[max(0, offset - at) :]))
        at += len(data)
    return frames


@pytest.mark.parametrize("cap", [None, 30])
async def test_a_record_goes_on_after_a_crash_at_any_frame_with_no_byte_twice(
    hub: Hub, cap: int | None
) -> None:
    """A crash after any frame (what was committed is the log), then a re-attach from the
    stored place: the transcript is the one an uninterrupted run leaves, masked the same
    (and cut at the same byte, with the same count of bytes dropped)."""
    whole = new_session(hub)
    run = Run(Script([(p.EVENT, 0, b'{"event":"started","pid":5}'), *replay(0), END]),
              hub, "exec", whole, "sb-1", secrets=[SECRET], max_log_bytes=cap)  # fmt: skip
    await run.accepted()
    await run.pump()
    expected = await transcript(hub, whole)
    assert b"hunter2" not in b"".join(d for k, d in expected if k in ("stdout", "stderr"))
    records = Records(hub.log.db)
    held: list[bool] = []
    for crash in range(len(AGENT_LOG) + 1):
        session = new_session(hub)
        first = RunRecorder(hub, "exec", session, "sb-1", secrets=[SECRET], max_log_bytes=cap)
        first.started(5)
        for frame in replay(0)[:crash]:
            await first.record(frame)
        await hub.flushed(session)  # what the log has when the server dies
        hub.writer._places.clear()  # a new process: what is stored is all it knows
        place = records.resume_places(session).get(first.id)
        offset = RunRecorder.resume_offset(place)
        second = Run(Script([*replay(offset), END]), hub, "exec", session, "sb-1",
                     execution_id=first.id, secrets=[SECRET], max_log_bytes=cap)  # fmt: skip
        await second.resumed(5, place, offset, 0)
        await second.pump()
        assert await transcript(hub, session) == expected, f"crash after frame {crash}"
        assert second.outcome == run.outcome
        held.append(place is not None and offset < place[0])
    assert any(held)  # some crash came while a masker held a partial match back


async def test_bytes_the_agent_no_longer_held_are_one_gap_event(hub: Hub) -> None:
    session = new_session(hub)
    first = RunRecorder(hub, "exec", session, "sb-1", max_log_bytes=1000)
    first.started(5)
    await first.record((p.DATA, p.STDOUT, b"0123"))
    await hub.flushed(session)
    place = Records(hub.log.db).resume_places(session).get(first.id)
    assert place == [4, 4, 0]
    # The agent's buffer now starts at offset 10: bytes 4..9 are gone.
    second = Run(Script([(p.DATA, p.STDOUT, b"abc"), END]), hub, "exec", session, "sb-1",
                 execution_id=first.id, max_log_bytes=1000)  # fmt: skip
    await second.resumed(5, place, 10, 6)
    await second.pump()
    logged = await transcript(hub, session)
    assert [kind for kind, _ in logged] == ["started", "stdout", "gap", "stdout", "exit"]
    assert logged[2][1] == {"event": "gap", "bytes": 6, "offset": 4}
    assert logged[3][1] == b"abc" and logged[-1][1] == {"exit_code": 3, "end": 99}
    assert Records(hub.log.db).get_execution(first.id).state == "ended"  # type: ignore[union-attr]


def test_the_places_stored_are_every_running_commands_across_processes(tmp_path: Path) -> None:
    """A session's ``resume`` holds every running command's place: those a previous process
    stored (remembered by the next) too, until each command ends."""
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    Keys(db).ensure_tenant(LOCAL_TENANT)
    records = Records(db)
    session = records.create_session(LOCAL_TENANT, {}).id
    first = LogWriter(db, EventLog(db), records)
    first.append(session, [("ex-1", "stdout", b"a")], (), {"ex-1": (1, 1, 0)})
    first.append(session, [(None, "note", b"{}")])  # no output: left as it is
    assert records.resume_places(session) == {"ex-1": [1, 1, 0]}
    first.close()
    second = LogWriter(db, EventLog(db), records)  # a new process carries ex-1 on
    second.remember(session, {"ex-1": [1, 1, 0]})
    second.append(session, [("ex-2", "stdout", b"bb")], (), {"ex-2": (2, 2, 0)})
    assert records.resume_places(session) == {"ex-1": [1, 1, 0], "ex-2": [2, 2, 0]}
    second.append(session, [("ex-1", "exit", b"{}")])
    assert records.resume_places(session) == {"ex-2": [2, 2, 0]}
    second.close()
    db.close()
