"""Terminals and processes: a pseudo-terminal over a WebSocket, reattaching to a running (or
lately ended) process from a byte offset, and the REST routes that list and resize them.

``GET /v1/sandboxes/{id}/pty`` (WebSocket) starts a process on a new pty in the sandbox;
``GET /v1/sandboxes/{id}/pty/{pid}?offset=N`` (also ``.../processes/{pid}/attach``) attaches
to a process the agent keeps (a pty or a command) and replays its output from byte ``N``.
Binary messages carry the process's bytes both ways (keyboard in, terminal out); text
messages carry JSON control messages. The wire format is in docs/server.md ("Terminals over
WebSocket"); in short:

- client -> server: ``{"type":"start", cmd|argv, cols, rows, env, cwd, timeout, buffer}``
  (first, on ``/pty`` only, unless the query gave them), ``{"type":"resize","cols","rows"}``,
  ``{"type":"signal","signal":N}``, ``{"type":"eof"}`` (close stdin), ``{"type":"kill"}``.
- server -> client: ``{"type":"started","pid"}`` or ``{"type":"attached","pid","start",
  "end","gap","running",...}``, then output, then ``{"type":"exit","exit_code","signal",
  ...}`` and a normal close; ``{"type":"error","code","message"}`` for a refused control
  message (the connection stays) or a failure (then the connection closes with 1011).
- ``?tagged=true``: every binary message from the server starts with one byte naming its
  stream (1 stdout, 2 stderr): for commands, whose two streams a terminal would merge.

Closing the WebSocket detaches: the process runs on and its output is kept for the next
attach (``{"type":"kill"}`` or a signal ends it). Authentication is the REST routes' (an
``Authorization: Bearer`` header), or, for browsers, which cannot set headers on a
WebSocket, the key offered as the subprotocol ``sandlot.bearer.<key>`` next to
``sandlot.pty`` (the one the server answers with: the key is never echoed or logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, WebSocket
from pydantic import ValidationError

from ..agent import protocol as p
from ..api import PtyStart, ResizeRequest, SignalRequest
from ..channel.base import RequestLike
from ..errors import ForbiddenError, InvalidArgumentError, ProtocolError, SandlotError
from ..models import ProcessInfo
from ..supervisor import Supervisor
from .api_ports import _on_purpose
from .deps import Caller, State, get_principal
from .http_errors import error_response, status_of
from .state import Served, ServerState

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["processes"])
log = logging.getLogger("sandlot.server")

SUBPROTOCOL = "sandlot.pty"
KEY_PROTOCOL = "sandlot.bearer."  # + the API key: browsers cannot set headers on a WebSocket
MAX_CONTROL_MESSAGE = 64 * 1024  # a text message from the client (a start with its env)
MAX_INPUT_MESSAGE = p.MAX_DATA  # a binary message from the client: keyboard input
START_WAIT = 30.0  # seconds the client has to send its start message
MAX_OFFSET = 2**63 - 1
TOO_BIG, POLICY, FAILED = 1009, 1008, 1011  # WebSocket close codes
START_FIELDS = frozenset(PtyStart.model_fields) - {"type"}
Pid = Annotated[int, Path(ge=1, le=2**31 - 1)]


# -- REST --------------------------------------------------------------------------------------


@router.get("/processes", response_model=list[ProcessInfo])
async def list_processes(sandbox_id: str, state: State, caller: Caller) -> list[ProcessInfo]:
    """The processes the agent keeps: running commands and terminals, and lately ended ones
    with their exit status and the byte range of output still held (``start``..``end``)."""
    answer = await state.call(caller, sandbox_id, "proc.list")
    try:  # the agent's answer is untrusted: checked before it is passed on
        return [ProcessInfo.model_validate(item) for item in answer["processes"]]
    except (KeyError, TypeError, ValidationError):
        raise ProtocolError("the agent answered proc.list with a malformed list") from None


@router.post("/processes/{pid}/resize")
async def resize_process(
    sandbox_id: str, pid: Pid, body: ResizeRequest, state: State, caller: Caller
) -> dict[str, bool]:
    """Set a terminal's size; the process gets SIGWINCH."""
    await state.call(caller, sandbox_id, "proc.resize", pid=pid, cols=body.cols, rows=body.rows)
    return {"resized": True}


# -- WebSocket ---------------------------------------------------------------------------------


@router.websocket("/pty")
async def pty(websocket: WebSocket, sandbox_id: str) -> None:
    admitted = await _admit(websocket, sandbox_id)
    if admitted is None:
        return
    state, served = admitted
    query = websocket.query_params
    start: PtyStart | None = None
    if START_FIELDS & set(query):  # a start in the query: refused with an HTTP answer
        try:
            start = _start_from_query(query)
        except SandlotError as exc:
            await _deny(websocket, exc)
            return
    await _accept(websocket)
    try:
        if start is None:
            start = await _start_from_message(websocket)
            if start is None:
                return
        args = await agent_args(state, served, start)
        request = served.live.channel.open("pty", **args)
        first = await first_event(request)
    except SandlotError as exc:
        await _fail(websocket, exc)
        return
    pid = first.get("pid")  # None: the program could not start (its message and 127 follow)
    if pid is not None and (type(pid) is not int or not 0 < pid < 2**31):
        request.cancel()
        await _fail(websocket, ProtocolError("the agent sent a pty without a valid pid"))
        return
    started = {"event": "started", "pid": pid, **pty_summary(args)}
    state._note(served.record.session_id, "pty", started)
    session = Session(websocket, state, served, request, pid, creator=True, tagged=_tagged(query))
    await session.run(first)


@router.websocket("/pty/{pid}")
@router.websocket("/processes/{pid}/attach")
async def attach(websocket: WebSocket, sandbox_id: str, pid: str) -> None:
    admitted = await _admit(websocket, sandbox_id)
    if admitted is None:
        return
    state, served = admitted
    query = websocket.query_params
    try:
        number = _number(pid, "pid", 1, 2**31 - 1)
        offset = _number(query.get("offset", "0"), "offset", 0, MAX_OFFSET)
        request = served.live.channel.open("proc.attach", pid=number, offset=offset)
        first = await first_event(request)  # process_not_found: refused with a 404
    except SandlotError as exc:
        await _deny(websocket, exc)
        return
    session = Session(websocket, state, served, request, number, creator=False,
                      tagged=_tagged(query))  # fmt: skip
    await session.run(first, accept=True)


class Session:
    """One WebSocket on one process: output out, input and control messages in."""

    def __init__(
        self,
        websocket: WebSocket,
        state: ServerState,
        served: Served,
        request: RequestLike,
        pid: int | None,
        *,
        creator: bool,
        tagged: bool,
    ) -> None:
        self.websocket = websocket
        self.state = state
        self.served = served
        self.request = request
        self.pid = pid
        self.creator = creator  # holds the agent request that started the process
        self.tagged = tagged
        self.finished = False  # the agent request has ended (END, or its failure)

    async def run(self, first: dict[str, Any], *, accept: bool = False) -> None:
        """Serve until the process ends or the client goes; however it ends, the agent's
        request is left in order (see :meth:`_detach`)."""
        tasks: list[asyncio.Future[None]] = []
        try:
            if accept:
                await _accept(self.websocket)
            await _send_event(self.websocket, first)
            tasks = [asyncio.ensure_future(self._output()), asyncio.ensure_future(self._input())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except Exception as exc:  # the client went before the first message: as a detach
            log.debug("terminal client gone early: %s", type(exc).__name__)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not self.finished:
                self._detach()

    def _detach(self) -> None:
        """The client went: the process runs on. An attach request is simply dropped; the
        request that started it is read to its end (cancelling it would kill the process),
        so that the agent never waits for us and the end goes in the log."""
        if self.creator:
            Supervisor.current().spawn(self._drain(), "pty-drain")
        else:
            self.request.cancel()

    async def _drain(self) -> None:
        with contextlib.suppress(SandlotError):
            while True:
                kind, _, payload = await self.request.receive()
                if kind == p.DATA:
                    self.request.consumed(len(payload))
                elif kind == p.END:
                    self._note_exit(payload)
                    return

    def _note_exit(self, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            end = json.loads(payload)
            if isinstance(end, dict):
                what = {k: end.get(k) for k in ("exit_code", "signal", "timed_out")}
                self.state._note(
                    self.served.record.session_id, "pty", {"event": "exit", "pid": self.pid, **what}
                )

    async def _output(self) -> None:
        """The agent's frames to the client, until the process ends (or the channel does)."""
        websocket, request = self.websocket, self.request
        try:
            while True:
                try:
                    kind, stream, payload = await request.receive()
                except SandlotError as exc:
                    self.finished = True
                    await _fail(websocket, exc)
                    return
                if kind == p.DATA:
                    if self.tagged:
                        await websocket.send_bytes(bytes((stream,)) + payload)
                    else:
                        await websocket.send_bytes(payload)
                    request.consumed(len(payload))
                elif kind == p.EVENT:
                    await _send_event(websocket, _object(payload))
                elif kind == p.END:
                    self.finished = True
                    if self.creator:
                        self._note_exit(payload)
                    await websocket.send_text(_dumps({**_object(payload), "type": "exit"}))
                    await websocket.close(1000)
                    return
        except SandlotError as exc:  # a malformed event from the agent
            await _fail(websocket, exc)
        except Exception as exc:  # the client went away mid-send: detach (see run)
            log.debug("pty output to a gone client: %s", type(exc).__name__)

    async def _input(self) -> None:
        """The client's messages, until it disconnects (or breaks the rules)."""
        websocket = self.websocket
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                if len(data) > MAX_INPUT_MESSAGE:
                    await _close(websocket, TOO_BIG, f"input over {MAX_INPUT_MESSAGE} bytes")
                    return
                await self.request.send_data(data)
                continue
            text = message.get("text") or ""
            if len(text) > MAX_CONTROL_MESSAGE:
                await _close(websocket, TOO_BIG, f"control over {MAX_CONTROL_MESSAGE} bytes")
                return
            try:
                await self._control(text)
            except SandlotError as exc:  # refused: the terminal goes on
                await _send_error(websocket, exc)

    async def _control(self, text: str) -> None:
        message = _control_message(text)
        kind = message.get("type")
        channel = self.served.live.channel
        if self.pid is None and kind in ("resize", "signal", "kill"):
            raise InvalidArgumentError("the program did not start: there is no process")
        if kind == "resize":
            size = valid(ResizeRequest, {k: v for k, v in message.items() if k != "type"})
            await channel.call("proc.resize", pid=self.pid, cols=size.cols, rows=size.rows)
        elif kind == "signal":
            signal = valid(SignalRequest, {k: v for k, v in message.items() if k != "type"})
            await channel.call("signal", pid=self.pid, signal=signal.signal)
        elif kind == "kill":  # by signal, not by cancelling: the exit message still comes
            await channel.call("signal", pid=self.pid, signal=9)
        elif kind == "eof":
            self.request.send_eof()
        else:
            raise InvalidArgumentError(
                f"unknown control message type {str(kind)[:40]!r} "
                "(resize, signal, kill or eof; keyboard input goes in binary messages)"
            )


# -- helpers -----------------------------------------------------------------------------------


async def _admit(websocket: WebSocket, sandbox_id: str) -> tuple[ServerState, Served] | None:
    """The caller (by the REST routes' rules) and their sandbox; None once refused."""
    state: ServerState = websocket.app.state.sandlot
    try:
        caller = await get_principal(state, _authorization(websocket))
        if caller.key_id is None and _cross_origin(websocket):
            raise ForbiddenError(
                "a terminal cannot be opened from a web page of another origin on a server "
                "without API keys (create one: sandlot keys create)"
            )
        served = await state.get(caller, sandbox_id)
    except SandlotError as exc:
        await _deny(websocket, exc)
        return None
    return state, served


async def _deny(websocket: WebSocket, error: SandlotError) -> None:
    """Refuse the upgrade with the REST routes' answer; its code and message also go in
    headers, since a WebSocket client library seldom shows a refused upgrade's body."""
    answer = error_response(status_of(error), error.code, error.message, **error.details)
    answer.headers["X-Sandlot-Error"] = error.code
    answer.headers["X-Sandlot-Message"] = _header_text(error.message)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(answer)
        _on_purpose.set(True)  # uvicorn would call this an incomplete handshake
    else:
        await websocket.close(POLICY)


def _cross_origin(websocket: WebSocket) -> bool:
    """Whether a browser opened this from a page of another origin. Browsers always send
    ``Origin`` on a WebSocket and let any page dial loopback, and no CORS rule applies: on a
    server without keys, a page the user visits could otherwise type into a terminal.
    Programs (the SDK, the CLI, ``websockets``) send no ``Origin`` unless asked."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return False
    return urlsplit(origin).netloc.lower() != (websocket.headers.get("host") or "").lower()


def _authorization(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization")
    if header is not None:
        return header
    for offered in websocket.scope.get("subprotocols") or ():
        if offered.startswith(KEY_PROTOCOL):
            return "Bearer " + offered[len(KEY_PROTOCOL) :]
    return None


async def _accept(websocket: WebSocket) -> None:
    offered = websocket.scope.get("subprotocols") or ()
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)


def _start_from_query(query: Any) -> PtyStart:
    fields: dict[str, Any] = {k: query[k] for k in START_FIELDS & set(query) if k != "env"}
    if "argv" in fields:
        fields["argv"] = query.getlist("argv")
    env = query.getlist("env")
    if env:
        pairs = [item.partition("=") for item in env]
        fields["env"] = {k: v for k, _, v in pairs}
        if any(not sep for _, sep, _ in pairs):
            raise InvalidArgumentError("env in the query is NAME=VALUE")
    return valid(PtyStart, fields)


async def _start_from_message(websocket: WebSocket) -> PtyStart | None:
    """The first message, a start; None once the client has gone or been sent away."""
    try:
        message = await asyncio.wait_for(websocket.receive(), START_WAIT)
    except TimeoutError:
        await _close(websocket, POLICY, f"no start message within {START_WAIT:g} s")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        raise InvalidArgumentError('the first message is a text {"type": "start", ...}')
    if len(text) > MAX_CONTROL_MESSAGE:
        await _close(websocket, TOO_BIG, f"control over {MAX_CONTROL_MESSAGE} bytes")
        return None
    return valid(PtyStart, _control_message(text))


async def agent_args(state: ServerState, served: Served, start: PtyStart) -> dict[str, Any]:
    args = start.model_dump(exclude_none=True, exclude={"type"})
    if args.get("env"):
        from ..secrets.refs import as_ref
        from ..secrets.resolve import resolve_env

        env = {k: as_ref(v) or v for k, v in args["env"].items()}
        args["env"], _ = await resolve_env(env, state.secrets(served.record.tenant))
    return args


def pty_summary(args: dict[str, Any]) -> dict[str, Any]:
    """What the session log says about a terminal: its command, never its environment."""
    return {k: args[k] for k in ("cmd", "argv", "cwd", "cols", "rows") if k in args}


async def first_event(request: RequestLike) -> dict[str, Any]:
    """The agent's first answer to a pty or an attach: its started or attached event."""
    try:
        kind, _, payload = await request.receive()
    except BaseException:
        request.cancel()
        raise
    if kind != p.EVENT:
        request.cancel()
        raise ProtocolError(f"the agent answered with a frame of kind {kind}, not an event")
    return _object(payload)


def _object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        raise ProtocolError("the agent sent a malformed message") from None
    if not isinstance(value, dict):
        raise ProtocolError("the agent sent a message that is not a JSON object")
    return value


def _control_message(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidArgumentError("a control message is a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError("a control message is a JSON object")
    return value


def valid(model: Any, fields: dict[str, Any]) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidArgumentError(f"invalid {model.__name__}: {problems}"[:500]) from None


def _number(raw: str, what: str, low: int, high: int) -> int:
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidArgumentError(f"{what} must be a whole number from {low} to {high}")
    return int(raw)


def _tagged(query: Any) -> bool:
    return query.get("tagged", "").lower() in ("1", "true", "yes")


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _send_event(websocket: WebSocket, event: dict[str, Any]) -> None:
    """An agent event as a control message: ``{"event": "started", ...}`` goes as
    ``{"type": "started", ...}``."""
    fields = {k: v for k, v in event.items() if k != "event"}
    await websocket.send_text(_dumps({"type": str(event.get("event", "event")), **fields}))


async def _send_error(websocket: WebSocket, error: SandlotError) -> None:
    await websocket.send_text(
        _dumps({**error.details, "code": error.code, "message": error.message, "type": "error"})
    )


async def _fail(websocket: WebSocket, error: SandlotError) -> None:
    code = POLICY if isinstance(error, InvalidArgumentError) else FAILED
    with contextlib.suppress(Exception):
        await _send_error(websocket, error)
        await websocket.close(code, error.code)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code, reason[:120])


def _header_text(text: str) -> str:
    """One line of ASCII, for a header."""
    return " ".join(text.split()).encode("ascii", "replace")[:300].decode("ascii")
