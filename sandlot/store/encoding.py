"""How an event's bytes are stored in the event log: as they are, or zlib-compressed (both
modes: a server's log and embedded sessions' alike).

Output events (``stdout``/``stderr``, coalesced by the hub into chunks of up to 1 MiB) are
most of a log's bytes and usually text, which zlib's fastest level shrinks 3 to 6 times at
well over 100 MB/s. Small events are not worth a call, and data that does not shrink is
stored as it is, so reading it costs nothing. ``events.encoding`` says which; readers call
:func:`unpack` and never see the difference.

Every output chunk a server streams is compressed on its way to the log, so the codec's speed
bounds a stream's: where ISA-L's zlib (the ``isal`` package, in the server and sessions
extras) is installed it does the work, 4 to 20 times faster than zlib's level 1 at about the
same size, writing the same zlib format (any zlib reads it; nothing on disk changes).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

_compress: Callable[[bytes, int], bytes]
try:
    from isal.isal_zlib import compress as _compress
except ImportError:  # zlib's own: slower, the same format
    _compress = zlib.compress

RAW = 0
ZLIB = 1

COMPRESSED_KINDS = frozenset({"stdout", "stderr"})
THRESHOLD = 4096  # smaller output is stored as it is
LEVEL = 1  # zlib's fastest: most of the gain (level 6 is 1.2x smaller, 3x slower on logs);
# ISA-L's level 1 is its smaller one (0 is a little faster, 1.5 to 2 times bigger)
SAMPLE = 4096  # bytes tried first from a big chunk: random data is not compressed whole
SAMPLE_FROM = 64 * 1024  # chunks at least this big are sampled first
KEEP_BELOW = 0.9  # compressed is kept only if it is at most this fraction of the plain size


def pack(kind: str, data: bytes) -> tuple[bytes, int]:
    """The bytes to store and their encoding."""
    if kind not in COMPRESSED_KINDS or len(data) < THRESHOLD:
        return data, RAW
    if len(data) >= SAMPLE_FROM:
        middle = len(data) // 2
        sample = data[middle : middle + SAMPLE]
        if len(_compress(sample, LEVEL)) > len(sample) * KEEP_BELOW:
            return data, RAW  # incompressible (already compressed, random, encrypted)
    packed = _compress(data, LEVEL)
    if len(packed) > len(data) * KEEP_BELOW:
        return data, RAW
    return packed, ZLIB


def unpack(stored: bytes, encoding: int) -> bytes:
    """The plain bytes of a stored event."""
    if encoding == RAW:
        return stored
    if encoding == ZLIB:
        return zlib.decompress(stored)
    raise ValueError(f"unknown event encoding {encoding}: written by a newer sandlot?")
