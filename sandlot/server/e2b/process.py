"""envd's ``process.Process`` Connect service, and envd's ``/health``.

Commands go through the same core as ``POST /v1/sandboxes/{id}/commands``
(:meth:`ServerState.execute <sandlot.server.state.ServerState.execute>`): the session
transcript records them, secret values are masked in their output, and they are pumped by
the server, not by the HTTP connection, so a client that goes away leaves its process
running (E2B's semantics: ``disconnect()`` detaches, ``kill()`` kills). A Start's output is
read back from the transcript as sandlot's own stream reads it. Terminals (a Start with
``pty``) are the agent's ``pty`` op, as ``/v1/sandboxes/{id}/pty`` starts them.

E2B's pid is the agent's pid. What E2B lists besides it (the tag, the environment and the
working folder asked for) the agent does not keep: this server keeps it for the processes it
started, while they run (a restarted server lists them with their command line only).

The command line is run as sent: the SDK sends ``/bin/bash -l -c CMD``. ``Connect-Timeout-Ms``
bounds the process's life (envd kills it then); ``Keepalive-Ping-Interval`` sets how often a
quiet stream carries a keepalive.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import signal as signals
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...agent import protocol as p
from ...api import CommandRequest, PtyStart, ResizeRequest
from ...channel.base import RequestLike
from ...errors import (
    AuthenticationError,
    InvalidArgumentError,
    ProcessNotFoundError,
    ProtocolError,
    SandlotError,
    from_dict,
)
from ...supervisor import Supervisor
from ...transcript.runs import Run
from ..api_pty import agent_args, first_event, pty_summary, valid
from ..deps import EventStreamResponse
from .access import MAX_ID, SandboxCall, access_token, sandbox_call, signer_of
from .connect import (
    STREAM_JSON,
    ConnectError,
    Handler,
    end_of_stream,
    envelope,
    read_client_stream,
    read_stream_request,
    read_unary,
    unary,
)

KEEPALIVE_DEFAULT = 50.0  # seconds: the SDK's own ping interval
KEEPALIVE_RANGE = (1.0, 300.0)
MAX_TIMEOUT_MS = 10**10
MAX_TAG = 256
MAX_PID = 2**31 - 1
MAX_COMMAND = 1024 * 1024  # command line and environment together (the kernel's ARG_MAX is 2 MiB)
MAX_ENVS = 4096
SIGNALS = {"SIGNAL_SIGKILL": 9, "SIGNAL_SIGTERM": 15, 9: 9, 15: 15}
OUTPUT = {p.STDOUT: "stdout", p.STDERR: "stderr"}
KEEPALIVE: dict[str, Any] = {"event": {"keepalive": {}}}


@dataclass
class Proc:
    """A process this server started through E2B, while it runs."""

    pid: int
    config: dict[str, Any]
    tag: str | None = None
    run: Run | None = None  # a command: its pumped run
    pty: RequestLike | None = None  # a terminal: the agent request that started it


@dataclass
class Procs:
    """The E2B processes of every sandbox, by sandbox id and pid."""

    by_sandbox: dict[str, dict[int, Proc]] = field(default_factory=dict)

    def add(self, sandbox_id: str, proc: Proc) -> None:
        self.by_sandbox.setdefault(sandbox_id, {})[proc.pid] = proc

    def drop(self, sandbox_id: str, proc: Proc) -> None:
        procs = self.by_sandbox.get(sandbox_id)
        if procs is not None and procs.get(proc.pid) is proc:
            del procs[proc.pid]
            if not procs:
                del self.by_sandbox[sandbox_id]

    def get(self, sandbox_id: str, pid: int) -> Proc | None:
        return self.by_sandbox.get(sandbox_id, {}).get(pid)

    def tagged(self, sandbox_id: str, tag: str) -> Proc | None:
        for proc in self.by_sandbox.get(sandbox_id, {}).values():
            if proc.tag == tag:
                return proc
        return None


def _procs(request: Request) -> Procs:
    app_state = request.app.state
    procs: Procs | None = getattr(app_state, "e2b_processes", None)
    if procs is None:
        procs = app_state.e2b_processes = Procs()
    return procs


# -- messages ------------------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{what} must be an object")
    return value


def _keepalive(request: Request) -> float:
    raw = request.headers.get("keepalive-ping-interval", "")
    try:
        seconds = float(raw[:20]) if raw else KEEPALIVE_DEFAULT
    except ValueError:
        seconds = KEEPALIVE_DEFAULT
    if seconds != seconds:  # NaN
        seconds = KEEPALIVE_DEFAULT
    return min(max(seconds, KEEPALIVE_RANGE[0]), KEEPALIVE_RANGE[1])


def _timeout(request: Request) -> float | None:
    """envd ends the process when the call's deadline passes (``Connect-Timeout-Ms``)."""
    raw = request.headers.get("connect-timeout-ms", "")
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 10 or not 0 < int(raw) <= MAX_TIMEOUT_MS:
        raise InvalidArgumentError("Connect-Timeout-Ms must be a positive number of ms")
    return int(raw) / 1000


def _data(message: dict[str, Any], names: tuple[str, ...]) -> tuple[str, bytes]:
    """The one bytes field of a ``ProcessInput`` (base64 in the JSON codec)."""
    given = [name for name in names if name in message]
    if len(given) != 1:
        raise InvalidArgumentError(f"the input must have one of {', '.join(names)}")
    raw = message[given[0]]
    if not isinstance(raw, str):
        raise InvalidArgumentError("input bytes are base64")
    try:
        return given[0], base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError("input bytes are not valid base64") from None


def _selected(
    request: Request, sandbox_id: str, message: dict[str, Any]
) -> tuple[int, Proc | None]:
    """The pid a ``ProcessSelector`` names (by pid, or by the tag of a process we started)."""
    selector = _object(message.get("process"), "process")
    if "pid" in selector:
        pid = selector["pid"]
        if isinstance(pid, str) and pid.isdigit() and len(pid) <= 10:
            pid = int(pid)
        if type(pid) is not int or not 0 < pid <= MAX_PID:
            raise InvalidArgumentError(f"pid must be a whole number from 1 to {MAX_PID}")
        return pid, _procs(request).get(sandbox_id, pid)
    tag = selector.get("tag")
    if isinstance(tag, str) and len(tag) <= MAX_TAG:
        proc = _procs(request).tagged(sandbox_id, tag)
        if proc is None:
            raise ProcessNotFoundError(f"no process with tag {tag!r}")
        return proc.pid, proc
    raise InvalidArgumentError("the process selector names a pid or a tag")


def _end(outcome: dict[str, Any]) -> dict[str, Any]:
    """An agent's end of a process as envd's ``EndEvent`` (Go's ProcessState: a process
    ended by a signal has exit code -1 and a status such as ``signal: killed``)."""
    code, signum = outcome.get("exit_code"), outcome.get("signal")
    end: dict[str, Any]
    if isinstance(signum, int) and 0 < signum < 65:
        try:
            name = signals.strsignal(signum) or f"signal {signum}"
        except ValueError:
            name = f"signal {signum}"
        end = {"exitCode": -1, "exited": False, "status": f"signal: {name.lower()}"}
    else:
        code = code if isinstance(code, int) else -1
        end = {"exitCode": code, "exited": True, "status": f"exit status {code}"}
    return {"event": {"end": end}}


def _check_timeout(outcome: dict[str, Any]) -> None:
    """A process killed as its timeout passed ends the stream as the call's deadline does
    (the SDK's TimeoutException), however its end and the client's own deadline race."""
    if outcome.get("timed_out") is True:
        raise ConnectError("deadline_exceeded", "the process was killed: its timeout passed")


def _output(name: str, data: bytes | memoryview) -> dict[str, Any]:
    return {"event": {"data": {name: base64.b64encode(data).decode("ascii")}}}


def _start_event(pid: int | None) -> dict[str, Any]:
    return {"event": {"start": {"pid": pid or 0}}}


# -- Start ---------------------------------------------------------------------------------


Batches = AsyncIterator[list[dict[str, Any]]]


def streamed(handler: Callable[[Request, dict[str, Any]], Batches]) -> Handler:
    """A server-streaming procedure whose messages come in batches: one write per batch
    (the headers go with the first, the end of the stream with the last), as sandlot's own
    event streams write (:class:`~sandlot.server.deps.EventStreamResponse`). Every error,
    also one before the first message, ends the stream as Connect says."""

    async def endpoint(request: Request) -> Response:
        try:
            message = await read_stream_request(request)
        except (ConnectError, SandlotError) as exc:
            return Response(end_of_stream(exc), media_type=STREAM_JSON)
        return EventStreamResponse(_writes(handler(request, message)), STREAM_JSON, {},
                                   hold_headers=True)  # fmt: skip

    return endpoint


async def _writes(batches: Batches) -> AsyncGenerator[tuple[bytes | memoryview, bool], None]:
    try:
        async for batch in batches:
            data = b"".join(map(envelope, batch))
            if batch and "end" in batch[-1]["event"]:
                yield data + end_of_stream(), True
                return
            yield data, False
    except Exception as exc:  # the client reads it in the end-of-stream message
        yield end_of_stream(exc), True
        return
    yield end_of_stream(), True


async def start(request: Request, message: dict[str, Any]) -> Batches:
    call = await sandbox_call(request)
    config = _object(message.get("process"), "process")
    cmd, args = config.get("cmd"), config.get("args") or []
    if not isinstance(cmd, str) or not cmd:
        raise InvalidArgumentError("process.cmd must be a non-empty string")
    if not isinstance(args, list):
        raise InvalidArgumentError("process.args must be a list of strings")
    envs = config.get("envs") or {}
    if not isinstance(envs, dict) or not all(isinstance(v, str) for v in envs.values()):
        raise InvalidArgumentError("process.envs must map names to strings")
    if len(envs) > MAX_ENVS or len(args) > MAX_ENVS * 16:
        raise InvalidArgumentError("too many arguments or environment variables")
    total = len(cmd) + sum(len(a) if isinstance(a, str) else 0 for a in args)
    total += sum(len(k) + len(v) for k, v in envs.items())
    if total > MAX_COMMAND:
        raise InvalidArgumentError(
            f"the command line and its environment exceed {MAX_COMMAND} bytes"
        )
    tag = message.get("tag")
    if tag is not None and (not isinstance(tag, str) or len(tag) > MAX_TAG):
        raise InvalidArgumentError(f"tag must be a string of at most {MAX_TAG} characters")
    fields: dict[str, Any] = {"argv": [cmd, *args], "env": envs or None}
    if config.get("cwd"):
        fields["cwd"] = config["cwd"]
    timeout = _timeout(request)
    if timeout is not None:
        fields["timeout"] = timeout
    shown = {"cmd": cmd, "args": args, "envs": dict(fields["env"] or {})}
    if "cwd" in fields:
        shown["cwd"] = fields["cwd"]
    keepalive = _keepalive(request)
    if message.get("pty") is not None:
        size = _object(_object(message["pty"], "pty").get("size"), "pty.size")
        fields.update(cols=size.get("cols", 80), rows=size.get("rows", 24))
        async for event in _start_pty(
            request, call, valid(PtyStart, fields), shown, tag, keepalive
        ):
            yield [event]
        return
    fields["stdin"] = message.get("stdin") is True
    body = valid(CommandRequest, fields)
    async for batch in _start_command(request, call, body, shown, tag, keepalive):
        yield batch


async def _start_command(
    request: Request,
    call: SandboxCall,
    body: CommandRequest,
    shown: dict[str, Any],
    tag: str | None,
    keepalive: float,
) -> Batches:
    """As ``POST .../commands`` runs it; its events read back from the transcript."""
    state, served = call.state, call.served
    args = body.model_dump(exclude_none=True, exclude={"force"})
    summary: dict[str, Any] = {k: args[k] for k in ("argv", "cwd", "timeout") if k in args}
    if body.env:
        summary["env"] = sorted(body.env)  # names only: values may be secrets
    run = await state.execute(served, "exec", args, summary, holder=call.principal.holder)
    if run.pid is not None:
        procs, sandbox_id = _procs(request), call.sandbox_id
        proc = Proc(run.pid, shown, tag, run=run)
        procs.add(sandbox_id, proc)
        if run.task is not None:
            run.task.add_done_callback(lambda _: procs.drop(sandbox_id, proc))
    yield [_start_event(run.pid)]
    events = state.hub.follow(
        run.session_id, run.base_seq, execution_id=run.id, until_terminal=True,
        heartbeat=keepalive,
    )  # fmt: skip
    async for batch in events:
        if not batch:
            yield [KEEPALIVE]
            continue
        out = []
        for event in batch:
            kind = event.kind
            if kind == "stdout" or kind == "stderr":
                out.append(_output(kind, event.data))
            elif kind == "exit":
                outcome = _parse(event.data)
                if outcome.get("timed_out") is True and out:
                    yield out
                _check_timeout(outcome)
                out.append(_end(outcome))
                break
            elif kind == "error" or kind == "pruned":
                if out:
                    yield out
                if kind == "pruned":
                    raise ConnectError("data_loss", "the process's log was dropped")
                raise from_dict(_parse(event.data))
        if out:
            yield out


def _parse(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise ProtocolError("a malformed event in the log") from None
    return value if isinstance(value, dict) else {}


async def _start_pty(
    request: Request,
    call: SandboxCall,
    body: PtyStart,
    shown: dict[str, Any],
    tag: str | None,
    keepalive: float,
) -> AsyncIterator[dict[str, Any]]:
    """A terminal, as ``/v1/sandboxes/{id}/pty`` starts one; its output comes as ``pty``."""
    state, served = call.state, call.served
    args = await agent_args(state, served, body)
    agent = served.live.channel.open("pty", **args)
    first = await first_event(agent)
    pid = first.get("pid")
    if pid is not None and (type(pid) is not int or not 0 < pid <= MAX_PID):
        agent.cancel()
        raise ProtocolError("the agent sent a pty without a valid pid")
    session_id = served.record.session_id
    state._note(session_id, "pty", {"event": "started", "pid": pid, **pty_summary(args)})
    procs, sandbox_id = _procs(request), call.sandbox_id
    proc = Proc(pid, shown, tag, pty=agent) if pid is not None else None
    if proc is not None:
        procs.add(sandbox_id, proc)

    def ended(outcome: dict[str, Any] | None) -> None:
        """Its end (None: the sandbox's channel went first): listed no more."""
        if proc is not None:
            procs.drop(sandbox_id, proc)
        if outcome is not None:
            what = {k: outcome.get(k) for k in ("exit_code", "signal", "timed_out")}
            state._note(session_id, "pty", {"event": "exit", "pid": pid, **what})

    finished = False
    try:
        yield _start_event(pid)
        async for event in _frames(agent, keepalive, "pty", 0):
            if "end" in event["event"]:
                finished = True
                outcome = event.pop("outcome")
                ended(outcome)
                _check_timeout(outcome)
            yield event
    finally:
        if not finished:  # the client went: the terminal runs on (see _drain)
            Supervisor.current().spawn(_drain(agent, ended), "e2b-pty-drain")


async def _drain(agent: RequestLike, ended: Callable[[dict[str, Any] | None], None]) -> None:
    """Read a detached terminal's request to its end: cancelling it would kill the process,
    and leaving it unread would stop it once the agent's window is full."""
    outcome = None
    try:
        while True:
            kind, _, payload = await agent.receive()
            if kind == p.DATA:
                agent.consumed(len(payload))
            elif kind == p.END:
                outcome = _parse(payload)
                return
    except SandlotError:
        pass  # the sandbox has gone
    finally:
        ended(outcome)


async def _frames(
    agent: RequestLike, keepalive: float, pty: str | None, skip_to: int
) -> AsyncIterator[dict[str, Any]]:
    """An agent request's frames as process events (``pty``: the name of all output, else
    by stream), a keepalive for every ``keepalive`` quiet seconds; output before offset
    ``skip_to`` is left out. The end event carries the agent's ``outcome`` besides."""
    at = 0
    receiving: asyncio.Future[Any] | None = None
    try:
        while True:
            if receiving is None:
                receiving = asyncio.ensure_future(agent.receive())
            done, _ = await asyncio.wait({receiving}, timeout=keepalive)
            if not done:
                yield KEEPALIVE
                continue
            kind, stream, payload = receiving.result()
            receiving = None
            if kind == p.DATA:
                agent.consumed(len(payload))
                size = len(payload)
                if at + size > skip_to:
                    data = payload[max(skip_to - at, 0) :]
                    name = pty or OUTPUT.get(stream)
                    if name is not None:
                        yield _output(name, data)
                at += size
            elif kind == p.END:
                outcome = _parse(payload)
                yield {**_end(outcome), "outcome": outcome}
                return
    finally:
        if receiving is not None and not receiving.done():
            receiving.cancel()


# -- Connect -------------------------------------------------------------------------------


async def connect(request: Request, message: dict[str, Any]) -> Batches:
    """Follow a running process from now on (envd replays nothing), through the agent's
    ``proc.attach``: a command or a terminal, whoever started it."""
    call = await sandbox_call(request)
    pid, _ = _selected(request, call.sandbox_id, message)
    keepalive = _keepalive(request)
    agent = call.served.live.channel.open("proc.attach", pid=pid, offset=0)
    try:
        attached = await first_event(agent)
        end, start_at = attached.get("end"), attached.get("start")
        if attached.get("event") != "attached" or type(end) is not int or type(start_at) is not int:
            raise ProtocolError("the agent answered proc.attach with a malformed event")
        if attached.get("running") is not True:
            raise ProcessNotFoundError(f"process {pid} has ended")
        yield [_start_event(pid)]
        pty = "pty" if attached.get("kind") == "pty" else None
        async for event in _frames(agent, keepalive, pty, end - start_at):
            _check_timeout(event.pop("outcome", {}))
            yield [event]
    finally:
        agent.cancel()  # an attach's cancel only detaches


# -- unary calls ---------------------------------------------------------------------------


async def list_processes(request: Request) -> dict[str, Any]:
    call = await sandbox_call(request)
    await _read(request)
    answer = await call.served.live.channel.call("proc.list")
    items = answer.get("processes") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        raise ProtocolError("the agent answered proc.list with a malformed list")
    procs = _procs(request)
    out = []
    for item in items:
        if not isinstance(item, dict) or item.get("running") is not True:
            continue
        pid = item.get("pid")
        if type(pid) is not int or not 0 < pid <= MAX_PID:
            continue
        proc = procs.get(call.sandbox_id, pid)
        info: dict[str, Any] = {"pid": pid}
        if proc is not None:
            info["config"] = proc.config
            if proc.tag is not None:
                info["tag"] = proc.tag
        else:
            argv, cmd = item.get("argv"), item.get("cmd")
            if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
                info["config"] = {"cmd": argv[0], "args": argv[1:]}
            elif isinstance(cmd, str):
                info["config"] = {"cmd": cmd, "args": []}
        out.append(info)
    return {"processes": out}


async def send_input(request: Request) -> dict[str, Any]:
    call = await sandbox_call(request)
    message = await _read(request)
    pid, proc = _selected(request, call.sandbox_id, message)
    _, data = _data(_object(message.get("input"), "input"), ("stdin", "pty"))
    await _write(call, pid, proc, data)
    return {}


async def _write(call: SandboxCall, pid: int, proc: Proc | None, data: bytes) -> None:
    """Input for a process this server started (its stdin, or its terminal)."""
    if proc is None:
        raise ProcessNotFoundError(f"no process {pid} takes input here")
    if proc.run is not None:
        if proc.run.done.is_set():
            raise ProcessNotFoundError(f"process {pid} has ended")
        async with proc.run.stdin_lock:
            if data:
                await proc.run.request.send_data(data)
    elif proc.pty is not None and data:
        await proc.pty.send_data(data)


async def stream_input(request: Request) -> Response:
    """A client stream: ``start`` (the process), then ``data`` and ``keepalive`` messages,
    each written to the process as it arrives. Answered once the client's half has ended
    (a streamed answer would compete with the body for the connection's messages)."""
    try:
        call = await sandbox_call(request)
        target: tuple[int, Proc | None] | None = None
        async for message in read_client_stream(request):
            if "start" in message:
                target = _selected(request, call.sandbox_id, _object(message["start"], "start"))
            elif "data" in message:
                if target is None:
                    raise InvalidArgumentError("the stream's first message is start")
                data = _object(message["data"], "data")
                _, chunk = _data(_object(data.get("input"), "input"), ("stdin", "pty"))
                await _write(call, target[0], target[1], chunk)
    except (ConnectError, SandlotError) as exc:
        return Response(end_of_stream(exc), media_type=STREAM_JSON)
    return Response(envelope({}) + end_of_stream(), media_type=STREAM_JSON)


async def send_signal(request: Request) -> dict[str, Any]:
    call = await sandbox_call(request)
    message = await _read(request)
    pid, _ = _selected(request, call.sandbox_id, message)
    given = message.get("signal")
    signum = SIGNALS.get(given) if isinstance(given, (str, int)) else None
    if signum is None:
        raise InvalidArgumentError("signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL")
    await call.served.live.channel.call("signal", pid=pid, signal=signum)
    return {}


async def close_stdin(request: Request) -> dict[str, Any]:
    call = await sandbox_call(request)
    message = await _read(request)
    pid, proc = _selected(request, call.sandbox_id, message)
    if proc is None or (proc.run is not None and proc.run.done.is_set()):
        raise ProcessNotFoundError(f"no process {pid} takes input here")
    if proc.run is not None:
        async with proc.run.stdin_lock:
            proc.run.request.send_eof()
    return {}  # a terminal's input stays open (envd: send Ctrl-D)


async def update(request: Request) -> dict[str, Any]:
    call = await sandbox_call(request)
    message = await _read(request)
    pid, _ = _selected(request, call.sandbox_id, message)
    pty = message.get("pty")
    if pty is not None:
        size = _object(_object(pty, "pty").get("size"), "pty.size")
        body = valid(ResizeRequest, {"cols": size.get("cols"), "rows": size.get("rows")})
        await call.served.live.channel.call("proc.resize", pid=pid, cols=body.cols, rows=body.rows)
    return {}


async def _read(request: Request) -> dict[str, Any]:
    return await read_unary(request)


# -- /health -------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    """204 while the sandbox runs; for one that does not, the proxy's 502 that the SDKs read
    as "not running". A wrong access token is refused, so ids are not confirmed."""
    state = request.app.state.sandlot
    sandbox_id = request.headers.get("e2b-sandbox-id", "")[:MAX_ID]
    given = request.headers.get("x-access-token", "")
    expected = access_token(signer_of(state, request.app.state), sandbox_id)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        error = AuthenticationError("the sandbox's access token is missing or wrong")
        return Response(json.dumps({"code": 401, "message": str(error)}), 401,
                        media_type="application/json")  # fmt: skip
    served = state.served.get(sandbox_id)
    if served is None or served.live.channel.closed is not None:
        body = {"code": 502, "message": f"The sandbox {sandbox_id} was not found"}
        return Response(json.dumps(body), 502, media_type="application/json")
    return Response(status_code=204)


routes = [
    Route("/process.Process/Start", streamed(start), methods=["POST"]),
    Route("/process.Process/Connect", streamed(connect), methods=["POST"]),
    Route("/process.Process/List", unary(list_processes), methods=["POST"]),
    Route("/process.Process/SendInput", unary(send_input), methods=["POST"]),
    Route("/process.Process/StreamInput", stream_input, methods=["POST"]),
    Route("/process.Process/SendSignal", unary(send_signal), methods=["POST"]),
    Route("/process.Process/CloseStdin", unary(close_stdin), methods=["POST"]),
    Route("/process.Process/Update", unary(update), methods=["POST"]),
    Route("/health", health, methods=["GET"]),
]
