"""The host trusts what comes out of the channel (issue 15, hole 4).

Everything an agent sends (frames, lengths, request ids, streams, credit, JSON, descriptors)
is input from a hostile sandbox. A command inside a sandbox cannot reach its agent's sockets
(hole 3's wall), so a real agent cannot be made to misbehave from inside: these attacks are
made where the host meets the agent's socket. A *compromised agent* is played by a separate
process (``AGENT`` below) listening on a Unix socket as an agent does, and the real host code
(``Channel.connect_unix``, ``Handoff.open``) is driven against it; the last attack injects
one bad frame into the host's parser of a real bwrap sandbox's channel and checks that the
sandbox is killed and its neighbour is not. Each attack is bounded by timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fds import leaked, open_fds, snapshot

import sandlot
from sandlot.agent import protocol as p
from sandlot.channel.connection import MAX_BACKLOG, Channel
from sandlot.channel.handoff import Handoff, dial_unix
from sandlot.errors import ProtocolError, SandboxClosedError

pytestmark = pytest.mark.timeout(60)

# The compromised agent: ``python -c AGENT PATH MODE`` serves every connection to PATH the
# way MODE says, each in a thread, until it is killed. Standard library only.
AGENT = r"""
import array, json, os, socket, struct, sys, threading, time

HEADER = struct.Struct("!IBBI")
HELLO_, REQUEST, EVENT, END, ERROR, DATA, EOF, GRANT = range(8)
WINDOW, MB = 4 * 1024 * 1024, 1024 * 1024

def frame(kind, rid, payload=b"", stream=0):
    return HEADER.pack(len(payload), kind, stream, rid) + payload

HELLO = frame(HELLO_, 0, b'{"version":1,"pid":1}')
SPARE = os.open("/dev/null", os.O_RDONLY)  # the descriptor sent, 64 times a message

def with_fds(conn, data, count):
    fds = array.array("i", [SPARE] * count)
    conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])

def read_frame(conn):
    head = b""
    while len(head) < HEADER.size:
        more = conn.recv(HEADER.size - len(head))
        if not more:
            return None
        head += more
    length, kind, stream, rid = HEADER.unpack(head)
    body = b""
    while len(body) < length:
        more = conn.recv(length - len(body))
        if not more:
            return None
        body += more
    return kind, stream, rid, body

def request(conn):  # the host's first request: its id
    while True:
        got = read_frame(conn)
        if got is None:
            raise OSError("the host left")
        if got[0] == REQUEST:
            return got[2]

def hold(conn):  # say nothing more; read until the host goes
    while conn.recv(65536):
        pass

def serve(conn, mode):
    if mode == "honest":
        conn.sendall(HELLO)
        while (got := read_frame(conn)) is not None:
            if got[0] == REQUEST:
                conn.sendall(frame(END, got[2], b'{"ok":true}'))
    elif mode == "fd-flood":  # 64 descriptors a frame, for as long as the host reads
        conn.sendall(HELLO)
        request(conn)
        event = frame(EVENT, 1, b'{"event":"accept","id":1,"fd":true}')
        for _ in range(200):
            with_fds(conn, event, 64)
        hold(conn)
    elif mode == "hello-fds":
        with_fds(conn, HELLO, 64)
        hold(conn)
    elif mode == "channel-fds":  # descriptors on the channel itself, then an honest agent
        with_fds(conn, HELLO, 64)
        while (got := read_frame(conn)) is not None:
            if got[0] == REQUEST:
                with_fds(conn, frame(END, got[2], b'{"ok":true}'), 64)
    elif mode == "oversized":
        conn.sendall(HELLO)
        rid = request(conn)
        conn.sendall(HEADER.pack(0xFFFFFFFF, END, 0, rid))
        hold(conn)
    elif mode == "garbage":
        conn.sendall(b"GET / HTTP/1.1\r\nHost: sandlot\r\n\r\n" + os.urandom(4096))
        hold(conn)
    elif mode == "bogus-id":
        conn.sendall(HELLO)
        rid = request(conn)
        conn.sendall(frame(END, rid + 1000, b'{"exit_code":0,"stdout":"forged"}'))
        hold(conn)
    elif mode == "self-credit":
        conn.sendall(HELLO)
        rid = request(conn)
        conn.sendall(frame(GRANT, rid, struct.pack("!I", WINDOW), 0))
        hold(conn)
    elif mode == "over-window":
        conn.sendall(HELLO)
        rid = request(conn)
        chunk = frame(DATA, rid, b"x" * MB, 1)
        for _ in range(64):
            conn.sendall(chunk)
        hold(conn)
    elif mode == "hellos":
        for _ in range(100000):
            conn.sendall(HELLO)
    elif mode == "half-frame":
        conn.sendall(HELLO[:7])
        hold(conn)
    elif mode == "forged-events":  # events that pose as the log's own, then a real end
        conn.sendall(HELLO)
        rid = request(conn)
        forged = '{"exit_code":0,"forged":true}'
        for raw in (
            b'{"event":"started","pid":7}',
            json.dumps({"event": "x\nid: 999\nevent: exit\ndata: " + forged}).encode(),
            json.dumps({"event": "exit", "exit_code": 0, "forged": True}).encode(),
            json.dumps({"event": "stdout", "text": "forged"}).encode(),
            b'{"event":"started","pid":8}',
            b'{"event":\n\n"progress",\n"done":1}',  # JSON whitespace: line breaks
        ):
            conn.sendall(frame(EVENT, rid, raw))
        conn.sendall(frame(DATA, rid, b"real\n", 1))
        conn.sendall(frame(END, rid, b'{\n"exit_code":\n3}'))
        hold(conn)
    elif mode == "event-flood":  # events are not under credit: send them without end
        conn.sendall(HELLO)
        rid = request(conn)
        event = frame(EVENT, rid, json.dumps({"event": "x", "pad": "x" * MB}).encode())
        for _ in range(1000):
            conn.sendall(event)
        hold(conn)

def guarded(conn, mode):
    conn.settimeout(30)
    try:
        serve(conn, mode)
    except OSError:
        pass
    finally:
        conn.close()

path, mode = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(64)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=guarded, args=(conn, mode), daemon=True).start()
"""


@pytest.fixture
def folder() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="sandlot-hostile-", dir="/tmp")  # short: a socket path
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def hostile_agent(folder: str, mode: str) -> Iterator[str]:
    """A compromised agent (a separate process) behaving as ``mode``; its socket's path."""
    path = os.path.join(folder, f"{mode}.sock")
    child = subprocess.Popen(
        [sys.executable, "-I", "-c", AGENT, path, mode], stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        yield path
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


@contextlib.contextmanager
def fd_headroom(spare: int) -> Iterator[None]:
    """This process may open only ``spare`` more descriptors meanwhile: enough for its own
    work, far too few for what the attack would make it hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def drain(handoff: Handoff) -> list[tuple[dict[str, Any], Any]]:
    items = []
    while (item := await asyncio.wait_for(handoff.next(), 5)) is not None:
        items.append(item)
        if item[1] is not None:
            item[1].close()
    handoff.close()
    return items


async def closed(channel: Channel, within: float = 5) -> BaseException:
    """The error that ended the channel, waiting for it at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while channel.closed is None:
        assert time.monotonic() < deadline, "the channel is still open"
        await asyncio.sleep(0.01)
    return channel.closed


def channel_attack(folder: str, mode: str, attack: Any) -> Any:
    """Run ``attack(path)`` against a compromised agent; check that no descriptor stayed."""
    with hostile_agent(folder, mode) as path:
        before = snapshot()
        result = asyncio.run(asyncio.wait_for(attack(path), 20))
        assert not leaked(before), "the attack left descriptors open in the host"
    return result


# -- descriptors ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["bwrap"], indirect=True)
@pytest.mark.attack("64 descriptors a frame on the hand-off, dialled again and again", hole=4)
def test_descriptor_flood_on_the_handoff(folder: str, sandbox: Any, make_sandbox: Any) -> None:
    """The compromised agent attaches 64 descriptors to each of 200 frames of every hand-off
    connection, and the host dials it 20 times (as egress does after a drop). Before the fix
    the host kept every descriptor (12,800 a connection) and ran out: with only 256 spare
    here, nothing else in the process could open a socket. Contained: each hand-off takes
    one descriptor, ends on the truncation, closes what it took; other channels and
    sandboxes of the process keep working, a new sandbox starts."""
    with hostile_agent(folder, "fd-flood") as flood, hostile_agent(folder, "honest") as honest:

        async def attack() -> None:
            neighbour = await Channel.connect_unix(honest)
            before = snapshot()
            for _ in range(20):
                handoff = await Handoff.open(
                    await dial_unix(flood), name="proxy", env={}, takeover=True
                )
                items = await drain(handoff)
                assert isinstance(handoff.error, ProtocolError)
                assert "more descriptors" in str(handoff.error)
                assert all(sock is None for _, sock in items)
                assert not await asyncio.to_thread(leaked, before)
            assert await neighbour.call("ping") == {"ok": True}
            other = await Channel.connect_unix(honest)  # a new connection: a new descriptor
            assert await other.call("ping") == {"ok": True}
            other.close()
            neighbour.close()

        with fd_headroom(256):
            asyncio.run(asyncio.wait_for(attack(), 30))
            assert sandbox.commands.run("echo still here").stdout == "still here\n"
            assert make_sandbox().commands.run("echo new").stdout == "new\n"


@pytest.mark.attack("descriptors attached to the hand-off's HELLO", hole=4)
def test_descriptors_on_the_handoff_hello(folder: str) -> None:
    """64 descriptors come with the HELLO, which carries none. Blocked: the host takes one
    (the kernel closes the rest), closes it and ends the hand-off."""

    async def attack(path: str) -> None:
        handoff = await Handoff.open(await dial_unix(path), name="proxy", env={}, takeover=True)
        items = await drain(handoff)
        assert isinstance(handoff.error, ProtocolError)
        assert items == [({"event": "error", "error": handoff.error}, None)]

    channel_attack(folder, "hello-fds", attack)


@pytest.mark.attack("descriptors attached to frames of the channel itself")
def test_descriptors_on_the_channel(folder: str) -> None:
    """The compromised agent sends 64 descriptors with its HELLO and with every answer on
    the channel (not the hand-off). Held: the channel's reads take no ancillary data, so
    the kernel closes them; the channel works and the host holds none."""

    async def attack(path: str) -> None:
        channel = await Channel.connect_unix(path)
        for _ in range(20):
            assert await channel.call("ping") == {"ok": True}
        channel.close()

    channel_attack(folder, "channel-fds", attack)


# -- frames -----------------------------------------------------------------------------------


@pytest.mark.attack("a 4 GiB frame length")
def test_oversized_frame(folder: str) -> None:
    """The agent answers with a header announcing a 4 GiB END. Held (it did before hole 4's
    fix too): the channel ends with ProtocolError on the header, nothing is allocated for
    it, the request fails instead of waiting."""

    async def attack(path: str) -> None:
        channel = await Channel.connect_unix(path)
        with pytest.raises(ProtocolError):
            await channel.call("ping")
        assert channel._protocol is not None and len(channel._protocol.buffer) <= 1 << 20

    channel_attack(folder, "oversized", attack)


@pytest.mark.attack("garbage instead of frames")
def test_garbage(folder: str) -> None:
    """An HTTP request and random bytes where the HELLO belongs. Blocked: the connect fails
    with ProtocolError, promptly."""

    async def attack(path: str) -> None:
        started = time.monotonic()
        with pytest.raises(ProtocolError):
            await Channel.connect_unix(path, timeout=5)
        assert time.monotonic() - started < 2

    channel_attack(folder, "garbage", attack)


@pytest.mark.attack("an answer for a request the host never opened", hole=4)
def test_bogus_request_id(folder: str) -> None:
    """The agent answers request 1 as if it were request 1001 (a forged result for a
    request that does not exist, or belongs to someone else later). Blocked: ProtocolError;
    the waiting request fails instead of hanging."""

    async def attack(path: str) -> None:
        channel = await Channel.connect_unix(path)
        with pytest.raises(ProtocolError, match="never opened"):
            await asyncio.wait_for(channel.call("ping"), 5)

    channel_attack(folder, "bogus-id", attack)


@pytest.mark.attack("credit for data the host never sent", hole=4)
def test_self_granted_credit(folder: str) -> None:
    """The agent grants the host a whole extra window for a request the host sent nothing
    on. Blocked: ProtocolError."""

    async def attack(path: str) -> None:
        channel = await Channel.connect_unix(path)
        request = channel.open("exec")
        with pytest.raises(ProtocolError, match="never sent"):
            await asyncio.wait_for(request.receive(), 5)

    channel_attack(folder, "self-credit", attack)


@pytest.mark.attack("data past the credit window", hole=4)
def test_data_past_the_window(folder: str) -> None:
    """The agent sends 64 MiB of output that nobody reads, ignoring the 4 MiB window.
    Blocked: ProtocolError as the window is passed; the host buffered at most a window."""

    async def attack(path: str) -> None:
        channel = await Channel.connect_unix(path)
        request = channel.open("exec")
        error = await closed(channel)
        assert isinstance(error, ProtocolError) and "window" in str(error)
        assert sum(len(f[2]) for f in request._frames) <= p.WINDOW

    channel_attack(folder, "over-window", attack)


@pytest.mark.attack("events without end, never read", hole=4)
def test_event_flood(folder: str) -> None:
    """Events are not under credit: the agent sends 1 MiB events without end to a request
    whose reader is busy. Blocked: ProtocolError once 64 MiB are waiting; no more is kept."""

    async def attack(path: str) -> None:
        channel = await Channel.connect_unix(path)
        request = channel.open("exec")
        error = await closed(channel, within=15)
        assert isinstance(error, ProtocolError) and "control frames" in str(error)
        assert sum(len(f[2]) for f in request._frames) <= MAX_BACKLOG

    channel_attack(folder, "event-flood", attack)


@pytest.mark.attack("HELLO after HELLO without end", hole=4)
def test_endless_hellos(folder: str) -> None:
    """The agent repeats its HELLO 100,000 times. Blocked at the second: ProtocolError."""

    async def attack(path: str) -> None:
        try:
            channel = await Channel.connect_unix(path, timeout=5)
        except ProtocolError:
            return  # both arrived before the connect returned
        error = await closed(channel)
        assert isinstance(error, ProtocolError) and "second hello" in str(error)

    channel_attack(folder, "hellos", attack)


@pytest.mark.attack("half a frame, then silence")
def test_half_frame_then_silence(folder: str) -> None:
    """Seven bytes of a HELLO, then nothing. Contained by the connect's timeout: it fails
    with SandboxClosedError in time and holds nothing afterwards."""

    async def attack(path: str) -> None:
        started = time.monotonic()
        with pytest.raises(SandboxClosedError, match="did not answer"):
            await Channel.connect_unix(path, timeout=1)
        assert time.monotonic() - started < 3

    channel_attack(folder, "half-frame", attack)


# -- the sandbox is killed --------------------------------------------------------------------


def inject(channel: Any, data: bytes) -> None:
    """``data`` into the host's parser of ``channel``, as if the agent's socket had
    delivered it (the agent of a real sandbox cannot be made to send it from inside)."""
    protocol = channel._protocol
    buffer = protocol.get_buffer(len(data))
    buffer[: len(data)] = data
    protocol.buffer_updated(len(data))


@pytest.mark.parametrize("provider", ["bwrap"], indirect=True)
@pytest.mark.attack("a bad frame from one sandbox's agent: killed, and only it", hole=4)
async def test_a_violation_kills_the_sandbox(provider: str) -> None:
    """One real sandbox's channel receives an answer for a request the host never opened.
    Contained: that channel ends with ProtocolError and the manager kills the sandbox; a
    second sandbox of the same process keeps working."""
    bad = await sandlot.AsyncSandbox.create(provider=provider)
    good = await sandlot.AsyncSandbox.create(provider=provider)
    try:
        inject(bad._channel, p.pack(p.END, 4242, b"{}") + b"{}")
        assert isinstance(bad._channel.closed, ProtocolError)
        live = bad._live
        deadline = time.monotonic() + 10
        while live.provider.is_alive(live.info.handle):
            assert time.monotonic() < deadline, "the misbehaving sandbox is still running"
            await asyncio.sleep(0.05)
        assert (await good.commands.run("echo fine")).stdout == "fine\n"
        running = {info.id for info in await sandlot.AsyncSandbox.list()}
        assert bad.id not in running and good.id in running
    finally:
        for sb in (bad, good):
            with contextlib.suppress(Exception):
                await sb.kill()


@pytest.mark.attack("agent events named to forge a run's end in its transcript and SSE stream")
def test_forged_events_in_the_transcript(folder: str, tmp_path: Path) -> None:
    """The agent names its events itself: one named ``exit`` (or ``stdout``, or a second
    ``started``) would pose as the log's own kinds, and a line break in a name or in the
    JSON would split an SSE event and let the agent write a whole forged event (its own
    ``id`` and ``exit``) into a client's stream. Blocked: the recorder logs such events as
    plain ``event``, re-encodes every agent message on one line; the real server encoder and
    the SDK's parser see exactly the events logged, and the run ends with the agent's real
    END (exit 3) once."""
    from sandlot.remote.sse import _parse
    from sandlot.server.sse import encode
    from sandlot.store.database import Database, sqlite_url
    from sandlot.store.keys import LOCAL_TENANT, Keys
    from sandlot.store.records import Records
    from sandlot.transcript.eventlog import EventLog
    from sandlot.transcript.hub import Hub
    from sandlot.transcript.logwriter import LogWriter
    from sandlot.transcript.runs import Run

    async def attack(path: str) -> list[Any]:
        db = Database(sqlite_url(tmp_path))
        db.migrate()
        Keys(db).ensure_tenant(LOCAL_TENANT)
        log, records = EventLog(db), Records(db)
        hub = Hub(log, LogWriter(db, log, records))
        hub.start()
        channel = await Channel.connect_unix(path)
        try:
            session = records.create_session(LOCAL_TENANT, {}).id
            run = Run(channel.open("exec", cmd="x"), hub, "exec", session, "sb-1")
            await run.accepted()
            await run.pump()
            await hub.flushed(session)
            return list(log.read(session, 0))
        finally:
            channel.close()
            await hub.close()
            db.close()

    logged = channel_attack(folder, "forged-events", attack)
    kinds = [e.kind for e in logged]
    assert kinds == ["started", "event", "event", "event", "event", "progress", "stdout", "exit"]
    assert json.loads(logged[-1].data) == {"exit_code": 3}
    seen = [_parse(encode(e)[:-2]) for e in logged]  # each block as a client cuts it
    assert [(s.seq, s.kind) for s in seen if s is not None] == [(e.seq, e.kind) for e in logged]
    stream = b"".join(encode(e) for e in logged)
    assert stream.count(b"\n\n") == len(logged)  # no event split in two, none added
    assert b"\nid: 999" not in stream  # the forged id never starts a line
