"""E2B's code interpreter (its port 49999): ``/execute`` and ``/contexts`` over sandlot's code
contexts, which keep a Python namespace between cells.

``POST /execute`` answers with the cell's output as it happens, one JSON object a line
(``application/x-ndjson``), as E2B's interpreter does::

    {"type":"stdout","text":"hi\\n","timestamp":"2026-12-06T22:31:38.123456+00:00"}
    {"type":"result","text":"42","is_main_result":true,"extra":{}}
    {"type":"error","name":"ZeroDivisionError","value":"division by zero","traceback":"..."}
    {"type":"number_of_executions","execution_count":3}
    {"type":"end_of_execution"}

A run that ends without its cell's end (the sandbox ended, the server stopped) ends with an
``error`` line and ``{"type":"unexpected_end_of_execution"}``; a quiet spell gets a
``{"type":"keepalive"}`` line. The cell runs as an execution of the core
(:meth:`ServerState.execute`), so the session's transcript records it and secrets are
masked; a client that goes away (the SDK's ``timeout``, a closed connection) interrupts
the cell, and the context keeps its state. A context runs one cell at a time: a second
execution waits its turn, as in E2B (up to :data:`MAX_WAITING` of them; more are a 429).
Python only: another ``language`` is refused (400).
"""

from __future__ import annotations

import asyncio
import codecs
import datetime as dt
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ...api import NAME
from ...errors import (
    CodeContextBusyError,
    InvalidArgumentError,
    NotFoundError,
    SandboxClosedError,
    SandlotError,
)
from ...models import RESULT_FORMATS, check_env_refs
from ...transcript.eventlog import Event
from ..deps import ENDS, KEEPALIVE_SECONDS, until_disconnect
from ..http_errors import status_of
from ..state import ServerState
from .access import SandboxCall, sandbox_call

NDJSON = "application/x-ndjson"
MAX_BODY = (16 << 20) + (1 << 20)  # a cell's code (sandlot's own bound) and its variables
MAX_CODE = 16 << 20
MAX_ENV = 1000  # variables in one execution's env_vars
BUSY_WAIT = 5.0  # a context busy with a cell of another caller (or winding one down): retried
BUSY_RETRY = 0.02
MAX_WAITING = 100  # executions queued for one context (each holds a connection): more are 429
LANGUAGES = frozenset({"python", "python3", "py"})
UNSUPPORTED = "sandlot's code interpreter runs Python only: language {!r} is not supported"
# Jupyter MIME types as E2B's Result fields; the rest go to ``extra``.
FIELDS = {**RESULT_FORMATS, "e2b/data": "data", "e2b/chart": "chart"}
STREAM_HEADERS = [
    (b"content-type", NDJSON.encode()),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
END = b'{"type":"end_of_execution"}\n'
LINE_BREAKS = (
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
    (b"\xc2\x85", b"\\u0085"),
)
KEEPALIVE = b'{"type":"keepalive"}\n'
_NAME = re.compile(NAME)


# -- answers ----------------------------------------------------------------------------------


def status(exc: SandlotError) -> int:
    """The HTTP status the interpreter SDK turns into its exceptions: 404 NotFoundException,
    502 TimeoutException (the sandbox is gone, as E2B's proxy says it), else
    SandboxException with the status and the message."""
    if isinstance(exc, SandboxClosedError):
        return 502
    code = status_of(exc)
    return 400 if code == 422 else code


def failure(exc: SandlotError) -> Response:
    return Response(str(exc), status_code=status(exc), media_type="text/plain")


def invalid(message: str) -> Response:
    return Response(message[:1000], status_code=400, media_type="text/plain")


def answer(value: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status_code, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before it is all read."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _TooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge(limit)
    return bytes(body)


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over {limit} bytes")


def too_large(exc: _TooLarge) -> Response:
    return Response(str(exc), status_code=413, media_type="text/plain")


def _language(value: Any) -> str | None:
    """None if the language is Python (or not given), else why it is refused."""
    if value is None:
        return None
    if not isinstance(value, str):
        return "language must be a string"
    if value.strip().lower() in LANGUAGES or not value.strip():
        return None
    return UNSUPPORTED.format(value[:100])


# -- /execute ---------------------------------------------------------------------------------


def execute_args(body: bytes) -> dict[str, Any] | str:
    """The agent's ``code.run`` arguments from an execute request, or why it is refused.
    Plain checks, not a model: this is the hot path."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the body must be a JSON object"
    if not isinstance(request, dict):
        return "the body must be a JSON object"
    code = request.get("code")
    if not isinstance(code, str):
        return "code must be a string"
    if len(code) > MAX_CODE or "\0" in code:
        return f"code must be at most {MAX_CODE} characters, with no NUL"
    context = request.get("context_id")
    language = request.get("language")
    if context is not None and language is not None:
        return "Only one of context_id or language can be provided"
    refused = _language(language)
    if refused is not None:
        return refused
    if context is not None and (not isinstance(context, str) or not _NAME.fullmatch(context)):
        return "context_id must be the id of a code context"
    args: dict[str, Any] = {"context": context or "default", "code": code, "started": True}
    env = request.get("env_vars")
    if env:
        if not isinstance(env, dict) or len(env) > MAX_ENV:
            return f"env_vars must map at most {MAX_ENV} names to strings"
        try:
            args["env"] = check_env_refs(env)  # values: strings, or {"secret": NAME}
        except (ValueError, InvalidArgumentError) as exc:
            return f"env_vars: {exc}"
    return args


async def execute(request: Request) -> Response:
    try:
        call = await sandbox_call(request)
        args = execute_args(await read_body(request, MAX_BODY))
    except SandlotError as exc:
        return failure(exc)
    except _TooLarge as exc:
        return too_large(exc)
    if isinstance(args, str):
        return invalid(args)
    return _Execution(call, args)


class _Turns:
    """One execution at a time per code context, in arrival order (E2B's interpreter
    queues them): a second ``run_code`` waits instead of failing as busy."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def turn(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        if users[0] > MAX_WAITING:
            raise _Crowded(
                f"{MAX_WAITING} executions already wait for code context {key[1]}: try later"
            )
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


def turns_of(app_state: Any) -> _Turns:
    turns: _Turns | None = getattr(app_state, "e2b_turns", None)
    if turns is None:
        turns = app_state.e2b_turns = _Turns()
    return turns


class _Execution(Response):
    """Runs the cell and streams its lines. The cell starts before the status line goes
    out, so a refusal (no such context, the sandbox ended) is an HTTP error the SDK raises;
    a client that goes away cancels the run: the agent interrupts the cell (its context
    keeps its state)."""

    def __init__(self, call: SandboxCall, args: dict[str, Any]) -> None:
        super().__init__()
        self.raw_headers = STREAM_HEADERS  # no content-length: a stream
        self.call = call
        self.args = args

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await until_disconnect(receive, self._in_turn(scope["app"].state, send))

    async def _in_turn(self, app_state: Any, send: Send) -> None:
        try:
            async with turns_of(app_state).turn((self.call.sandbox_id, self.args["context"])):
                await self._run(send)
        except _Crowded as exc:
            await _send(send, Response(str(exc), status_code=429, media_type="text/plain"))

    async def _run(self, send: Send) -> None:
        call, args = self.call, self.args
        state = call.state
        summary: dict[str, Any] = {"context": args["context"], "code": args["code"]}
        if "env" in args:
            summary["env"] = sorted(args["env"])  # names only: values may be secrets
        try:
            run = await _start(state, call, args, summary)
        except SandlotError as exc:
            await _send(send, failure(exc))
            return
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        started = False
        try:
            lines = _lines(state, call.sandbox_id, run.session_id, run.id, run.base_seq)
            async for data, last in lines:
                if not started:
                    started = True
                    await send(start)  # with the first lines: the client wakes once
                await send({"type": "http.response.body", "body": data, "more_body": not last})
                if last:
                    return
            # The log ended before the run did (its session was let go): say so, and end.
            if not started:
                await send(start)
            body = b"".join(_Converter().failed(_LOST))
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            if not run.done.is_set() and run.task is not None:
                run.task.cancel()  # the client left: interrupt the cell, keep the context


_LOST = Event("", 0, None, "error", b'{"code":"execution_lost"}', 0.0)


class _Crowded(Exception):
    """Too many executions wait for one context."""


async def _send(send: Send, response: Response) -> None:
    """An answer of the stream's request that is not a stream (a refusal)."""
    start = {"type": "http.response.start", "status": response.status_code}
    await send({**start, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


async def _start(
    state: ServerState, call: SandboxCall, args: dict[str, Any], summary: dict[str, Any]
) -> Any:
    """Start the cell; a context still busy (a cell of another caller, or one interrupted
    as its client left, winding down) is retried for up to :data:`BUSY_WAIT` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUSY_WAIT
    served = call.served
    while True:
        try:
            return await state.execute(
                served, "code.run", dict(args), summary, holder=call.principal.holder
            )
        except CodeContextBusyError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(BUSY_RETRY)
            served = await state.get(call.principal, call.sandbox_id)  # still there?


async def _lines(
    state: ServerState, sandbox_id: str, session_id: str, execution_id: str, after: int
) -> AsyncIterator[tuple[bytes, bool]]:
    """The execution's events as E2B's lines, a write per batch; True with the last."""
    convert = _Converter()
    events = state.hub.follow(
        session_id,
        after,
        execution_id=execution_id,
        until_terminal=True,
        heartbeat=KEEPALIVE_SECONDS,
    )
    async for batch in events:
        state.manager.touch(sandbox_id)  # a cell being followed is activity
        if not batch:
            yield KEEPALIVE, False
            continue
        out = b"".join(line for event in batch for line in convert(event))
        last = batch[-1].kind in ENDS
        if out or last:
            yield out, last
        if last:
            return


class _Converter:
    """Log events to E2B lines; output decoded as UTF-8 across chunk boundaries."""

    def __init__(self) -> None:
        self.decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.handlers: dict[str, Callable[[Event], Iterator[bytes]]] = {
            "stdout": self.output,
            "stderr": self.output,
            "result": self.result,
            "exit": self.exit,
            "error": self.failed,
            "pruned": self.failed,
        }

    def __call__(self, event: Event) -> Iterator[bytes]:
        handler = self.handlers.get(event.kind)
        return handler(event) if handler is not None else iter(())

    def output(self, event: Event) -> Iterator[bytes]:
        text = self.decoders[event.kind].decode(event.data)
        if text:
            yield _line({"type": event.kind, "text": text, "timestamp": _time(event)})

    def flush(self, event: Event) -> Iterator[bytes]:
        for kind, decoder in self.decoders.items():
            text = decoder.decode(b"", True)
            if text:
                yield _line({"type": kind, "text": text, "timestamp": _time(event)})

    def result(self, event: Event) -> Iterator[bytes]:
        message = _object(event.data)
        data = message.get("data")
        if isinstance(data, dict):
            yield _line(result_line(data, bool(message.get("main"))))

    def exit(self, event: Event) -> Iterator[bytes]:
        yield from self.flush(event)
        outcome = _object(event.data)
        error = outcome.get("error")
        if isinstance(error, dict):
            yield _line(
                {
                    "type": "error",
                    "name": str(error.get("name", "")),
                    "value": str(error.get("value", "")),
                    "traceback": str(error.get("traceback", "")),
                }
            )
        count = outcome.get("execution_count")
        if isinstance(count, int) and not isinstance(count, bool):
            yield _line({"type": "number_of_executions", "execution_count": count})
        yield END

    def failed(self, event: Event) -> Iterator[bytes]:
        """The run ended without its cell's end: the sandbox ended, the server stopped."""
        yield from self.flush(event)
        outcome = _object(event.data)
        message = str(outcome.get("message") or "the execution ended before the cell did")
        code = outcome.get("code") or event.kind
        yield _line(
            {
                "type": "error",
                "name": "UnexpectedEndOfExecution",
                "value": f"{message} ({code})",
                "traceback": "",
            }
        )
        yield b'{"type":"unexpected_end_of_execution"}\n'


def result_line(data: dict[str, Any], main: bool) -> dict[str, Any]:
    """A MIME bundle as E2B's result line: its known types as fields (binary ones are base64
    text already), the rest in ``extra``. A string's quotes are dropped from ``text``, as
    E2B's interpreter does."""
    line: dict[str, Any] = {"type": "result"}
    extra: dict[str, Any] = {}
    for mime, value in data.items():
        field = FIELDS.get(mime)
        if field is None:
            extra[mime] = value
        else:
            line[field] = value
    text = line.get("text")
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        line["text"] = text[1:-1]
    line["extra"] = extra
    line["is_main_result"] = main
    return line


def _line(value: dict[str, Any]) -> bytes:
    """One JSON line. The SDK splits lines as ``str.splitlines`` does, which also breaks at
    U+0085, U+2028 and U+2029: those are escaped (JSON escapes every other line break)."""
    data = orjson.dumps(value)
    if b"\xe2\x80" in data or b"\xc2\x85" in data:
        for raw, escaped in LINE_BREAKS:
            data = data.replace(raw, escaped)
    return data + b"\n"


def _time(event: Event) -> str:
    return dt.datetime.fromtimestamp(event.created_at, dt.UTC).isoformat()


def _object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# -- /contexts --------------------------------------------------------------------------------


class CreateContext(BaseModel):
    """E2B's create-context body; sandlot's contexts are Python."""

    model_config = ConfigDict(extra="ignore")
    language: str | None = Field(None, max_length=100)
    cwd: str | None = Field(None, max_length=4096)

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\0" in value):
            raise ValueError("cwd must be an absolute path")
        return value


def context_out(described: Any) -> dict[str, Any]:
    if not isinstance(described, dict):
        raise NotFoundError("the sandbox answered with no context")
    return {"id": described.get("id"), "language": "python", "cwd": described.get("cwd")}


async def create_context(request: Request) -> Response:
    try:
        call = await sandbox_call(request)
        body = await read_body(request, 64 * 1024)
        created = CreateContext.model_validate_json(body or b"{}")
        refused = _language(created.language)
        if refused is not None:
            return invalid(refused)
        args = {"cwd": created.cwd} if created.cwd else {}
        described = await call.state.call(call.principal, call.sandbox_id, "code.create", **args)
    except ValidationError as exc:
        return invalid(_validation_message(exc))
    except SandlotError as exc:
        return failure(exc)
    except _TooLarge as exc:
        return too_large(exc)
    return answer(context_out(described))


async def list_contexts(request: Request) -> Response:
    try:
        call = await sandbox_call(request)
        listed = await call.state.call(call.principal, call.sandbox_id, "code.list")
        contexts = listed.get("contexts") if isinstance(listed, dict) else None
        return answer([context_out(c) for c in contexts or []])
    except SandlotError as exc:
        return failure(exc)


def _context_id(request: Request) -> str:
    context = str(request.path_params.get("context_id", ""))
    if not _NAME.fullmatch(context):
        raise NotFoundError(f"Context {context[:100]!r} not found")
    return context


async def remove_context(request: Request) -> Response:
    try:
        call = await sandbox_call(request)
        context = _context_id(request)
        await call.state.call(call.principal, call.sandbox_id, "code.remove", context=context)
    except SandlotError as exc:
        return failure(exc)
    return Response(status_code=204)


async def restart_context(request: Request) -> Response:
    """A fresh interpreter for the context: its state is gone, as a kernel restart's."""
    try:
        call = await sandbox_call(request)
        context = _context_id(request)
        await call.state.call(
            call.principal, call.sandbox_id, "code.restart", context=context, forget_state=True
        )
    except SandlotError as exc:
        return failure(exc)
    return Response(status_code=204)


async def health(request: Request) -> Response:
    try:
        await sandbox_call(request)
    except SandlotError as exc:
        return failure(exc)
    return answer("OK")


def _validation_message(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(x) for x in first.get("loc", ())) or "body"
    return f"invalid request: {where}: {first.get('msg', '')}"[:500]


routes: list[Route] = [
    Route("/execute", execute, methods=["POST"]),
    Route("/contexts", create_context, methods=["POST"]),
    Route("/contexts", list_contexts, methods=["GET"]),
    Route("/contexts/{context_id}", remove_context, methods=["DELETE"]),
    Route("/contexts/{context_id}/restart", restart_context, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
]
