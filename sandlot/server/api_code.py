"""``/v1/sandboxes/{id}/code/contexts``: Python namespaces kept between cells."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.responses import Response

from ..api import NAME, ContextRequest, RestartRequest
from ..models import CodeContext
from .deps import Caller, State

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/code/contexts", tags=["code"])
ContextId = Annotated[str, Path(pattern=NAME)]


@router.post("", status_code=201, response_model=CodeContext)
async def create_context(
    sandbox_id: str, body: ContextRequest, state: State, caller: Caller
) -> CodeContext:
    args = body.model_dump(exclude_none=True)
    return CodeContext.model_validate(await state.call(caller, sandbox_id, "code.create", **args))


@router.get("", response_model=list[CodeContext])
async def list_contexts(sandbox_id: str, state: State, caller: Caller) -> list[CodeContext]:
    answer = await state.call(caller, sandbox_id, "code.list")
    return [CodeContext.model_validate(c) for c in answer.get("contexts", [])]


@router.post("/{context}/restart", response_model=CodeContext)
async def restart_context(
    sandbox_id: str, context: ContextId, body: RestartRequest, state: State, caller: Caller
) -> CodeContext:
    answer = await state.call(
        caller, sandbox_id, "code.restart", context=context, forget_state=body.forget_state
    )
    return CodeContext.model_validate(answer)


@router.delete("/{context}", status_code=204)
async def remove_context(
    sandbox_id: str, context: ContextId, state: State, caller: Caller
) -> Response:
    await state.call(caller, sandbox_id, "code.remove", context=context)
    return Response(status_code=204)


@router.post("/{context}/interrupt")
async def interrupt(
    sandbox_id: str, context: ContextId, state: State, caller: Caller
) -> dict[str, bool]:
    """Interrupt the cell running in the context (KeyboardInterrupt; the state is kept)."""
    answer = await state.call(caller, sandbox_id, "code.interrupt", context=context)
    return {"interrupted": bool(answer.get("interrupted"))}
