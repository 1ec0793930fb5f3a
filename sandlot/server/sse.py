"""Server-Sent Events: one log event per SSE event, its ``id`` the session's sequence number.

``data`` is one line of JSON. Output events carry their bytes as ``text`` when they are
printable ASCII (with newlines and tabs), and as ``b64`` otherwise: JSON would spell each
control byte in six, and a chunk may end inside a UTF-8 character; either way every byte
arrives exactly. The other events carry the agent's message as ``data``::

    id: 42
    event: stdout
    data: {"execution":"ex-...","text":"hello\\n"}
"""

from __future__ import annotations

import base64
import json

import orjson

from ..transcript.eventlog import Event
from ..transcript.hub import OUTPUT

MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"
PLAIN = bytes(range(0x20, 0x7F)) + b"\n\t"  # bytes JSON carries as they are (or nearly)


def encode(event: Event) -> bytes:
    execution = json.dumps(event.execution_id)
    if event.kind in OUTPUT:
        if not event.data.translate(None, PLAIN):  # nothing but printable ASCII
            body = (
                f'{{"execution":{execution},"text":{orjson.dumps(event.data.decode()).decode()}}}'
            )
        else:
            encoded = base64.b64encode(event.data).decode()
            body = f'{{"execution":{execution},"b64":"{encoded}"}}'
        data = body.encode()
    else:
        data = b'{"execution":%s,"data":%s}' % (execution.encode(), event.data or b"null")
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.kind.encode(), data)
