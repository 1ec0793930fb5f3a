"""The channel interface over HTTP: the SDK's one implementation drives a remote sandbox too.

:class:`RemoteChannel` implements :class:`sandlot.channel.ChannelLike` (``open``, ``call``,
``close``), as :class:`sandlot.channel.Channel` does, and turns each agent operation into its
REST call. Executions (commands, cells, installs) become one streaming POST whose events
are turned back into the agent's frames: binary frames (:mod:`.frames`), or Server-Sent Events
from a server that has none; when the connection drops mid-stream, or carries nothing (not
even the server's keep-alive) for the client's ``stream_timeout``, the request resumes from the
log with ``Last-Event-ID``, so no byte is lost and none arrives twice. It keeps trying for the
client's ``retry_for`` seconds (a server that restarts is waited for).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from ..agent import protocol as p
from ..channel.base import ChannelLike, Frame, RequestLike
from ..errors import (
    InvalidArgumentError,
    RemoteUnavailableError,
    SandboxClosedError,
    SandlotError,
    from_dict,
)
from .client import background
from .frames import MEDIA_TYPE as FRAMES
from .frames import FrameEvent, frames
from .sse import ServerEvent, events
from .terminal import TerminalSocket

if TYPE_CHECKING:
    import aiohttp

    from .client import Client

    Event = FrameEvent | ServerEvent

EXECUTIONS = {"exec": "/commands", "code.run": "/code/run", "code.install": "/code/install"}
STREAMS = {"stdout": p.STDOUT, "stderr": p.STDERR}
DRAIN_SECONDS = 5.0  # for the end of a body after its last event
UPLOAD_FLOOR = 1 << 20  # bytes per second an upload may slow to before its deadline ends it
# Binary frames from a server that has them; an older one answers with Server-Sent Events.
STREAM = {"Accept": f"{FRAMES}, text/event-stream;q=0.5"}


def _q(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _segment(value: Any) -> str:
    return quote(str(value).encode("utf-8", "surrogateescape"), safe="")


def _query(**args: Any) -> str:
    """A query string; paths go as their bytes (surrogate escapes included), percent-encoded."""
    return "?" + urlencode(
        {k: _q(v).encode("utf-8", "surrogateescape") for k, v in args.items() if v is not None}
    )


class RemoteChannel(ChannelLike):
    """The channel seam over HTTP, to one remote sandbox."""

    def __init__(self, client: Client, sandbox_id: str) -> None:
        self.client = client
        self.sandbox_id = sandbox_id
        self.base = "/v1/sandboxes/" + quote(sandbox_id, safe="")
        self.closed: SandlotError | None = None
        self.requests: set[RemoteRequest | TerminalSocket] = set()
        # A durable session's sandbox attached with force=True: every execution asks the
        # server to take the session's run lock over from whoever holds it.
        self.force = False

    def open(self, op: str, **args: Any) -> RemoteRequest | TerminalSocket:
        if self.closed is not None:
            raise self.closed
        if op in ("pty", "proc.attach"):  # over the server's WebSocket
            return TerminalSocket(self, op, args)
        if op in EXECUTIONS:
            return _Execution(self, op, args)
        if op == "read":
            return _Download(self, op, args)
        if op == "write":
            return _Upload(self, op, args)
        raise InvalidArgumentError(f"operation {op!r} does not stream")

    async def call(self, op: str, **args: Any) -> Any:
        if self.closed is not None:
            raise self.closed
        method, path, how = _CALLS.get(op, (None, "", ""))
        if method is None:
            raise InvalidArgumentError(f"operation {op!r} is not available on a remote sandbox")
        path = self.base + path.format(**{k: _segment(v) for k, v in args.items()})
        if how == "query":
            answer = await self.client.call(method, path + _query(**args))
        elif how == "json":
            body = {k: v for k, v in args.items() if k not in ("context", "pid")}
            answer = await self.client.call(method, path, json=body)
        else:
            answer = await self.client.call(method, path)
        return _ANSWERS.get(op, lambda a: a)(answer)

    def close(self) -> None:
        if self.closed is None:
            self.closed = SandboxClosedError("the channel was closed")
        for request in list(self.requests):
            request.abandon()


# op -> (method, path under the sandbox, where the arguments go)
_CALLS: dict[str, tuple[str, str, str]] = {
    "list": ("GET", "/files/list", "query"),
    "stat": ("GET", "/files/stat", "query"),
    "exists": ("GET", "/files/exists", "query"),
    "mkdir": ("POST", "/files/mkdir", "json"),
    "remove": ("DELETE", "/files", "query"),
    "rename": ("POST", "/files/rename", "json"),
    "signal": ("POST", "/processes/{pid}/signal", "json"),
    "proc.list": ("GET", "/processes", ""),
    "proc.resize": ("POST", "/processes/{pid}/resize", "json"),
    "code.create": ("POST", "/code/contexts", "json"),
    "code.list": ("GET", "/code/contexts", ""),
    "code.restart": ("POST", "/code/contexts/{context}/restart", "json"),
    "code.remove": ("DELETE", "/code/contexts/{context}", ""),
    "code.interrupt": ("POST", "/code/contexts/{context}/interrupt", ""),
}
# Answers reshaped into what the agent would have said.
_ANSWERS: dict[str, Any] = {
    "list": lambda a: {"entries": a},
    "code.list": lambda a: {"contexts": a},
    "remove": lambda a: {},
    "code.remove": lambda a: {},
    "proc.list": lambda a: {"processes": a},
    "proc.resize": lambda a: {},
}


class RemoteRequest(RequestLike):
    """One streaming operation over HTTP."""

    def __init__(self, channel: RemoteChannel, op: str, args: dict[str, Any]) -> None:
        self.channel = channel
        self.op = op
        self.args = args
        self.done = False
        self._frames: AsyncIterator[Frame] | None = None
        self._response: aiohttp.ClientResponse | None = None
        channel.requests.add(self)

    async def receive(self) -> Frame:
        if self._frames is None:
            self._frames = self._produce()
        try:
            frame = await self._frames.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise SandboxClosedError("the server ended the stream without a result") from None
        except Exception:
            self._finish()  # the operation failed; a cancelled caller still cancels it
            raise
        if frame[0] == p.END:
            await self._frames.aclose()  # type: ignore[attr-defined]  # releases the response
            self._finish()
        return frame

    def _produce(self) -> AsyncIterator[Frame]:
        raise NotImplementedError

    def consumed(self, amount: int) -> None:
        """HTTP carries the back-pressure (the server waits for the socket)."""

    async def send_data(self, data: bytes, stream: int = p.STDIN) -> None:
        raise InvalidArgumentError(f"{self.op} takes no input")

    def send_eof(self, stream: int = p.STDIN) -> None:
        return None

    def cancel(self) -> None:
        self.abandon()

    def abandon(self) -> None:
        if self._response is not None:
            self._response.close()
        self._finish()

    def _finish(self) -> None:
        self.done = True
        self.channel.requests.discard(self)


class _Execution(RemoteRequest):
    def __init__(self, channel: RemoteChannel, op: str, args: dict[str, Any]) -> None:
        super().__init__(channel, op, {k: v for k, v in args.items() if k != "started"})
        self.execution_id: str | None = None
        self.last_seq = 0
        self._stdin: asyncio.Task[Any] | None = None

    async def _produce(self) -> AsyncIterator[Frame]:
        import aiohttp

        client = self.channel.client
        body = {**self.args, "force": True} if self.channel.force else self.args
        response = await client.open(
            "POST", self.channel.base + EXECUTIONS[self.op], json=body, headers=STREAM
        )
        self._response = response
        self.execution_id = response.headers.get("X-Sandlot-Execution")
        give_up_at: float | None = None
        ended = False
        while True:
            try:
                async for event in _events(response):
                    give_up_at = None
                    frame = self._frame(event)
                    if frame is not None:
                        ended = frame[0] == p.END
                        yield frame
                        if ended:
                            return
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass  # the connection dropped: resume below
            finally:
                _release(response, ended)
            if self.done or self.execution_id is None:
                raise SandboxClosedError("the stream from the server ended early")
            loop = asyncio.get_running_loop()
            give_up_at = give_up_at or loop.time() + client.retry_for
            response = await self._resume(give_up_at)
            self._response = response

    async def _resume(self, give_up_at: float) -> aiohttp.ClientResponse:
        """Reconnect to the execution's events after the last one received."""
        loop = asyncio.get_running_loop()
        client = self.channel.client
        path = f"{self.channel.base}/executions/{self.execution_id}/events"
        delay = 0.05
        # A server that accepts connections but never answers (stopped, wedged) must not hold
        # an attempt past the give-up time.
        scope = asyncio.timeout_at(give_up_at)
        try:
            async with scope:
                while True:
                    try:
                        return await client.open(
                            "GET",
                            path,
                            headers={**STREAM, "Last-Event-ID": str(self.last_seq)},
                            retry=True,
                        )
                    except RemoteUnavailableError:
                        if loop.time() + delay > give_up_at:
                            raise
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
        except TimeoutError:
            if not scope.expired():
                raise
            raise RemoteUnavailableError(
                f"lost the events of execution {self.execution_id} from the sandlot server at "
                f"{client.url} and could not resume them within {client.retry_for:g} s",
                url=client.url,
            ) from None

    def _frame(self, event: Event) -> Frame | None:
        if event.seq is not None:
            if event.seq <= self.last_seq:
                return None  # already delivered before a reconnect
            self.last_seq = event.seq
        kind = event.kind
        if kind in STREAMS:
            return p.DATA, STREAMS[kind], event.output
        data = event.value
        if kind == "started" and self.execution_id is None:
            self.execution_id = event.execution
        if kind == "error":
            raise from_dict(data)
        payload = json.dumps(data).encode()
        if kind == "exit":
            return p.END, 0, payload
        return p.EVENT, 0, payload

    async def send_data(self, data: bytes, stream: int = p.STDIN) -> None:
        if self._stdin is not None:
            await self._stdin
        if self.done or self.execution_id is None:
            return
        await self.channel.client.call("POST", self._stdin_path(), data=data)

    def send_eof(self, stream: int = p.STDIN) -> None:
        if self.done or self.execution_id is None:
            return
        self._stdin = background(
            self.channel.client.call("POST", self._stdin_path(), params={"eof": "true"})
        )

    def _stdin_path(self) -> str:
        return f"{self.channel.base}/executions/{self.execution_id}/stdin"

    def cancel(self) -> None:
        if not self.done and self.execution_id is not None:
            path = f"{self.channel.base}/executions/{self.execution_id}/cancel"
            background(self.channel.client.call("POST", path))
        self.abandon()


def _release(response: aiohttp.ClientResponse, ended: bool) -> None:
    """Done with a stream. aiohttp closes a connection released before its body's end was
    read (a quarter of warm runs paid a new connection for it): after the last event, the
    end (which a server sends with it, or just after) is read first."""
    if ended and not response.content.at_eof():
        background(_drain(response))
    else:
        response.release()


async def _drain(response: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while await response.content.readany():
                pass
    finally:
        response.release()


def _events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """A stream's events, in the format the server chose."""
    if response.content_type == FRAMES:
        return frames(response)
    return events(response)


class _Download(RemoteRequest):
    async def _produce(self) -> AsyncIterator[Frame]:
        import aiohttp

        response = await self.channel.client.open(
            "GET", self.channel.base + "/files" + _query(**self.args), retry=True
        )
        self._response = response
        try:
            async for chunk in response.content.iter_any():
                yield p.DATA, p.STDOUT, chunk
        except TimeoutError:  # nothing for the client's stream_timeout
            raise RemoteUnavailableError(
                f"the download stalled: the sandlot server at {self.channel.client.url} sent "
                f"nothing for {self.channel.client.stream_timeout:g} s",
                url=self.channel.client.url,
            ) from None
        except aiohttp.ClientError as exc:
            raise SandboxClosedError(f"the download was cut off: {exc}") from None
        finally:
            response.release()
        yield p.END, 0, b"{}"


class _Upload(RemoteRequest):
    def __init__(self, channel: RemoteChannel, op: str, args: dict[str, Any]) -> None:
        super().__init__(channel, op, args)
        self._body = bytearray()

    async def send_data(self, data: bytes, stream: int = p.STDIN) -> None:
        self._body += data

    async def _produce(self) -> AsyncIterator[Frame]:
        client = self.channel.client
        path = self.channel.base + "/files" + _query(**self.args)
        seconds = client.call_timeout + len(self._body) / UPLOAD_FLOOR  # big files take longer
        answer = await client.call("PUT", path, data=bytes(self._body), call_timeout=seconds)
        yield p.END, 0, json.dumps(answer).encode()
