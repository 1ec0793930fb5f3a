"""Terminals and reattaching over the server's WebSocket: the agent ops ``pty`` and
``proc.attach`` for :class:`~sandlot.remote.channel.RemoteChannel`.

One WebSocket per operation (``/v1/sandboxes/{id}/pty`` or ``.../pty/{pid}?offset=N``, in
the tagged mode: every binary message from the server starts with its stream's number), its
messages turned back into the agent's frames: ``started``/``attached`` as EVENTs, output as
DATA, ``exit`` as the END. Input goes out as binary messages. The wire format is the
server's (:mod:`sandlot.server.api_pty`, docs/server.md).

When the connection drops before the process has ended, the request reattaches from the
byte it had reached (``proc.attach`` at that offset), so no byte is lost or repeated while
the agent's buffer holds it; only a server that stays away for ``RESUME_FOR`` seconds ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..agent import protocol as p
from ..channel.base import Frame, RequestLike
from ..errors import (
    InvalidArgumentError,
    ProtocolError,
    RemoteUnavailableError,
    SandboxClosedError,
    from_dict,
)
from .client import background

if TYPE_CHECKING:
    import aiohttp

    from .channel import RemoteChannel

SUBPROTOCOL = "sandlot.pty"
CHUNK = p.MAX_DATA  # the largest binary message the server takes
RESUME_FOR = 30.0  # seconds a dropped terminal keeps trying to reattach
STREAMS = (p.STDOUT, p.STDERR)


class TerminalSocket(RequestLike):
    """``pty`` (start a terminal) or ``proc.attach`` (reattach to a process) as a request."""

    def __init__(self, channel: RemoteChannel, op: str, args: dict[str, Any]) -> None:
        self.channel = channel
        self.op = op
        self.args = {k: v for k, v in args.items() if v is not None}
        self.done = False
        self.pid: int | None = args.get("pid")
        self.position: int | None = None  # the offset of the next output byte, once known
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._lock = asyncio.Lock()
        self._resumed = False  # the next attached event answers our own reattach
        channel.requests.add(self)

    # -- the connection ----------------------------------------------------------------------

    async def _socket(self) -> aiohttp.ClientWebSocketResponse:
        async with self._lock:
            if self.done:
                raise SandboxClosedError("the terminal's request has ended")
            if self._ws is None:
                if self.op == "pty":
                    self._ws = await self._connect("/pty", {})
                    start = {"type": "start", **self.args}
                    await self._ws.send_str(json.dumps(start, default=_plain))
                else:
                    offset = self.args.get("offset", 0)
                    self._ws = await self._connect(f"/pty/{self.args['pid']}", {"offset": offset})
            return self._ws

    async def _connect(self, path: str, query: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
        import aiohttp

        client = self.channel.client
        url = "ws" + client.url.removeprefix("http") + self.channel.base + path
        url += "?" + urlencode({"tagged": "true", **query})
        try:
            return await client.session().ws_connect(
                url,
                protocols=(SUBPROTOCOL,),
                autoping=True,
                heartbeat=client.stream_timeout / 3,  # a silent path is found, not waited on
                max_msg_size=CHUNK + 1 + 65536,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise _refusal(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RemoteUnavailableError(
                f"cannot reach the sandlot server at {client.url}: {exc}", url=client.url
            ) from None

    # -- frames in -----------------------------------------------------------------------------

    async def receive(self) -> Frame:
        import aiohttp

        while True:
            ws = await self._socket()
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                data: bytes = message.data
                if not data or data[0] not in STREAMS:
                    raise self._broken(ProtocolError("the server sent untagged output"))
                if self.position is not None:
                    self.position += len(data) - 1
                return p.DATA, data[0], data[1:]
            if message.type == aiohttp.WSMsgType.TEXT:
                frame = self._control(message.data)
                if frame is not None:
                    return frame
                continue
            await self._lost(ws)

    def _control(self, text: str) -> Frame | None:
        try:
            message = json.loads(text)
            kind = message.pop("type")
        except (ValueError, AttributeError, KeyError, TypeError):
            error = ProtocolError("the server sent a malformed control message")
            raise self._broken(error) from None
        if kind == "exit":
            self._finish()
            return p.END, 0, json.dumps(message).encode()
        if kind == "error":
            self._finish()
            raise from_dict(message)
        if kind == "started":
            self.pid, self.position = message.get("pid"), 0
        elif kind == "attached":
            start, gap = message.get("start", 0), message.get("gap", 0)
            offset = self.args.get("offset", 0) if self.position is None else self.position
            self.position = max(offset, start) if isinstance(start, int) else offset
            if self._resumed:  # our own reattach after a drop: the caller saw one already
                self._resumed = False
                if gap:
                    raise self._broken(
                        SandboxClosedError(
                            f"the terminal's connection dropped and {gap} bytes of its output "
                            "were lost from the sandbox's buffer meanwhile",
                            gap=gap,
                        )
                    )
                return None
        return p.EVENT, 0, json.dumps({"event": kind, **message}).encode()

    async def _lost(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The connection ended before the process did: reattach where we were."""
        self._ws = None
        with contextlib.suppress(Exception):
            await ws.close()
        if self.done or self.pid is None or self.position is None:
            raise self._broken(SandboxClosedError("the terminal's connection closed early"))
        loop = asyncio.get_running_loop()
        give_up_at, delay = loop.time() + RESUME_FOR, 0.05
        while True:
            try:
                self._ws = await self._connect(f"/pty/{self.pid}", {"offset": self.position})
                self._resumed = True
                return
            except RemoteUnavailableError:
                if loop.time() + delay > give_up_at:
                    raise self._broken(
                        RemoteUnavailableError(
                            f"lost the terminal {self.pid} on the sandlot server at "
                            f"{self.channel.client.url} and could not reattach within "
                            f"{RESUME_FOR:g} s",
                            url=self.channel.client.url,
                        )
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def consumed(self, amount: int) -> None:
        """The WebSocket carries the back-pressure (the server waits for the socket)."""

    # -- input and the end ----------------------------------------------------------------------

    async def send_data(self, data: bytes, stream: int = p.STDIN) -> None:
        ws = await self._socket()
        view = memoryview(data)
        for at in range(0, len(view), CHUNK):
            await ws.send_bytes(bytes(view[at : at + CHUNK]))

    def send_eof(self, stream: int = p.STDIN) -> None:
        if not self.done:
            background(self._say({"type": "eof"}))

    def cancel(self) -> None:
        """A terminal this request started is killed (as the agent does on a CANCEL); an
        attach only lets go of the process."""
        if self.op == "pty" and not self.done:
            background(self._say({"type": "kill"}, close=True))
            self.done = True
            self.channel.requests.discard(self)
            return
        self.abandon()

    def abandon(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            background(ws.close())
        self._finish()

    async def _say(self, message: dict[str, Any], close: bool = False) -> None:
        ws = self._ws or await self._socket()
        try:
            await ws.send_str(json.dumps(message))
        finally:
            if close:
                self._ws = None
                await ws.close()

    def _broken(self, error: Exception) -> Exception:
        self.abandon()
        return error

    def _finish(self) -> None:
        self.done = True
        self.channel.requests.discard(self)
        ws = self._ws
        if ws is not None and not ws.closed:
            background(ws.close())


def _plain(value: Any) -> Any:
    """JSON for what the SDK passes along: secret references as ``{"secret": NAME}``."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    raise TypeError(f"cannot send a {type(value).__name__}")


def _refusal(exc: aiohttp.WSServerHandshakeError) -> Exception:
    """The server's refusal of the upgrade, as the error it named (in its headers: a
    refused upgrade's body does not reach aiohttp's caller)."""
    headers: Any = exc.headers or {}
    code = headers.get("X-Sandlot-Error")
    message = headers.get("X-Sandlot-Message", "")
    if code:
        return from_dict({"code": code, "message": message})
    if exc.status in (403, 404):  # a sandlot server from before terminals, or a proxy's answer
        return InvalidArgumentError(
            f"terminals are not available through this server (it answered {exc.status}): "
            "an older sandlot serve, or a proxy that does not pass WebSocket upgrades on"
        )
    return RemoteUnavailableError(f"the server refused the WebSocket: {exc.status}")


__all__ = ["TerminalSocket"]
