"""``/v1/sandboxes/{id}/files``: raw bytes in and out, streamed (never whole in memory)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from ..agent import protocol as p
from ..api import MkdirRequest, RenameRequest
from ..channel import Request as AgentRequest
from ..models import EntryInfo
from .deps import Caller, State
from .state import Served

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])

MAX_FILE = 1 << 40
SandboxPath = Annotated[
    str,
    Query(
        pattern=r"^/[^\x00]*$",
        max_length=4096,
        description="absolute path inside the sandbox",
    ),
]
MaxBytes = Annotated[int, Query(ge=0, le=MAX_FILE, description="refuse files larger than this")]


@router.get(
    "",
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the bytes"}},
)
async def read_file(
    sandbox_id: str,
    path: SandboxPath,
    request: Request,
    state: State,
    caller: Caller,
    max_bytes: MaxBytes = MAX_FILE,
) -> Response:
    """A file's content, streamed as it is read."""
    path = exact_path(request, path)
    served = await state.get(caller, sandbox_id)
    download = served.live.channel.open("read", path=path, max_bytes=max_bytes)
    try:
        first = await download.receive()  # an error (no such file, ...) is raised here, as 4xx
    except BaseException:
        download.cancel()
        raise
    return StreamingResponse(download_body(download, first), media_type="application/octet-stream")


async def download_body(
    request: AgentRequest, first: tuple[int, int, bytes]
) -> AsyncIterator[bytes]:
    frame = first
    try:
        while frame[0] != p.END:
            if frame[0] == p.DATA:
                yield frame[2]
                request.consumed(len(frame[2]))
            frame = await request.receive()
    except BaseException:
        request.cancel()  # the client left, or the agent failed: the response is cut short
        raise


@router.put(
    "",
    response_model=EntryInfo,
    openapi_extra={
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}
    },
)
async def write_file(
    sandbox_id: str,
    path: SandboxPath,
    request: Request,
    state: State,
    caller: Caller,
    mode: Annotated[int | None, Query(ge=0, le=0o7777)] = None,
    max_bytes: MaxBytes = MAX_FILE,
) -> Response:
    """Write the raw request body to a file, atomically (parents are created)."""
    path = exact_path(request, path)
    served = await state.get(caller, sandbox_id)
    args: dict[str, Any] = {"path": path, "max_bytes": max_bytes}
    if mode is not None:
        args["mode"] = mode
    return json_answer(await upload(served, args, request.stream()))


async def upload(served: Served, args: dict[str, Any], chunks: AsyncIterator[bytes]) -> Any:
    """Stream ``chunks`` into a file of the sandbox under the channel's credit (op ``write``
    with ``args``); the file's entry once the agent has it whole."""
    writing = served.live.channel.open("write", **args)
    try:
        async for chunk in chunks:
            if chunk:
                await writing.send_data(chunk)
        writing.send_eof()
        while True:
            kind, _, payload = await writing.receive()
            if kind == p.END:
                return json.loads(payload)
    except BaseException:
        writing.cancel()
        raise


def exact_path(request: Request, parsed: str) -> str:
    """The ``path`` query parameter with its non-UTF-8 bytes kept, surrogate-escaped as
    ``os.fsdecode`` does (the framework's parser would replace them)."""
    raw = request.scope.get("query_string", b"").decode("ascii", "replace")
    for key, value in parse_qsl(
        raw, keep_blank_values=True, encoding="utf-8", errors="surrogateescape"
    ):
        if key == "path":
            return value
    return parsed


def json_answer(value: Any) -> Response:
    """JSON by the standard library: file names may hold surrogate escapes, which it writes
    as ``\\udcXX`` and the client reads back exactly (pydantic's encoder refuses them)."""
    return Response(json.dumps(value), media_type="application/json")


@router.get("/list", response_model=list[EntryInfo])
async def list_folder(
    sandbox_id: str,
    path: SandboxPath,
    request: Request,
    state: State,
    caller: Caller,
    depth: Annotated[int, Query(ge=1, le=64)] = 1,
) -> Response:
    path = exact_path(request, path)
    answer = await state.call(caller, sandbox_id, "list", path=path, depth=depth)
    return json_answer(answer["entries"])


@router.get("/stat", response_model=EntryInfo)
async def stat(
    sandbox_id: str, path: SandboxPath, request: Request, state: State, caller: Caller
) -> Response:
    path = exact_path(request, path)
    return json_answer(await state.call(caller, sandbox_id, "stat", path=path))


@router.get("/exists")
async def exists(
    sandbox_id: str, path: SandboxPath, request: Request, state: State, caller: Caller
) -> dict[str, bool]:
    path = exact_path(request, path)
    answer = await state.call(caller, sandbox_id, "exists", path=path)
    return {"exists": bool(answer["exists"])}


@router.post("/mkdir")
async def make_dir(
    sandbox_id: str, body: MkdirRequest, state: State, caller: Caller
) -> dict[str, bool]:
    answer = await state.call(caller, sandbox_id, "mkdir", **body.model_dump())
    return {"created": bool(answer["created"])}


@router.delete("", status_code=204)
async def remove(
    sandbox_id: str,
    path: SandboxPath,
    request: Request,
    state: State,
    caller: Caller,
    recursive: bool = True,
) -> Response:
    path = exact_path(request, path)
    await state.call(caller, sandbox_id, "remove", path=path, recursive=recursive)
    return Response(status_code=204)


@router.post("/rename", response_model=EntryInfo)
async def rename(sandbox_id: str, body: RenameRequest, state: State, caller: Caller) -> Response:
    return json_answer(await state.call(caller, sandbox_id, "rename", **body.model_dump()))
