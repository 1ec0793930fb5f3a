"""The binary event stream as the server writes it and the SDK reads it: every byte exact,
however the body is cut into chunks; a frame that lies about its length is refused."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandlot.errors import ProtocolError
from sandlot.remote.frames import FrameEvent, frames
from sandlot.server.frames import KEEPALIVE, PIECE, writes
from sandlot.transcript.eventlog import Event


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = asyncio.StreamReader()
        for chunk in chunks:
            self.content.feed_data(chunk)
        self.content.feed_eof()


def _read(chunks: list[bytes]) -> list[FrameEvent]:
    async def run() -> list[FrameEvent]:
        return [e async for e in frames(_Response(chunks))]  # type: ignore[arg-type]

    return asyncio.run(run())


def _cut(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _wire(events: list[Event]) -> bytes:
    return b"".join(bytes(part) for part in writes(events))


@settings(max_examples=200, deadline=None)
@given(
    outputs=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
    seed=st.integers(0, 2**32),
    pieces=st.integers(0, 12),
)
def test_output_round_trips_exactly_whatever_the_chunking(
    outputs: list[bytes], seed: int, pieces: int
) -> None:
    log = [Event("ses-1", i + 1, "ex-1", "stdout", data, 0.0) for i, data in enumerate(outputs)]
    log.append(Event("ses-1", len(log) + 1, "ex-1", "exit", b'{"exit_code":0}', 0.0))
    wire = KEEPALIVE + _wire(log[:2]) + KEEPALIVE + _wire(log[2:])
    got = _read(_cut(wire, random.Random(seed), pieces))
    assert [e.seq for e in got] == [e.seq for e in log]
    assert [e.output for e in got[:-1]] == outputs
    assert got[-1].kind == "exit" and got[-1].value == {"exit_code": 0}
    assert all(e.execution == "ex-1" for e in got)


def test_big_output_is_written_in_pieces_and_read_whole() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    log = [
        Event("s", 7, "ex", "stderr", data, 0.0),
        Event("s", 8, None, "sandbox", b'{"event":"ended"}', 0.0),
        Event("s", 9, "ex", "started", b"", 0.0),
    ]
    parts = list(writes(log))
    assert max(len(part) for part in parts) <= PIECE
    got = _read([b"".join(bytes(part) for part in parts)])
    assert got[0] == FrameEvent(7, "stderr", "ex", data)
    assert (got[1].execution, got[1].value) == (None, {"event": "ended"})
    assert got[2].value is None  # an event without data carries null


def test_a_body_cut_inside_a_frame_ends_like_one_cut_between_frames() -> None:
    wire = _wire([Event("s", 1, "ex", "stdout", b"x" * 100, 0.0)] * 2)
    assert [e.seq for e in _read([wire[:-10]])] == [1]


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">I", 5) + b"short",  # shorter than the fixed header
        struct.pack(">I", 1 << 30),  # over the limit
        struct.pack(">IQBB", 12, 1, 200, 0) + b"ab",  # its names overrun it
    ],
)
def test_a_malformed_frame_is_a_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        _read([frame + b"\0" * 64])
