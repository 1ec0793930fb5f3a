"""``/v1/sessions``: durable sessions (a workspace and a transcript that outlive sandboxes).

A session's sandbox is attached with ``POST /v1/sessions/{id}/sandboxes``: the answer holds
the sandbox (use it under ``/v1/sandboxes/{id}`` like any other) and a *lease* that the
caller keeps alive with heartbeats (every ``lease_ttl / 3`` seconds) and lets go of with
``DELETE .../leases/{lease_id}`` (which checkpoints and destroys the sandbox). A lease whose
heartbeats stop expires: the server then checkpoints and destroys its sandbox itself.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from ..api import (
    AttachOut,
    AttachRequest,
    SessionCreateRequest,
    SessionEventOut,
    SessionOut,
)
from ..errors import InvalidArgumentError
from .api_sandboxes import sandbox_out
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

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
EVENTS_RESPONSE = {
    200: {
        "content": STREAM_CONTENT,
        "description": "a JSON list of events, or Server-Sent Events with "
        "`Accept: text/event-stream`, or binary frames with "
        "`Accept: application/x-sandlot-frames`",
    }
}
OUTPUT = ("stdout", "stderr")


def session_out(record: Any) -> SessionOut:
    return SessionOut.model_validate(record.model_dump())


def event_out(event: Any) -> SessionEventOut:
    out = SessionEventOut(
        seq=event.seq,
        kind=event.kind,
        execution_id=event.execution_id,
        created_at=event.created_at,
    )
    if event.kind in OUTPUT:
        try:
            out.text = bytes(event.data).decode()
        except UnicodeDecodeError:
            out.b64 = base64.b64encode(event.data).decode()
    elif event.data:
        import json

        try:
            out.data = json.loads(event.data)
        except ValueError:
            out.b64 = base64.b64encode(event.data).decode()
    return out


def _metadata_filter(items: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"metadata filter {item!r} is not key=value")
        wanted[key] = value
    return wanted


@router.post("", status_code=201, response_model=SessionOut)
async def create_session(
    body: SessionCreateRequest,
    request: Request,
    state: State,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a durable session. Its workspace is empty until a sandbox attached to it
    writes to ``/workspace`` and is checkpointed."""
    once = Idempotent(state, caller, idempotency_key, request)
    replay = await once.begin(body.model_dump_json().encode())
    if replay is not None:
        return replay
    try:
        record = await state.sessions.create(
            caller.tenant,
            body.metadata,
            workspace=body.workspace_store,
            idle_timeout=body.idle_timeout,
            checkpoint_every=body.checkpoint_every,
            delete_after=body.delete_after,
            volumes=body.volumes,
        )
    except BaseException:
        await once.abandon()
        raise
    answer = session_out(record).model_dump_json().encode()
    await once.finish(201, "application/json", answer)
    return Response(answer, status_code=201, media_type="application/json")


@router.get("", response_model=list[SessionOut])
async def list_sessions(
    state: State,
    caller: Caller,
    metadata: Annotated[
        list[str], Query(description="key=value; every one must match", max_length=100)
    ] = [],  # noqa: B006 (FastAPI reads the default, never mutates it)
) -> list[SessionOut]:
    """The caller's durable sessions, newest first, optionally those whose metadata matches."""
    found = await state.sessions.list(caller.tenant, _metadata_filter(metadata) or None)
    return [session_out(r) for r in found]


@router.get("/{session_id}", response_model=SessionOut)
async def get_session(session_id: str, state: State, caller: Caller) -> SessionOut:
    return session_out(await state.sessions.get(session_id, caller.tenant))


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, state: State, caller: Caller) -> Response:
    """Stop its sandbox (unsaved), delete its checkpoints (and blobs no other session
    uses), its transcript and its records."""
    await state.sessions.delete(session_id, caller.tenant)
    return Response(status_code=204)


@router.get("/{session_id}/events", responses=EVENTS_RESPONSE)  # type: ignore[arg-type]
async def session_events(
    session_id: str,
    state: State,
    caller: Caller,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="events after this seq")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000, description="JSON: at most this many")] = 1000,
    follow: Annotated[bool, Query(description="SSE: go on with new events as they come")] = True,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """The session's transcript across every sandbox it has had, oldest first. As JSON: a
    list of :class:`SessionEventOut`. As Server-Sent Events (``id`` = seq, resumable with
    ``Last-Event-ID``): the log so far, then new events while ``follow``."""
    start = min(after_from(after, last_event_id), MAX_SEQ)
    streaming = stream_type(accept)
    if streaming:
        await state.sessions.get(session_id, caller.tenant)
        return event_stream(state, session_id, start, follow=follow, media_type=streaming)
    found = await state.sessions.events(session_id, start, limit, caller.tenant)
    body = b"[" + b",".join(event_out(e).model_dump_json().encode() for e in found) + b"]"
    return Response(body, media_type="application/json")


@router.post("/{session_id}/sandboxes", status_code=201, response_model=AttachOut)
async def attach(
    session_id: str,
    body: AttachRequest,
    request: Request,
    state: State,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Attach a sandbox: the session's live one when ``reuse`` and its spec matches exactly,
    else a new one whose ``/workspace`` holds the session's latest checkpoint. 409
    ``session_busy`` while another holder's lease holds the session's sandbox. Heartbeat the
    lease every ``lease_ttl / 3`` seconds."""
    once = Idempotent(state, caller, idempotency_key, request)
    replay = await once.begin(body.model_dump_json().encode())
    if replay is not None:
        return replay
    try:
        served, attached = await state.attach(
            caller, session_id, body.spec(), reuse=body.reuse, lease_ttl=body.lease_ttl
        )
    except BaseException:
        await once.abandon()
        raise
    restored = attached.restored
    out = AttachOut(
        sandbox=sandbox_out(served.record),
        lease_id=attached.lease_id,
        lease_ttl=body.lease_ttl,
        reused=attached.reused,
        restored=None if restored is None else restored.model_dump(mode="json"),
    )
    answer = out.model_dump_json().encode()
    await once.finish(201, "application/json", answer)
    return Response(answer, status_code=201, media_type="application/json")


@router.post("/{session_id}/leases/{lease_id}/heartbeat", status_code=204)
async def heartbeat(session_id: str, lease_id: str, state: State, caller: Caller) -> Response:
    """Keep the lease alive for another ``lease_ttl`` seconds. 410 ``sandbox_closed`` once
    it has expired or was released (its sandbox may be gone: attach again)."""
    await state.heartbeat(caller, session_id, lease_id)
    return Response(status_code=204)


@router.delete("/{session_id}/leases/{lease_id}")
async def detach(
    session_id: str,
    lease_id: str,
    state: State,
    caller: Caller,
    stop: Annotated[
        bool, Query(description="false: leave the sandbox running for a later reuse")
    ] = True,
) -> dict[str, Any]:
    """Let go of the lease. The last holder's detach checkpoints and destroys the sandbox
    (unless ``stop=false``); ``checkpoint`` says what that checkpoint did (null: none)."""
    info = await state.detach(caller, session_id, lease_id, stop=stop)
    return {"checkpoint": None if info is None else info.model_dump(mode="json")}


@router.post("/{session_id}/checkpoint")
async def checkpoint(session_id: str, state: State, caller: Caller) -> dict[str, Any]:
    """Save the attached sandbox's workspace now (409 ``session_error`` with none attached)."""
    info = await state.sessions.checkpoint(session_id, caller.tenant)
    return dict(info.model_dump(mode="json"))
