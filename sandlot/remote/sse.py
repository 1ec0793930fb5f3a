"""Reading Server-Sent Events from an aiohttp response (events may be megabytes long, beyond
aiohttp's line limit, so the stream is cut on blank lines here)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ProtocolError

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True, slots=True)
class ServerEvent:
    seq: int | None
    kind: str
    data: dict[str, Any]

    @property
    def output(self) -> bytes:
        """The bytes of a stdout/stderr event."""
        if "b64" in self.data:
            return base64.b64decode(self.data["b64"])
        return str(self.data.get("text", "")).encode()

    @property
    def execution(self) -> Any:
        return self.data.get("execution")

    @property
    def value(self) -> Any:
        """The agent's message of any other event."""
        return self.data.get("data")


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[ServerEvent]:
    pending: list[bytes] = []  # an event's start, in the chunks it came in
    async for chunk in response.content.iter_any():
        start = 0
        if pending:
            # Join only once the event is complete: its end may span the chunk boundary.
            ends = chunk.find(b"\n\n") >= 0 or (pending[-1][-1:] == chunk[:1] == b"\n")
            if not ends:
                pending.append(chunk)
                continue
            head = sum(len(part) for part in pending)
            chunk = b"".join(pending) + chunk
            pending = []
            start_search = head - 1  # the end is in the new part: search only there
        else:
            start_search = 0
        while True:  # every complete event in the buffer; the rest waits for more
            cut = chunk.find(b"\n\n", max(start, start_search))
            if cut < 0:
                break
            event = _parse(chunk[start:cut])
            start = cut + 2
            if event is not None:
                yield event
        if start < len(chunk):
            pending.append(chunk[start:] if start else chunk)


def _parse(block: bytes) -> ServerEvent | None:
    seq: int | None = None
    kind = "message"
    data: list[bytes] = []
    tail = None
    fields, sep, last = block.rpartition(b"\ndata: ")
    if sep and b"\n" not in last:  # the usual shape: the (long) data line comes last
        tail, block = last, fields  # so it is not split and copied with the short fields
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"id":
            seq = int(value) if value.isdigit() else None
        elif name == b"event":
            kind = value.decode()
        elif name == b"data":
            data.append(value)
    if tail is not None:
        data.append(tail)
    if not data:
        return None
    try:
        payload = orjson.loads(b"\n".join(data))
    except ValueError:
        raise ProtocolError(f"malformed event from the server: {block[:200]!r}") from None
    return ServerEvent(seq, kind, payload if isinstance(payload, dict) else {})
