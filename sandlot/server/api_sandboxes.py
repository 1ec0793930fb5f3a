"""``/v1/sandboxes``: create, list, get, kill, set the timeout, and the session transcript."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from ..api import IdleTimeoutRequest, NetworkRequest, SandboxOut, TimeoutRequest
from ..errors import InvalidArgumentError
from ..models import SandboxSpec
from ..providers import provider_class
from ..store.records import SandboxRecord
from .deps import (
    MAX_SEQ,
    STREAM_CONTENT,
    Caller,
    IdempotencyKey,
    Idempotent,
    State,
    after_from,
    event_stream,
    stream_type,
)
from .sse import MEDIA_TYPE

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])
SSE_RESPONSE = {
    200: {"content": STREAM_CONTENT, "description": "Server-Sent Events, or binary frames"}
}


def sandbox_out(
    record: SandboxRecord, idle_timeout: float | None = None, ending: bool = False
) -> SandboxOut:
    try:
        isolated = provider_class(record.provider).isolated
    except Exception:
        isolated = True
    return SandboxOut(
        id=record.id,
        provider=record.provider,
        state="running" if record.state == "running" and not ending else "stopped",
        metadata=record.metadata,
        created_at=record.created_at,
        expires_at=record.expires_at,
        owner_pid=0,
        session_id=record.session_id,
        isolated=isolated,
        idle_timeout=idle_timeout,
    )


@router.post("", status_code=201, response_model=SandboxOut)
async def create_sandbox(
    spec: SandboxSpec,
    request: Request,
    state: State,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a sandbox, in a new session of its own."""
    once = Idempotent(state, caller, idempotency_key, request)
    replay = await once.begin(spec.model_dump_json().encode())
    if replay is not None:
        return replay
    try:
        served = await state.create(caller, spec)
    except BaseException:
        await once.abandon()
        raise
    body = sandbox_out(served.record, served.live.info.idle_timeout).model_dump_json().encode()
    await once.finish(201, "application/json", body)
    return Response(body, status_code=201, media_type="application/json")


@router.get("", response_model=list[SandboxOut])
async def list_sandboxes(
    state: State,
    caller: Caller,
    metadata: Annotated[
        list[str], Query(description="key=value; every one must match", max_length=100)
    ] = [],  # noqa: B006 (FastAPI reads the default, never mutates it)
) -> list[SandboxOut]:
    """The caller's running sandboxes, optionally those whose metadata matches."""
    wanted: dict[str, str] = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"metadata filter {item!r} is not key=value")
        wanted[key] = value
    records = await asyncio.to_thread(
        state.records.list_sandboxes, caller.tenant, wanted, "running"
    )
    served = state.served
    return [sandbox_out(r, served[r.id].live.info.idle_timeout) for r in records if r.id in served]


@router.get("/{sandbox_id}", response_model=SandboxOut)
async def get_sandbox(sandbox_id: str, state: State, caller: Caller) -> SandboxOut:
    served = state.served.get(sandbox_id)
    idle = served.live.info.idle_timeout if served is not None else None
    record = await state.record(caller, sandbox_id)
    return sandbox_out(record, idle, ending=state.is_ending(sandbox_id))


@router.delete("/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, state: State, caller: Caller) -> Response:
    """Destroy the sandbox and everything running in it."""
    await state.kill(caller, sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/timeout")
async def set_timeout(
    sandbox_id: str, body: TimeoutRequest, state: State, caller: Caller
) -> dict[str, str]:
    """Destroy the sandbox ``seconds`` from now instead of at its old deadline."""
    expires = await state.set_timeout(caller, sandbox_id, body.seconds)
    return {"expires_at": expires.isoformat()}


@router.post("/{sandbox_id}/idle_timeout", status_code=204)
async def set_idle_timeout(
    sandbox_id: str, body: IdleTimeoutRequest, state: State, caller: Caller
) -> Response:
    """Stop the sandbox once nothing has used it for ``seconds`` (null: never), counted from
    now (this call is a use). Its hard lifetime stays."""
    served = await state.get(caller, sandbox_id)
    await state.manager.set_idle_timeout(sandbox_id, body.seconds, served.live.channel)
    return Response(status_code=204)


@router.post("/{sandbox_id}/pause", status_code=204)
async def pause_sandbox(sandbox_id: str, state: State, caller: Caller) -> Response:
    """Freeze every process of the sandbox (the cgroup freezer; docker pause) until
    ``resume``. Its agent does not answer meanwhile; its lifetime keeps running."""
    await state.get(caller, sandbox_id)
    await state.manager.pause(sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/resume", status_code=204)
async def resume_sandbox(sandbox_id: str, state: State, caller: Caller) -> Response:
    await state.get(caller, sandbox_id)
    await state.manager.resume(sandbox_id)
    return Response(status_code=204)


@router.get("/{sandbox_id}/paused")
async def sandbox_paused(sandbox_id: str, state: State, caller: Caller) -> dict[str, bool]:
    await state.get(caller, sandbox_id)
    return {"paused": await state.manager.is_paused(sandbox_id)}


@router.put("/{sandbox_id}/network", status_code=204)
async def set_network(
    sandbox_id: str, body: NetworkRequest, state: State, caller: Caller
) -> Response:
    """Change what the sandbox may reach through its egress proxy; the next connection
    obeys it. Rules naming private addresses need the server's ``--egress-private``."""
    await state.set_network(caller, sandbox_id, body.network)
    return Response(status_code=204)


@router.get("/{sandbox_id}/network/events")
async def network_events(
    sandbox_id: str,
    state: State,
    caller: Caller,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="the last id already seen")] = 0,
) -> list[dict[str, Any]]:
    """Every connection the sandbox made through its proxy or bridge, allowed or refused
    (also in the session's log, as ``egress`` and ``bridge`` events)."""
    await state.get(caller, sandbox_id)
    return state.manager.store.egress_events(sandbox_id, after)


@router.get("/{sandbox_id}/events", responses=SSE_RESPONSE)  # type: ignore[arg-type]
async def transcript(
    sandbox_id: str,
    state: State,
    caller: Caller,
    after: Annotated[int | None, Query(ge=0, description="resume after this seq")] = None,
    follow: bool = True,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """The log of the sandbox's session as Server-Sent Events (``id`` = sequence number), or
    as binary frames when ``Accept`` names ``application/x-sandlot-frames``, then new events
    as they happen (unless ``follow=false``)."""
    record = await state.record(caller, sandbox_id)
    start = after_from(after, last_event_id)
    return event_stream(
        state,
        record.session_id,
        start,
        follow=follow,
        media_type=stream_type(accept) or MEDIA_TYPE,
        sandbox_id=sandbox_id,
    )
