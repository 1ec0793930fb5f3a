"""The binary event stream: the same events as the Server-Sent Events stream, for clients that
ask for it with ``Accept: application/x-sandlot-frames`` (the SDK does). Output travels as its
own bytes: no JSON, base64 or line scanning on either end, which is what bulk output costs.

One frame per event; integers are big-endian::

    u32  length     bytes after this field; 0 is a keep-alive (nothing else follows)
    u64  seq        the event's sequence number in its session's log (for Last-Event-ID)
    u8   K          length of the kind
    u8   E          length of the execution id (0: the event belongs to no execution)
    K    kind       ASCII: stdout, stderr, started, result, progress, exit, error, ...
    E    execution  ASCII
    ...  data       stdout/stderr: the output's bytes as they are; any other kind: the event's
                    JSON value (SSE's ``data.data``), ``null`` when it has none

A frame is at most ``MAX_FRAME`` bytes long (output events are at most 1 MiB).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..transcript.eventlog import Event
from ..transcript.hub import OUTPUT

MEDIA_TYPE = "application/x-sandlot-frames"
HEADER = struct.Struct(">IQBB")  # length, seq, kind length, execution length
MAX_FRAME = 64 * 1024 * 1024
KEEPALIVE = b"\0\0\0\0"
ALONE = 64 * 1024  # data this big is not joined with other frames (a copy)...
# ...but written in pieces: the HTTP layer copies each write to frame it, and a copy this
# small comes from the reused heap, not from a new mapping (server/memory.py): 1 MiB in one
# write cost page faults for every 4 KiB of it.
PIECE = 192 * 1024


def encode(event: Event) -> list[bytes]:
    """The frame of one event, as a header and the data (not joined: the data may be 1 MiB)."""
    kind = event.kind.encode("ascii", "replace")[:255]  # the agent names its events
    execution = (event.execution_id or "").encode("ascii", "replace")[:255]
    data = event.data if event.data or event.kind in OUTPUT else b"null"
    length = HEADER.size - 4 + len(kind) + len(execution) + len(data)
    head = HEADER.pack(length, event.seq, len(kind), len(execution)) + kind + execution
    return [head, data]


def writes(events: list[Event]) -> Iterator[bytes | memoryview]:
    """The frames of a batch of events in few writes: small frames joined, big output data
    apart, in pieces of at most ``PIECE`` bytes."""
    parts: list[bytes] = []
    for event in events:
        head, data = encode(event)
        parts.append(head)
        if len(data) < ALONE:
            parts.append(data)
        else:
            yield b"".join(parts)
            parts = []
            view = memoryview(data)
            for start in range(0, len(data), PIECE):
                yield view[start : start + PIECE]
    if parts:
        yield b"".join(parts)
