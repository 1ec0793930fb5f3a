"""Fuzzing the host side of the channel: the frame parser (:class:`_Protocol` cutting frames
for :meth:`Channel._on_frame`) and the descriptor hand-off (:class:`Handoff`), with
hypothesis under a bounded budget (the file runs in a few seconds).

Properties, for byte streams that are arbitrary, or valid then garbage, split anywhere:
nothing raises out of a callback the event loop makes, no descriptor leaks (none is open
after that was not before: ``tests/fds.py``), and each run ends with the valid frames
delivered or with the connection ended by a :class:`ProtocolError`.

The parser is fed the way asyncio's transport feeds it (``get_buffer``, then
``buffer_updated`` with the bytes one read returned), so a test chooses every split point;
its transport is a stand-in that records what the channel writes and whether it aborted
(cutting frames needs no socket). One test runs the same streams over a real socket, and the
hand-off is always fuzzed over a real socket pair, descriptors and all.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fds import in_fresh_process, leaked, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandlot.agent import protocol as p
from sandlot.channel.connection import Channel, Request, _Protocol
from sandlot.channel.handoff import Handoff
from sandlot.errors import ProtocolError, SandboxClosedError

FUZZ = settings(
    max_examples=150,
    deadline=2000,  # ms per example: generous for a loaded CI machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_SOCKETS = settings(FUZZ, max_examples=60)


def frame(kind: int, rid: int, payload: bytes = b"", stream: int = 0) -> bytes:
    return p.pack(kind, rid, payload, stream) + payload


HELLO = frame(p.HELLO, 0, p.dumps({"version": p.VERSION, "pid": 1}))


# In this process other tests' background work (sandboxes' sweepers, pools) may open a
# descriptor at any moment, so the checks of what stays open run in a fresh interpreter:
# test_no_descriptor_stays runs the socket properties again there, with them switched on.
CHECK_DESCRIPTORS = False


def no_descriptor_stays(before: set[tuple[int, int, int]]) -> None:
    if CHECK_DESCRIPTORS:  # alone in its process: what closes, closes at once
        assert not leaked(before, within=0.5)


# -- the channel's parser ---------------------------------------------------------------------


class _Transport(asyncio.Transport):
    """Stands in for the socket transport: records writes and aborts."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.written = bytearray()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` cut at the given sizes (cycled), as reads would return it."""
    offset, i = 0, 0
    while offset < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        yield data[offset : offset + size]
        offset += size
        i += 1


def feed(protocol: _Protocol, data: bytes, sizes: list[int]) -> None:
    """What asyncio's transport does with each read: fill the buffer it got, report it."""
    for chunk in chunks(data, sizes):
        view = memoryview(chunk)
        while view:
            if protocol.channel.closed is not None:
                return  # the transport was aborted: it reads no more
            buffer = protocol.get_buffer(-1)
            n = min(len(buffer), len(view))
            assert n > 0
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]


def run_parser(
    data: bytes, sizes: list[int], requests: int = 3
) -> tuple[Channel, _Transport, list[Request]]:
    async def main() -> tuple[Channel, _Transport, list[Request]]:
        channel = Channel()
        transport = _Transport()
        protocol = _Protocol(channel)
        channel._protocol = protocol
        protocol.connection_made(transport)
        opened = [channel.open("exec") for _ in range(requests)]
        feed(protocol, data, sizes)
        # The buffer never outgrows twice the largest frame the header allowed.
        assert len(protocol.buffer) <= 2 * (p.HEADER_SIZE + p.MAX_CONTROL)
        return channel, transport, opened

    return asyncio.run(main())


def ended_well(channel: Channel, transport: _Transport) -> None:
    """Open, or ended for a protocol violation (and then disconnected)."""
    if channel.closed is not None:
        assert isinstance(channel.closed, ProtocolError), channel.closed
        assert transport.aborted


sizes_st = st.lists(st.integers(1, 97), min_size=1, max_size=8)
json_objects = st.dictionaries(
    st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=8), st.none()), max_size=3
)
payloads = st.one_of(
    st.binary(max_size=40),
    json_objects.map(lambda o: json.dumps(o).encode()),
    st.sampled_from([b"[]", b"1", b'"x"', b"null", b"[" * 5000, b"{", b"\xff\xfe", b""]),
    st.integers(0, 2**32 - 1).map(p.CREDIT.pack),
)
# Frames an attacker would try: every kind and stream, ids opened and not, any payload.
raw_frames = st.builds(
    lambda kind, stream, rid, payload: frame(kind, rid, payload, stream),
    st.integers(0, 12),
    st.integers(0, 4),
    st.sampled_from([0, 1, 2, 3, 4, 2**32 - 1]),
    payloads,
)


@st.composite
def valid_sessions(draw: st.DrawFn) -> tuple[bytes, dict[int, list[tuple[int, int, bytes]]]]:
    """A HELLO and frames an honest agent sends for requests 1-3; what each should receive."""
    expected: dict[int, list[tuple[int, int, bytes]]] = {1: [], 2: [], 3: []}
    ended: set[int] = set()
    out = [HELLO]
    for _ in range(draw(st.integers(0, 12))):
        rid = draw(st.sampled_from([r for r in expected if r not in ended] or [0]))
        if rid == 0:
            break
        kind = draw(st.sampled_from([p.EVENT, p.DATA, p.DATA, p.EOF, p.END, p.ERROR]))
        if kind == p.DATA:
            stream, payload = draw(st.sampled_from([p.STDOUT, p.STDERR])), draw(st.binary())
        elif kind == p.EOF:
            stream, payload = p.STDOUT, b""
        elif kind == p.ERROR:
            stream, payload = 0, p.dumps({"code": "not_found", "message": "gone"})
        else:
            stream, payload = 0, json.dumps(draw(json_objects)).encode()
        out.append(frame(kind, rid, payload, stream))
        expected[rid].append((kind, stream, payload))
        if kind in (p.END, p.ERROR):
            ended.add(rid)
    return b"".join(out), expected


@FUZZ
@given(data=st.binary(max_size=600), sizes=sizes_st)
def test_any_bytes(data: bytes, sizes: list[int]) -> None:
    channel, transport, _ = run_parser(data, sizes)
    ended_well(channel, transport)


@FUZZ
@given(frames=st.lists(raw_frames, max_size=12), hello=st.booleans(), sizes=sizes_st)
def test_any_frames(frames: list[bytes], hello: bool, sizes: list[int]) -> None:
    data = (HELLO if hello else b"") + b"".join(frames)
    channel, transport, _ = run_parser(data, sizes)
    ended_well(channel, transport)


@FUZZ
@given(
    session=valid_sessions(),
    garbage=st.one_of(st.binary(max_size=200), st.lists(raw_frames, max_size=4).map(b"".join)),
    sizes=sizes_st,
)
def test_valid_frames_then_garbage(
    session: tuple[bytes, dict[int, list[tuple[int, int, bytes]]]],
    garbage: bytes,
    sizes: list[int],
) -> None:
    data, expected = session
    channel, transport, opened = run_parser(data + garbage, sizes)
    ended_well(channel, transport)
    assert channel._hello.done() and not channel._hello.cancelled()
    for request in opened:  # every valid frame arrived, in order, before anything else
        want = expected[request.rid]
        assert list(request._frames)[: len(want)] == want


def test_valid_frames_alone_keep_the_channel_open() -> None:
    data = HELLO + frame(p.EVENT, 1, b'{"event":"started"}') + frame(p.DATA, 1, b"x", p.STDOUT)
    channel, transport, opened = run_parser(data, [3])
    assert channel.closed is None and not transport.aborted
    assert [f[0] for f in opened[0]._frames] == [p.EVENT, p.DATA]


VIOLATIONS = [
    (frame(p.EVENT, 1, b"{}"), "before the hello"),
    (HELLO + HELLO, "second hello"),
    (HELLO + frame(p.EVENT, 9, b"{}"), "never opened"),
    (HELLO + frame(p.EVENT, 0, b"{}"), "never opened"),
    (HELLO + frame(p.EVENT, 1, b"[1]"), "not a JSON object"),
    (HELLO + frame(p.END, 1, b"{"), "malformed"),
    (HELLO + frame(p.END, 1, b"[" * 100_000), "malformed"),
    (HELLO + frame(p.ERROR, 1, b'{"code":"provision_failed","x":1}'), "malformed error"),
    (HELLO + frame(p.REQUEST, 1, b"{}"), "kind 1"),
    (HELLO + frame(p.CANCEL, 1), "kind 8"),
    (HELLO + frame(42, 1), "kind 42"),
    (HELLO + p.HEADER.pack(p.MAX_DATA + 1, p.DATA, p.STDOUT, 1), "byte frame"),
    (HELLO + p.HEADER.pack(p.MAX_CONTROL + 1, p.EVENT, 0, 1), "byte frame"),
    (HELLO + frame(p.EOF, 1, b"x", p.STDOUT), "byte frame"),
    (HELLO + frame(p.DATA, 1, b"x", p.STDIN), "stream 0"),
    (HELLO + frame(p.DATA, 1, b"x", 7), "stream 7"),
    (HELLO + frame(p.EVENT, 1, b"{}", 1), "stream 1"),
    (HELLO + frame(p.GRANT, 1, b"\0\0", p.STDIN), "2-byte credit"),
    (HELLO + frame(p.GRANT, 1, p.CREDIT.pack(1), p.STDIN), "never sent"),
    (HELLO + frame(p.DATA, 1, b"x" * p.MAX_DATA, p.STDOUT) * 5, "window"),
    (frame(p.HELLO, 0, b'{"version":99}'), "unsupported agent"),
    (frame(p.HELLO, 0, b"[]"), "not a JSON object"),
]


@pytest.mark.parametrize(("data", "why"), VIOLATIONS, ids=[w for _, w in VIOLATIONS])
def test_each_violation_disconnects(data: bytes, why: str) -> None:
    channel, transport, opened = run_parser(data, [len(data)])
    assert isinstance(channel.closed, ProtocolError) and why in str(channel.closed)
    assert transport.aborted and not channel._requests
    assert all(r._failure is channel.closed for r in opened)  # no waiter hangs


def test_nothing_past_a_violation_is_read() -> None:
    after = frame(p.EVENT, 1, b"{}")
    data = HELLO + frame(p.EVENT, 2, b"[]") + after + HELLO + frame(p.EVENT, 3, b"{}")
    channel, _, opened = run_parser(data, [len(data)])
    assert isinstance(channel.closed, ProtocolError)
    assert [len(r._frames) for r in opened] == [0, 0, 0]


def test_an_unread_flood_of_events_is_cut_off() -> None:
    event = frame(p.EVENT, 1, b'{"event":"' + b"x" * 65_000 + b'"}')
    channel, _, _ = run_parser(HELLO + event * 1100, [len(event)])
    assert isinstance(channel.closed, ProtocolError) and "control frames" in str(channel.closed)


def test_late_frames_of_a_finished_request_are_dropped() -> None:
    data = HELLO + frame(p.END, 1, b"{}") + frame(p.DATA, 1, b"late", p.STDOUT)
    data += frame(p.EVENT, 2, b"{}")
    channel, _, opened = run_parser(data, [len(data)])
    assert channel.closed is None
    assert [f[0] for f in opened[0]._frames] == [p.END]


def test_credit_the_host_used_may_come_back() -> None:
    async def main() -> None:
        channel = Channel()
        protocol = _Protocol(channel)
        channel._protocol = protocol
        protocol.connection_made(_Transport())
        request = channel.open("write")
        await request.send_data(b"x" * 1000)
        feed(protocol, HELLO + frame(p.GRANT, 1, p.CREDIT.pack(1000), p.STDIN), [7])
        assert channel.closed is None and request._send_credit == p.WINDOW
        feed(protocol, frame(p.GRANT, 1, p.CREDIT.pack(1), p.STDIN), [7])
        assert isinstance(channel.closed, ProtocolError)

    asyncio.run(main())


@FUZZ_SOCKETS
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.lists(raw_frames, max_size=6).map(lambda f: HELLO + b"".join(f)),
    )
)
def test_over_a_socket(data: bytes) -> None:
    """The same streams from a real peer: the loop sees no exception, no descriptor stays."""
    before = snapshot()
    problems: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: problems.append(ctx))
        ours, theirs = socket.socketpair()
        theirs.sendall(data)
        theirs.close()

        async def dial() -> socket.socket:
            return ours

        try:
            channel = await Channel.connect_with(dial, timeout=2)
        except (ProtocolError, SandboxClosedError):
            return
        await asyncio.sleep(0)
        if channel.closed is None:
            channel.close()

    asyncio.run(main())
    assert not problems
    no_descriptor_stays(before)


# -- the hand-off -----------------------------------------------------------------------------

FD_KINDS = ("tcp", "pipe", "unix", "udp", "listening", "file")


class Descriptors:
    """Descriptors of every kind an attacker might attach; all closed by :meth:`close`."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.held: list[Any] = [self.server]

    def make(self, kind: str) -> int:
        """A new descriptor of ``kind``, owned by this object."""
        if kind == "tcp":
            client = socket.create_connection(self.server.getsockname())
            accepted, _ = self.server.accept()
            self.held += [client, accepted]
            return client.fileno()
        if kind == "pipe":
            r, w = os.pipe()
            self.held += [r, w]
            return r
        if kind == "unix":
            a, b = socket.socketpair()
            self.held += [a, b]
            return a.fileno()
        if kind == "udp":
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.held.append(udp)
            return udp.fileno()
        if kind == "listening":
            listening = socket.create_server(("127.0.0.1", 0))
            self.held.append(listening)
            return listening.fileno()
        handle = open(__file__, "rb")  # noqa: SIM115 (closed with the rest)
        self.held.append(handle)
        return handle.fileno()

    def close(self) -> None:
        for thing in self.held:
            if isinstance(thing, int):
                os.close(thing)
            else:
                thing.close()


# Bytes, and the kinds of the descriptors attached to them; None: let the host read first.
Send = tuple[bytes, list[str]] | None


def run_handoff(sends: list[Send]) -> tuple[list[tuple[dict[str, Any], Any]], Handoff]:
    """Play the agent's side of a hand-off connection: each send with one sendmsg, as the
    agent does, then close; the host's items until the end. Checks that the loop saw no
    exception and that every descriptor is closed in the end."""
    before = snapshot()
    problems: list[dict[str, Any]] = []

    async def main() -> tuple[list[tuple[dict[str, Any], Any]], Handoff]:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: problems.append(ctx))
        host, agent = socket.socketpair()
        made = Descriptors()
        try:
            handoff = await Handoff.open(host, name="proxy", env={}, takeover=True)
            for send in sends:
                if send is None:  # the reader runs on the loop's next turns
                    for _ in range(3):
                        await asyncio.sleep(0)
                    continue
                data, kinds = send
                fds = array.array("i", [made.make(k) for k in kinds])
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)] if kinds else []
                try:
                    agent.sendmsg([data], rights)
                except OSError:  # the host has ended it already
                    break
        finally:
            agent.close()
            made.close()
        items = []
        while (item := await asyncio.wait_for(handoff.next(), 5)) is not None:
            items.append(item)
            if item[1] is not None:
                assert item[1].type == socket.SOCK_STREAM
                assert item[1].family in (socket.AF_INET, socket.AF_INET6)
                item[1].close()
        handoff.close()
        return items, handoff

    result = asyncio.run(main())
    assert not problems
    no_descriptor_stays(before)
    return result


def accept(ident: int, fd: bool = True) -> bytes:
    event: dict[str, Any] = {"event": "accept", "id": ident}
    if fd:
        event["fd"] = True
    return frame(p.EVENT, 1, p.dumps(event))


LISTENING = frame(p.EVENT, 1, p.dumps({"event": "listening", "port": 1}))
fd_kinds = st.lists(st.sampled_from(FD_KINDS), max_size=3) | st.lists(
    st.sampled_from(FD_KINDS), min_size=60, max_size=64
)
handoff_frames = st.one_of(
    raw_frames,
    st.integers(0, 9).map(accept),
    st.just(LISTENING),
    st.just(HELLO),
    st.just(frame(p.END, 1, b'{"taken_over":true}')),
)


@FUZZ_SOCKETS
@given(
    sends=st.lists(
        st.none()
        | st.tuples(st.one_of(st.binary(min_size=1, max_size=120), handoff_frames), fd_kinds),
        max_size=6,
    ),
    hello=st.booleans(),
)
def test_handoff_any_sends(sends: list[Send], hello: bool) -> None:
    items, handoff = run_handoff(([(HELLO, [])] if hello else []) + sends)
    errors = [event["error"] for event, _ in items if event.get("event") == "error"]
    if handoff.error is not None:
        assert errors and errors[-1] is handoff.error
        assert all(sock is None for _, sock in items)  # what it queued was dropped


@FUZZ_SOCKETS
@given(
    kinds=st.lists(st.sampled_from(FD_KINDS), min_size=1, max_size=6),
    garbage=st.lists(
        st.none() | st.tuples(st.binary(min_size=1, max_size=60), fd_kinds), max_size=3
    ),
)
def test_handoff_valid_then_garbage(kinds: list[str], garbage: list[Send]) -> None:
    sends: list[Send] = [(HELLO, []), (LISTENING, [])]
    sends += [(accept(i), [kind]) for i, kind in enumerate(kinds)]
    items, handoff = run_handoff(sends + garbage)
    if handoff.error is not None:
        return  # disconnected: what came before it was dropped with it
    # Every connected TCP socket arrived with its event, in order; the rest were closed.
    assert items[0] == ({"event": "listening", "port": 1}, None)
    handed = [event["id"] for event, sock in items[1:] if sock is not None]
    assert handed[: kinds.count("tcp")] == [i for i, k in enumerate(kinds) if k == "tcp"]


def test_handoff_honest_agent() -> None:
    sends: list[Send] = [
        (HELLO, []),
        (LISTENING, []),
        (accept(1), ["tcp"]),
        (accept(2, fd=False), []),
    ]
    sends.append((frame(p.END, 1, b'{"taken_over":true}'), []))
    items, handoff = run_handoff(sends)
    assert handoff.error is None and handoff.taken_over
    assert [(e["event"], s is not None) for e, s in items] == [
        ("listening", False),
        ("accept", True),
        ("accept", False),
    ]


HANDOFF_VIOLATIONS: list[tuple[list[Send], str]] = [
    ([(HELLO, ["tcp"])], "kind 0"),
    ([(HELLO, []), (LISTENING, ["pipe"])], "kind 2"),
    ([(HELLO, []), (accept(1), ["tcp", "tcp"])], "more descriptors"),
    ([(HELLO, []), (accept(1), ["tcp"] * 64)], "more descriptors"),
    ([(HELLO, []), (accept(1), [])], "without its socket"),
    ([(HELLO, []), (accept(1, fd=False)[:-1] + b"X", [])], "malformed"),
    ([(HELLO, []), (LISTENING[:5], []), None, (LISTENING[5:], ["tcp"])], "middle of a frame"),
    ([(LISTENING, [])], "start with a hello"),
    ([(HELLO, []), (HELLO, [])], "for request 0"),
    ([(HELLO, []), (frame(p.EVENT, 2, b"{}"), [])], "for request 2"),
    ([(HELLO, []), (frame(p.DATA, 1, b"x"), [])], "kind 5"),
    ([(HELLO, []), (p.HEADER.pack(1 << 20, p.EVENT, 0, 1), [])], "byte frame"),
    ([(HELLO, []), (frame(p.EVENT, 1, b'{"event":"accept"}'), [])], "without an id"),
]


@pytest.mark.parametrize(
    ("sends", "why"), HANDOFF_VIOLATIONS, ids=[w for _, w in HANDOFF_VIOLATIONS]
)
def test_handoff_each_violation_ends_it(sends: list[Send], why: str) -> None:
    items, handoff = run_handoff(sends)
    assert handoff.error is not None and why in str(handoff.error), handoff.error
    assert items[-1] == ({"event": "error", "error": handoff.error}, None)


def socket_properties_with_descriptor_checks() -> None:
    """Every property above that runs over real sockets, checking that no descriptor stays
    open (run by :func:`test_no_descriptor_stays` in a fresh interpreter)."""
    global CHECK_DESCRIPTORS
    CHECK_DESCRIPTORS = True
    test_over_a_socket()
    test_handoff_any_sends()
    test_handoff_valid_then_garbage()
    test_handoff_honest_agent()
    for sends, why in HANDOFF_VIOLATIONS:
        test_handoff_each_violation_ends_it(sends, why)


def test_no_descriptor_stays() -> None:
    in_fresh_process(socket_properties_with_descriptor_checks)
