"""A plain WebSocket client (the ``websockets`` package, sync) for the server's terminal
endpoints, as a browser or a script would drive them: no sandlot code on this side."""

from __future__ import annotations

import inspect
import json
import time
from typing import Any
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

WAIT = 60.0  # a bound on every wait, never an assertion on speed


class Term:
    """One WebSocket on a terminal: what came out (bytes, control messages), and input."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = bytearray()
        self.controls: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None

    def type(self, text: str | bytes) -> None:
        self.ws.send(text.encode() if isinstance(text, str) else text)

    def control(self, **message: Any) -> None:
        self.ws.send(json.dumps(message))

    def _next(self, deadline: float) -> None:
        message = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(message, bytes):
            self.output += message
        else:
            self.controls.append(json.loads(message))

    def until(self, needle: str | bytes, timeout: float = WAIT) -> bytes:
        """Read until ``needle`` is in the output; the output so far."""
        raw = needle.encode() if isinstance(needle, str) else needle
        deadline = time.monotonic() + timeout
        while raw not in self.output:
            try:
                self._next(deadline)
            except TimeoutError:
                raise AssertionError(f"no {needle!r} in {bytes(self.output)[-2000:]!r}") from None
            except ConnectionClosed as exc:
                raise AssertionError(f"closed ({exc}) before {needle!r}: {self.output!r}") from None
        return bytes(self.output)

    def control_of(self, kind: str, timeout: float = WAIT) -> dict[str, Any]:
        """Read until a control message of this type has come; that message."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.controls:
                if message.get("type") == kind:
                    return message
            try:
                self._next(deadline)
            except ConnectionClosed as exc:
                self.closed = exc
                raise AssertionError(f"closed ({exc}) before {kind}: {self.controls}") from None

    def exit(self, timeout: float = WAIT) -> dict[str, Any]:
        """The exit message; then the server closes normally."""
        message = self.control_of("exit", timeout)
        try:
            while True:
                self._next(time.monotonic() + timeout)
        except ConnectionClosed as exc:
            self.closed = exc
        assert self.closed is not None and self.closed.rcvd is not None
        assert self.closed.rcvd.code == 1000, self.closed
        return message

    def close_code(self, timeout: float = WAIT) -> int:
        """Read to the end; the close code the server sent."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._next(deadline)
        except ConnectionClosed as exc:
            self.closed = exc
            return exc.rcvd.code if exc.rcvd is not None else 1006

    def close(self) -> None:
        self.ws.close()


def ws_url(url: str, sandbox_id: str, path: str = "/pty", **query: Any) -> str:
    base = url.replace("http://", "ws://", 1) + f"/v1/sandboxes/{sandbox_id}{path}"
    return base + ("?" + urlencode(query) if query else "")


# websockets 17.1 warns unless `legacy=True` asks for the connection returned directly; 16.x
# (what openai-agents 0.24 allows beside it) has no such flag and returns it directly anyway.
DIRECT: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
)


def dial(
    url: str,
    sandbox_id: str,
    path: str = "/pty",
    *,
    key: str | None = None,
    subprotocols: list[str] | None = None,
    **query: Any,
) -> Term:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    ws = connect(
        ws_url(url, sandbox_id, path, **query),
        additional_headers=headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        open_timeout=WAIT,
        max_size=None,
        compression=None,
        **DIRECT,  # held open across calls, closed by the test
    )
    return Term(ws)


def start(url: str, sandbox_id: str, *, key: str | None = None, **fields: Any) -> Term:
    """A new terminal: the socket, the start message, and its started message read."""
    term = dial(url, sandbox_id, key=key)
    term.control(type="start", **fields)
    term.control_of("started")
    return term
