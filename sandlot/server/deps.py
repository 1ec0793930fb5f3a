"""Request dependencies: the server's state, the caller (by API key), idempotency, event
streams (Server-Sent Events, or binary frames for clients that ask for them)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import AuthenticationError, ForbiddenError, IdempotencyConflictError
from ..transcript.hub import TERMINAL
from . import frames, sse
from .state import LOCAL_TENANT, Principal, ServerState

KEEPALIVE_SECONDS = 15.0
MAX_SEQ = 2**63 - 1  # what the database's integers hold: the largest id or seq a query takes
IDEMPOTENCY_WAIT = 30.0
ENDS = TERMINAL | {"pruned"}  # the last events an execution's stream can carry
# How OpenAPI declares an event stream's two bodies.
STREAM_CONTENT = {
    sse.MEDIA_TYPE: {},
    frames.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
}


async def until_disconnect(receive: Receive, work: Awaitable[None]) -> None:
    """Await ``work``, cancelled if the client goes away meanwhile (the request is over then,
    not the server: that cancellation ends here)."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def listen() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    listener = asyncio.ensure_future(listen())
    try:
        await work
    except asyncio.CancelledError:
        if not gone:
            raise
    finally:
        listener.cancel()
    if gone and task.cancelling():
        task.uncancel()


async def get_state(request: Request) -> ServerState:  # async: a plain def runs in a thread
    state: ServerState = request.app.state.sandlot
    return state


State = Annotated[ServerState, Depends(get_state)]


async def get_principal(
    state: State,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> Principal:
    """The caller. While no API key exists (allowed on loopback only), everyone is the local
    tenant; after that, a valid key is required."""
    if not await state.auth_required():
        if authorization:  # a key that is sent must be right, or a typo goes unnoticed
            found = await state.authenticate(authorization.removeprefix("Bearer ").strip())
            if found is None:
                raise AuthenticationError("the API key is not valid (unknown, wrong or revoked)")
            return found
        return Principal(LOCAL_TENANT, admin=True)
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthenticationError("an API key is required: send 'Authorization: Bearer <key>'")
    principal = await state.authenticate(authorization[7:].strip())
    if principal is None:
        raise AuthenticationError("the API key is not valid (unknown, wrong or revoked)")
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


async def get_admin(caller: Caller) -> Principal:
    if not caller.admin:
        raise ForbiddenError("only an admin key may manage keys")
    return caller


Admin = Annotated[Principal, Depends(get_admin)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="repeat a call safely: a repeated key gets the first answer",
    ),
]


class Idempotent:
    """Answers a repeated Idempotency-Key with the stored first answer."""

    def __init__(self, state: ServerState, caller: Principal, key: str | None, request: Request):
        self.state = state
        self.tenant = caller.tenant
        self.key = key
        self.method = request.method
        self.path = request.url.path

    async def begin(self, body: bytes) -> Response | None:
        """None: go ahead (and :meth:`finish` later). A response: the first answer."""
        if self.key is None:
            return None
        digest = hashlib.sha256(body).hexdigest()
        records = self.state.records
        deadline = asyncio.get_running_loop().time() + IDEMPOTENCY_WAIT
        while True:
            stored = await self.state.hub.write(
                records.reserve_idempotency, self.tenant, self.key, self.method, self.path, digest
            )
            if stored is None:
                return None
            if (stored.method, stored.path, stored.body_hash) != (self.method, self.path, digest):
                raise IdempotencyConflictError(
                    "this Idempotency-Key was used for a different request", key=self.key
                )
            if stored.status is not None:
                return Response(
                    stored.body or b"",
                    status_code=stored.status,
                    media_type=stored.content_type,
                    headers={"Idempotent-Replayed": "true"},
                )
            if asyncio.get_running_loop().time() > deadline:
                raise IdempotencyConflictError(
                    "the first call with this Idempotency-Key is still running", key=self.key
                )
            await asyncio.sleep(0.05)

    async def finish(self, status: int, content_type: str, body: bytes) -> None:
        if self.key is not None:
            await self.state.hub.write(
                self.state.records.complete_idempotency,
                self.tenant,
                self.key,
                status,
                content_type,
                body,
            )

    async def abandon(self) -> None:
        if self.key is not None:
            await self.state.hub.write(
                self.state.records.release_idempotency, self.tenant, self.key
            )


def after_from(after: int | None, last_event_id: str | None) -> int:
    """Where a stream resumes: ``Last-Event-ID`` wins over ``?after=``."""
    if last_event_id:
        try:
            return max(0, int(last_event_id))
        except ValueError:
            pass
    return max(0, after or 0)


class EventStreamResponse(StreamingResponse):
    """A streaming body whose source says which write is its last: that write ends the body
    too (``more_body`` false), so a client reads the end with the last events, not in a write
    of its own after them (aiohttp closes a connection released before its end is read). A
    client that goes away cancels the stream (as Starlette's own does, with a plain task
    where it has a task group)."""

    def __init__(
        self,
        writes: AsyncGenerator[tuple[bytes | memoryview, bool], None],
        media_type: str,
        headers: dict[str, str],
        *,
        hold_headers: bool = False,
    ) -> None:
        super().__init__(_nothing(), media_type=media_type, headers=headers)
        self.writes = writes
        # The headers go out with the first write (an execution's starts at once): the
        # client wakes up once for both, not twice.
        self.hold_headers = hold_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await until_disconnect(receive, self.stream_response(send))

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        start["headers"] = self.raw_headers
        if not self.hold_headers:
            await send(start)
        try:
            async for data, last in self.writes:
                if self.hold_headers:
                    self.hold_headers = False
                    await send(start)
                await send({"type": "http.response.body", "body": data, "more_body": not last})
                if last:
                    return
            if self.hold_headers:
                await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.writes.aclose()  # its follower stops now, not when it is collected


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


def event_stream(
    state: ServerState,
    session_id: str,
    after: int,
    *,
    execution_id: str | None = None,
    follow: bool = True,
    headers: dict[str, str] | None = None,
    media_type: str = sse.MEDIA_TYPE,
    sandbox_id: str | None = None,
) -> EventStreamResponse:
    """The session's events after ``after`` as a streaming body: Server-Sent Events, or
    binary frames (:mod:`.frames`) when ``media_type`` says so. An execution's stream ends
    with its exit or error. ``sandbox_id``: the sandbox whose transcript this is; a stream
    being read is its activity (each batch or keep-alive counts)."""
    binary = media_type == frames.MEDIA_TYPE
    keepalive = frames.KEEPALIVE if binary else sse.KEEPALIVE
    until_terminal = execution_id is not None

    async def writes() -> AsyncGenerator[tuple[bytes | memoryview, bool], None]:
        events = state.hub.follow(
            session_id,
            after,
            execution_id=execution_id,
            follow=follow,
            until_terminal=until_terminal,
            heartbeat=KEEPALIVE_SECONDS,
        )
        async for batch in events:
            if sandbox_id is not None:
                state.manager.touch(sandbox_id)
            # An empty batch is a quiet spell: a keep-alive keeps proxies from closing.
            if not batch:
                yield keepalive, False
                continue
            # After an execution's end (or a pruned log's) nothing more comes.
            last = until_terminal and batch[-1].kind in ENDS
            if binary:
                parts = list(frames.writes(batch))
                for part in parts[:-1]:
                    yield part, False
                yield parts[-1], last
            else:
                yield b"".join(map(sse.encode, batch)), last

    return EventStreamResponse(
        writes(),
        media_type,
        {"Cache-Control": "no-store", "X-Accel-Buffering": "no", **(headers or {})},
        hold_headers=until_terminal,
    )


def stream_type(accept: str | None) -> str | None:
    """The streaming body a caller accepts: binary frames if it names them (the SDK), else
    Server-Sent Events if it names those; None: it wants JSON."""
    if not accept:
        return None
    if frames.MEDIA_TYPE in accept:
        return frames.MEDIA_TYPE
    if sse.MEDIA_TYPE in accept:
        return sse.MEDIA_TYPE
    return None


def wants_stream(accept: str | None) -> bool:
    """Whether the caller accepts a stream (either kind)."""
    return stream_type(accept) is not None
