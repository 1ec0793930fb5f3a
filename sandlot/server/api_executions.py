"""Commands and code cells (*executions*): start them, follow their events, drive them.

``POST .../commands`` (and ``.../code/run``, ``.../code/install``) answers with the
execution's events as they happen when the caller accepts a stream: binary frames
(``application/x-sandlot-frames``, :mod:`.frames`) or Server-Sent Events
(``text/event-stream``); else at once with the execution's id (202). Either way the execution
runs on the server, not on the connection: ``GET .../executions/{id}/events?after=N`` (or
``Last-Event-ID``) resumes, in either format.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response

from ..api import CodeRunRequest, CommandRequest, ExecutionOut, InstallRequest, SignalRequest
from ..store.records import ExecutionRecord
from ..transcript.runs import Run
from .deps import (
    STREAM_CONTENT,
    Caller,
    IdempotencyKey,
    Idempotent,
    State,
    after_from,
    event_stream,
    stream_type,
)
from .sse import MEDIA_TYPE as SSE
from .state import Principal, ServerState

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["executions"])
STARTED = {
    202: {"model": ExecutionOut, "description": "started (JSON)"},
    200: {
        "content": STREAM_CONTENT,
        "description": "the execution's events: Server-Sent Events, or binary frames",
    },
}
SSE_RESPONSE = {
    200: {"content": STREAM_CONTENT, "description": "Server-Sent Events, or binary frames"}
}
Accept = Annotated[str | None, Header()]


def execution_out(run: Run) -> ExecutionOut:
    return ExecutionOut(
        id=run.id,
        session_id=run.session_id,
        sandbox_id=run.sandbox_id,
        kind=run.kind,
        state="ended" if run.done.is_set() else "running",
        pid=run.pid,
        created_at=dt.datetime.fromtimestamp(run.created_at, dt.UTC),
        ended_at=dt.datetime.fromtimestamp(run.ended_at, dt.UTC) if run.ended_at else None,
        outcome=run.outcome if run.done.is_set() else None,
    )


def record_out(record: ExecutionRecord) -> ExecutionOut:
    return ExecutionOut.model_validate(record.model_dump())


async def _start(
    state: ServerState,
    caller: Principal,
    request: Request,
    sandbox_id: str,
    op: str,
    args: dict[str, Any],
    summary: dict[str, Any],
    accept: str | None,
    idempotency_key: str | None,
) -> Response:
    once = Idempotent(state, caller, idempotency_key, request)
    if idempotency_key is not None:
        replay = await once.begin(json.dumps([op, args], sort_keys=True).encode())
        if replay is not None:
            return _replayed(state, replay, accept)
    try:
        served = await state.get(caller, sandbox_id)
        force = bool(args.pop("force", False))  # for the session's lock, not the agent
        run = await state.execute(served, op, args, summary, holder=caller.holder, force=force)
    except BaseException:
        await once.abandon()
        raise
    streaming = stream_type(accept)
    if idempotency_key is not None or not streaming:
        body = execution_out(run).model_dump_json().encode()
        await once.finish(202, "application/json", body)
    if streaming:
        return _events_of(state, run.session_id, run.id, run.base_seq, streaming)
    return Response(body, status_code=202, media_type="application/json")


def _replayed(state: ServerState, replay: Response, accept: str | None) -> Response:
    """A repeated call gets the first answer: the same execution (its events from the start,
    when the caller streams)."""
    streaming = stream_type(accept)
    if not streaming or replay.status_code != 202:
        return replay
    first = json.loads(bytes(replay.body))
    return _events_of(state, first["session_id"], first["id"], 0, streaming)


def _events_of(
    state: ServerState, session_id: str, execution_id: str, after: int, media_type: str
) -> Response:
    return event_stream(
        state, session_id, after, execution_id=execution_id,
        headers={"X-Sandlot-Execution": execution_id}, media_type=media_type,
    )  # fmt: skip


@router.post("/commands", status_code=202, responses=STARTED)  # type: ignore[arg-type]
async def run_command(
    sandbox_id: str,
    body: CommandRequest,
    request: Request,
    state: State,
    caller: Caller,
    accept: Accept = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Run a command. Events: started, stdout, stderr, exit (exit_code, signal, timed_out)."""
    args = body.model_dump(exclude_none=True)
    summary: dict[str, Any] = {k: args[k] for k in ("cmd", "argv", "cwd", "timeout") if k in args}
    if body.env:
        summary["env"] = sorted(body.env)  # names only: values may be secrets
    return await _start(
        state, caller, request, sandbox_id, "exec", args, summary, accept, idempotency_key
    )


@router.post("/code/run", status_code=202, responses=STARTED)  # type: ignore[arg-type]
async def run_code(
    sandbox_id: str,
    body: CodeRunRequest,
    request: Request,
    state: State,
    caller: Caller,
    accept: Accept = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Run a cell in a code context. Events: started, stdout, stderr, result, progress, exit
    (the cell's outcome: error, execution_count, timed_out, ...)."""
    args = {**body.model_dump(exclude_none=True), "started": True}
    summary = {"context": body.context, "code": body.code}
    return await _start(
        state, caller, request, sandbox_id, "code.run", args, summary, accept, idempotency_key
    )


@router.post("/code/install", status_code=202, responses=STARTED)  # type: ignore[arg-type]
async def install(
    sandbox_id: str,
    body: InstallRequest,
    request: Request,
    state: State,
    caller: Caller,
    accept: Accept = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """``pip install --user`` with the sandbox's Python, as an execution."""
    args = body.model_dump(exclude_none=True)
    summary = {"packages": body.packages}
    return await _start(
        state, caller, request, sandbox_id, "code.install", args, summary, accept, idempotency_key
    )


@router.get("/executions/{execution_id}", response_model=ExecutionOut)
async def get_execution(
    sandbox_id: str, execution_id: str, state: State, caller: Caller
) -> ExecutionOut:
    run = state.runs.get(execution_id)
    if run is not None and run.sandbox_id == sandbox_id:
        await state.record(caller, sandbox_id)
        return execution_out(run)
    return record_out(await state.execution(caller, sandbox_id, execution_id))


@router.get("/executions/{execution_id}/events", responses=SSE_RESPONSE)  # type: ignore[arg-type]
async def execution_events(
    sandbox_id: str,
    execution_id: str,
    state: State,
    caller: Caller,
    after: Annotated[int | None, Query(ge=0, description="resume after this seq")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    accept: Accept = None,
) -> Response:
    """The execution's events from the log, then live until it ends: Server-Sent Events, or
    binary frames when ``Accept`` names ``application/x-sandlot-frames``."""
    record = await state.execution(caller, sandbox_id, execution_id)
    start = after_from(after, last_event_id)
    return _events_of(state, record.session_id, execution_id, start, stream_type(accept) or SSE)


@router.post(
    "/executions/{execution_id}/stdin",
    openapi_extra={
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}
    },
)
async def send_stdin(
    sandbox_id: str,
    execution_id: str,
    request: Request,
    state: State,
    caller: Caller,
    eof: Annotated[bool, Query(description="close stdin after this body")] = False,
) -> dict[str, int]:
    """The raw request body goes to the command's stdin (opened with ``stdin: true``)."""
    run = await state.run_of(caller, sandbox_id, execution_id)
    return {"sent": await run.send_stdin(request.stream(), eof)}


@router.post("/executions/{execution_id}/signal")
async def signal_execution(
    sandbox_id: str, execution_id: str, body: SignalRequest, state: State, caller: Caller
) -> dict[str, bool]:
    """Send a signal to the command's process group. ``signalled`` is false if it ended."""
    run = await state.run_of(caller, sandbox_id, execution_id)
    if run.done.is_set() or run.pid is None:
        return {"signalled": False}
    await state.call(caller, sandbox_id, "signal", pid=run.pid, signal=body.signal)
    return {"signalled": True}


@router.post("/processes/{pid}/signal")
async def signal_process(
    sandbox_id: str,
    pid: Annotated[int, Path(ge=1, le=2**31 - 1)],
    body: SignalRequest,
    state: State,
    caller: Caller,
) -> dict[str, bool]:
    """Send a signal to a process group in the sandbox, by the pid a command reported."""
    await state.call(caller, sandbox_id, "signal", pid=pid, signal=body.signal)
    return {"signalled": True}


@router.post("/executions/{execution_id}/cancel")
async def cancel_execution(
    sandbox_id: str, execution_id: str, state: State, caller: Caller
) -> dict[str, bool]:
    """Stop the execution: a command is killed, a cell interrupted (its context keeps its
    state). Its stream ends with an ``error`` event coded ``cancelled``."""
    run = await state.run_of(caller, sandbox_id, execution_id)
    if run.done.is_set() or run.task is None:
        return {"cancelled": False}
    run.task.cancel()
    await run.done.wait()
    return {"cancelled": True}


@router.post("/executions/{execution_id}/wait", response_model=ExecutionOut)
async def wait_execution(
    sandbox_id: str,
    execution_id: str,
    state: State,
    caller: Caller,
    timeout: Annotated[float, Query(gt=0, le=3600)] = 60.0,
) -> ExecutionOut:
    """Wait up to ``timeout`` seconds for the execution to end; its state either way."""
    run = state.runs.get(execution_id)
    if run is None or run.sandbox_id != sandbox_id:
        return record_out(await state.execution(caller, sandbox_id, execution_id))
    await state.record(caller, sandbox_id)
    try:
        await asyncio.wait_for(asyncio.shield(run.done.wait()), timeout)
    except TimeoutError:
        pass
    return execution_out(run)
