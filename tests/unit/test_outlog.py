"""The agent's output log: offsets, the newest ``limit`` bytes kept, gaps, reads by offset,
and what it counts into the agent's shared budget."""

from __future__ import annotations

import random

from sandlot.agent.outlog import CHUNK_COST, JOIN_BELOW, OutLog


def flat(pieces: list[tuple[int, bytes | memoryview]]) -> list[tuple[int, int]]:
    return [(stream, b) for stream, data in pieces for b in bytes(data)]


def test_offsets_count_both_streams_in_arrival_order() -> None:
    log = OutLog(1000)
    log.append(1, b"abc")
    log.append(2, b"de")
    log.append(1, b"f")
    assert (log.start, log.end, log.gap(0)) == (0, 6, 0)
    assert flat(log.read(0, 100)) == [(1, 97), (1, 98), (1, 99), (2, 100), (2, 101), (1, 102)]
    assert flat(log.read(4, 100)) == [(2, 101), (1, 102)]
    assert flat(log.read(1, 3)) == [(1, 98), (1, 99), (2, 100)]
    assert log.read(6, 100) == [] and log.read(60, 100) == []


def test_the_oldest_bytes_go_and_the_gap_says_how_many() -> None:
    log = OutLog(10)
    for i in range(5):
        log.append(1, bytes([i]) * 4)  # 20 bytes through a 10-byte log
    assert (log.start, log.end, log.size) == (10, 20, 10)
    assert log.gap(0) == 10 and log.gap(7) == 3 and log.gap(10) == 0 and log.gap(15) == 0
    assert (
        bytes(b for _, b in flat(log.read(0, 100))) == b"\x02\x02\x03\x03\x03\x03\x04\x04\x04\x04"
    )


def test_reads_match_a_reference_whatever_the_chunks() -> None:
    rng = random.Random(7)
    log = OutLog(5000)
    reference: list[tuple[int, int]] = []
    for _ in range(400):
        stream = rng.choice((1, 2))
        data = bytes(rng.randrange(256) for _ in range(rng.choice((1, 10, 700, 3000))))
        log.append(stream, data)
        reference += [(stream, b) for b in data]
        assert log.end == len(reference) and log.size <= 5000
        offset = rng.randrange(0, log.end + 1)
        size = rng.randrange(1, 9000)
        start = max(offset, log.start)
        assert flat(log.read(offset, size)) == reference[start : start + size]


def test_small_chunks_of_one_stream_are_joined_and_the_budget_is_exact() -> None:
    budget = [0]
    log = OutLog(1 << 20, budget)
    for _ in range(100):
        log.append(1, b"x" * 10)
    assert len(log.read(0, 10_000)) == 1  # one chunk, not a hundred
    log.append(2, b"y" * JOIN_BELOW)
    assert budget[0] == log.held == 1000 + JOIN_BELOW + 2 * CHUNK_COST
    log.trim(500)
    assert budget[0] == log.held == 500 + JOIN_BELOW + 2 * CHUNK_COST
    log.clear()
    assert budget[0] == log.held == 0 and (log.start, log.end) == (log.end, 1000 + JOIN_BELOW)


def test_many_tiny_trims_keep_the_chunk_list_compact() -> None:
    log = OutLog(100)
    for i in range(10_000):
        log.append(1 + i % 2, b"z" * 50)  # alternating streams: no joining
    assert log.size == 100
    assert len(log._chunks) - log._head <= 3 and len(log._chunks) < 200
