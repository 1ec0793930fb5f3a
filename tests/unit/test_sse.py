"""Server-Sent Events as the server writes them and the SDK reads them: every byte exact,
however the stream is cut into chunks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from sandlot.remote.sse import ServerEvent, events
from sandlot.server.sse import KEEPALIVE, encode
from sandlot.transcript.eventlog import Event


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)


def _read(chunks: list[bytes]) -> list[ServerEvent]:
    async def run() -> list[ServerEvent]:
        return [e async for e in events(_Response(chunks))]  # type: ignore[arg-type]

    return asyncio.run(run())


def _cut(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


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
    wire = KEEPALIVE + b"".join(encode(e) for e in log)
    got = _read(_cut(wire, random.Random(seed), pieces))
    assert [e.seq for e in got] == [e.seq for e in log]
    assert [e.output for e in got[:-1]] == outputs
    assert got[-1].kind == "exit" and got[-1].data["data"] == {"exit_code": 0}
    assert all(e.data["execution"] == "ex-1" for e in got)


def test_printable_text_travels_as_text_and_the_rest_as_base64() -> None:
    text = encode(Event("s", 1, "ex", "stdout", b'a "quoted" line\n\tand tab\n', 0.0))
    assert b'"text":"a \\"quoted\\" line\\n\\tand tab\\n"' in text
    binary = encode(Event("s", 2, "ex", "stderr", b"\x00\x1b[31mred\xff", 0.0))
    assert b'"b64":' in binary and b"\x00" not in binary
