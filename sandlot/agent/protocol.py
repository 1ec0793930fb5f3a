"""The channel protocol, shared by the agent and the host. Standard library only.

Every frame is a 10-byte header followed by ``length`` bytes of payload::

    length: u32 | kind: u8 | stream: u8 | request id: u32 | payload

Control frames (HELLO, REQUEST, EVENT, END, ERROR) carry a JSON object. DATA frames carry raw
bytes for one stream of a request (no base64 on the data path). Flow control is by credit: a
sender of DATA may have at most ``WINDOW`` unacknowledged bytes in flight per request and
direction; the receiver returns CREDIT frames (payload: u32 byte count) as it consumes data, so
a peer that stops reading stops the other side instead of making it buffer without bound.

JSON is encoded and decoded with the ``_json`` accelerator directly: importing :mod:`json`
pulls in :mod:`re` and costs the agent several milliseconds of start-up.
"""

import _json
import _struct

VERSION = 1

HEADER = _struct.Struct("!IBBI")
HEADER_SIZE = HEADER.size
MAX_CONTROL = 16 * 1024 * 1024  # a control frame larger than this is a protocol error
MAX_DATA = 1024 * 1024  # largest DATA payload a peer sends
WINDOW = 4 * 1024 * 1024  # credit window per request and direction
CREDIT = _struct.Struct("!I")

# Frame kinds.
HELLO = 0  # agent -> host, once per connection: {"version", "pid", ...}
REQUEST = 1  # host -> agent: {"op": ..., ...}
EVENT = 2  # agent -> host: a non-final JSON message for a request
END = 3  # agent -> host: the final JSON message for a request
ERROR = 4  # agent -> host: the request failed: {"code", "message"}
DATA = 5  # either way: raw bytes of one stream
EOF = 6  # either way: no more DATA on this stream
GRANT = 7  # either way: CREDIT payload, the receiver consumed that many bytes
CANCEL = 8  # host -> agent: abandon the request

# Streams of a request.
STDIN = 0  # also: the body of a file upload
STDOUT = 1  # also: the body of a file download
STDERR = 2


def pack(kind, rid, payload=b"", stream=0):
    """Return the header for a frame with this payload (the payload is not copied)."""
    return HEADER.pack(len(payload), kind, stream, rid)


_encode_str = _json.encode_basestring_ascii


def dumps(obj):
    """Encode a JSON value (dict, list, str, int, float, bool, None) as ASCII bytes."""
    return _encode(obj).encode("ascii")


def _encode(obj):
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return _encode_str(obj)
    if isinstance(obj, (int, float)):
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ValueError("non-finite number")
        return repr(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(_encode_str(str(k)) + ":" + _encode(v) for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in obj) + "]"
    raise TypeError("cannot encode %s as JSON" % type(obj).__name__)


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name):  # NaN and Infinity are not JSON
        raise ValueError("invalid constant " + name)


_scan = _json.make_scanner(_ScanContext())


def loads(data):
    """Decode one JSON value from bytes; raises ValueError on anything else."""
    text = bytes(data).decode("utf-8")
    start = len(text) - len(text.lstrip())
    try:
        obj, end = _scan(text, start)
    except Exception:  # the C scanner raises StopIteration, JSONDecodeError or worse
        raise ValueError("not JSON") from None
    if text[end:].strip():
        raise ValueError("trailing data after JSON value")
    return obj
