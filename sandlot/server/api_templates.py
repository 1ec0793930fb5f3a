"""``/v1/templates``: the caller's tenant's templates: build (with streamed progress), list,
show, the build log, delete. See :mod:`.templates` for tenancy, quotas and allowed bases.

A build answers 201 with the template as JSON once it is done; a caller that accepts
``text/event-stream`` gets the build's progress as it happens instead: ``progress`` events
(the build engine's, as JSON; log lines beyond what a slow caller has read are dropped),
then one ``template`` event (the template) or one ``error`` event (an error body: ``code``,
``message``, ``details``). A build runs on the server, not on the connection: one whose
caller goes away finishes, and names its template.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..api_templates import TemplateBuildRequest, TemplateOut
from ..egress.policy import NetworkPolicy
from ..errors import InvalidArgumentError, SandlotError, ServerError
from ..models import describe
from ..supervisor import Supervisor
from . import sse
from .deps import KEEPALIVE_SECONDS, Caller, State
from .state import Principal, ServerState

router = APIRouter(prefix="/v1/templates", tags=["templates"])
MAX_PENDING = 1000  # progress events waiting for a slow streaming caller
TemplateName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=63,
        description="1-63 of a-z 0-9 . _ -, starting with a letter or digit",
    ),
]
BUILT = {
    201: {"model": TemplateOut, "description": "built (JSON)"},
    200: {
        "content": {sse.MEDIA_TYPE: {}},
        "description": "with `Accept: text/event-stream`: `progress` events, then one "
        "`template` or `error` event",
    },
}


def network_policy(allow: list[str]) -> NetworkPolicy:
    try:
        return NetworkPolicy(allow=allow)
    except ValidationError as exc:
        raise InvalidArgumentError(describe(exc, "allow")) from None


def _event(kind: str, data: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), json.dumps(data).encode())


def _error_data(exc: BaseException) -> dict[str, Any]:
    if not isinstance(exc, SandlotError):
        exc = ServerError(f"internal error: {type(exc).__name__}")
    return {"code": exc.code, "message": exc.message, "details": exc.details}


@router.post("", status_code=201, response_model=TemplateOut, responses=BUILT)  # type: ignore[arg-type]
async def build_template(
    body: TemplateBuildRequest,
    state: State,
    caller: Caller,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Build a template from a base and steps, each step in a sandbox of the layers so far
    (an unchanged step's layer is reused). It replaces the caller's template of that name.
    403 ``forbidden`` past the tenant's quota (templates, bytes) or for a base this server
    does not take from callers; 400 ``template_build_failed`` names the failed step and
    ends with the tail of its output."""
    if body.allow:  # the rules a tenant's sandbox could have, no more
        state.check_network(network_policy(body.allow))
    await state.templates.admit(caller.tenant, body)  # refused before anything runs
    if accept and sse.MEDIA_TYPE in accept:
        return StreamingResponse(
            _streamed(state, caller, body),
            media_type=sse.MEDIA_TYPE,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    out = await state.templates.build(caller.tenant, body, state.manager, lambda _: None)
    return JSONResponse(out.model_dump(mode="json"), status_code=201)


class _Follower:
    """Where a streamed build's events go while its caller reads them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.gone = False

    def progress(self, event: dict[str, Any]) -> None:
        # A step may print without end: while the caller reads slower than that, log lines
        # wait here up to a bound and the rest are dropped (the whole log: GET .../log).
        if self.gone or (event.get("type") == "log" and self.queue.qsize() >= MAX_PENDING):
            return
        self.queue.put_nowait(("progress", event))


async def _streamed(
    state: ServerState, caller: Principal, body: TemplateBuildRequest
) -> AsyncIterator[bytes]:
    follower = _Follower()

    async def run() -> None:
        try:
            out = await state.templates.build(caller.tenant, body, state.manager, follower.progress)
        except Exception as exc:
            follower.queue.put_nowait(("error", _error_data(exc)))
        else:
            follower.queue.put_nowait(("template", out.model_dump(mode="json")))

    # The build runs on the server, not on the connection: a caller that goes away leaves
    # it to finish (and name the template), as a command does.
    Supervisor.current().spawn(run(), "template-build")
    try:
        while True:
            try:
                kind, data = await asyncio.wait_for(follower.queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield sse.KEEPALIVE  # a long quiet step: proxies keep the stream open
                continue
            yield _event(kind, data)
            if kind != "progress":
                return
    finally:
        follower.gone = True


@router.get("", response_model=list[TemplateOut])
async def list_templates(state: State, caller: Caller) -> list[TemplateOut]:
    """The caller's templates, by name."""
    return await state.templates.list_out(caller.tenant)


@router.get("/{name}", response_model=TemplateOut)
async def get_template(name: TemplateName, state: State, caller: Caller) -> TemplateOut:
    """A template: its base, steps, layers (with sizes and file counts) and what its
    sandboxes start with. 404 ``template_not_found`` for a name the tenant does not have."""
    return await state.templates.show(caller.tenant, name)


@router.get("/{name}/log", responses={200: {"content": {"text/plain": {}}}})
async def template_log(name: TemplateName, state: State, caller: Caller) -> Response:
    """The build log of the template (its steps' output), as text."""
    text = await state.templates.log(caller.tenant, name)
    return Response(text, media_type="text/plain; charset=utf-8")


@router.delete("/{name}", status_code=204)
async def delete_template(name: TemplateName, state: State, caller: Caller) -> Response:
    """Forget the name; its layers go at the next garbage collection unless another template
    or a running sandbox uses them (a running sandbox goes on)."""
    await state.templates.remove(caller.tenant, name)
    return Response(status_code=204)
