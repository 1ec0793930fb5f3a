"""E2B's control plane (``/sandboxes``, ``/v2/sandboxes``), keyed by ``X-API-KEY``.

A front over :class:`~sandlot.server.state.ServerState`: every call goes through the same
core as ``/v1/sandboxes`` (tenancy, limits, the transcript); :mod:`.spec` translates E2B's
create settings (templates, lifetimes, network). Errors answer E2B's ``{"code": status,
"message": ...}`` (:class:`E2BRoute`), which the SDKs turn into their exceptions; another
tenant's sandbox is "not found". Paused sandboxes (``pause``; ``connect`` resumes) are
frozen: their lifetime keeps running. Listings page with a signed ``x-next-token``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ...errors import (
    InvalidArgumentError,
    SandboxNotFoundError,
    SandlotError,
    SessionError,
)
from ...models import Resources
from ..deps import Idempotent, State
from ..http_errors import status_of
from ..state import Principal, Served, ServerState
from . import access
from .models import (
    DEFAULT_TIMEOUT,
    MAX_METADATA,
    MAX_TEMPLATE,
    ConnectIn,
    NetworkIn,
    NewSandbox,
    PauseIn,
    RefreshIn,
    SandboxDetailOut,
    SandboxOut,
    TimeoutIn,
)
from .spec import TEMPLATE_KEY, network_of, spec_of

log = logging.getLogger("sandlot.server.e2b")

CLIENT_ID = "sandlot"
MAX_API_KEY = 512  # longer is no key of ours: refused before any lookup
PAGE_CONTEXT = b"sandlot-e2b-page-v1."
MAX_TOKEN = 1024
# E2B's status for sandlot's: an ended sandbox is one E2B no longer knows; a bad argument
# is 400 (E2B answers 422 for nothing the SDKs send).
E2B_STATUS = {410: 404, 422: 400}
_STATE = {True: "paused", False: "running"}


# -- errors ---------------------------------------------------------------------------------


def e2b_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


class E2BRoute(APIRoute):
    """Answers every error of its routes in E2B's shape, including FastAPI's own (invalid
    bodies and queries: 400, not sandlot's 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except SandlotError as exc:
                status = status_of(exc)
                return e2b_error(E2B_STATUS.get(status, status), exc.message)
            except RequestValidationError as exc:
                return e2b_error(400, _invalid(exc.errors()))
            except HTTPException as exc:
                return e2b_error(exc.status_code, str(exc.detail))
            except Exception:
                log.exception("E2B call %s %s failed", request.method, request.url.path)
                return e2b_error(500, "internal error")

        return route


def _invalid(errors: Any) -> str:
    parts = []
    for item in errors:
        where = ".".join(str(x) for x in item.get("loc", ()) if x != "body")
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "invalid request: " + "; ".join(parts)


router = APIRouter(tags=["e2b"], include_in_schema=False, route_class=E2BRoute)


async def e2b_caller(
    state: State, x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None
) -> Principal:
    if x_api_key is not None and len(x_api_key) > MAX_API_KEY:
        return await access.api_caller(state, "-")  # a wrong key, said the same way
    return await access.api_caller(state, x_api_key)


Caller = Annotated[Principal, Depends(e2b_caller)]


# -- answers --------------------------------------------------------------------------------


def _token(state: ServerState, request: Request, sandbox_id: str) -> str:
    return access.access_token(access.signer_of(state, request.app.state), sandbox_id)


def _template(metadata: dict[str, str]) -> str:
    return metadata.get(TEMPLATE_KEY, "base")


def _user_metadata(metadata: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k != TEMPLATE_KEY}


def created(state: ServerState, request: Request, served: Served, status: int) -> Response:
    record = served.record
    token = _token(state, request, record.id)
    out = SandboxOut(
        template_id=_template(record.metadata),
        sandbox_id=record.id,
        alias=_template(record.metadata),
        client_id=CLIENT_ID,
        envd_version=access.ENVD_VERSION,
        envd_access_token=token,
        # The code interpreter's SDK sends only this one on its /contexts calls.
        traffic_access_token=token,
    )
    return JSONResponse(out.model_dump(mode="json", by_alias=True), status_code=status)


RESOURCES = Resources()


def detail(served: Served, paused: bool, token: str | None) -> SandboxDetailOut:
    record = served.record
    return SandboxDetailOut(
        template_id=_template(record.metadata),
        sandbox_id=record.id,
        alias=_template(record.metadata),
        client_id=CLIENT_ID,
        started_at=record.created_at,
        end_at=record.expires_at,
        envd_version=access.ENVD_VERSION,
        envd_access_token=token,
        cpu_count=max(1, math.ceil(RESOURCES.cpus)),
        memory_mb=RESOURCES.memory_mb,
        disk_size_mb=RESOURCES.disk_mb or 10240,
        metadata=_user_metadata(record.metadata),
        state="paused" if paused else "running",
    )


async def _paused(state: ServerState, sandbox_id: str) -> bool:
    try:
        return await state.manager.is_paused(sandbox_id)
    except SandlotError:  # ending meanwhile: the next look says so
        return False


async def _served(state: ServerState, caller: Principal, sandbox_id: str) -> Served:
    """The caller's running (or paused) sandbox; 404 for an unknown, ended or another
    tenant's one."""
    if len(sandbox_id) > access.MAX_ID:
        raise SandboxNotFoundError("no such sandbox")
    served = state.served.get(sandbox_id)
    if served is None or served.record.tenant != caller.tenant or state.is_ending(sandbox_id):
        raise SandboxNotFoundError(f"sandbox {sandbox_id!r} not found", id=sandbox_id)
    return served


async def _running(state: ServerState, caller: Principal, sandbox_id: str) -> Served:
    """The same, not paused: what a call its agent must answer needs."""
    await _served(state, caller, sandbox_id)
    if await _paused(state, sandbox_id):
        raise SessionError(f"sandbox {sandbox_id} is paused: connect to it to resume it first")
    return await state.get(caller, sandbox_id)


# -- create, connect, resume ----------------------------------------------------------------


IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
]


async def _create(
    request: Request, body: NewSandbox, state: ServerState, caller: Principal, key: str | None
) -> Response:
    """Create; a repeated ``Idempotency-Key`` gets the first answer (stored without its
    access token, which is added again: no credential is kept in the store)."""
    once = Idempotent(state, caller, key, request)
    replay = await once.begin(body.model_dump_json(by_alias=True).encode())
    if replay is not None:
        first = json.loads(bytes(replay.body))
        if replay.status_code == 201:
            first["envdAccessToken"] = _token(state, request, first["sandboxID"])
        return JSONResponse(first, status_code=replay.status_code)
    try:
        own = bool(body.template_id) and await state.templates.exists(
            caller.tenant, str(body.template_id)
        )
        served = await state.create(caller, spec_of(body, own))
    except BaseException:
        await once.abandon()
        raise
    answer = created(state, request, served, 201)
    if key is not None:
        stored = json.loads(bytes(answer.body))
        stored.pop("envdAccessToken", None)
        await once.finish(201, "application/json", json.dumps(stored).encode())
    return answer


@router.post("/v2/sandboxes")
async def create_v2(
    request: Request, body: NewSandbox, state: State, caller: Caller, key: IdempotencyKey = None
) -> Response:
    return await _create(request, body, state, caller, key)


@router.post("/sandboxes")
async def create_v1(
    request: Request, body: NewSandbox, state: State, caller: Caller, key: IdempotencyKey = None
) -> Response:
    return await _create(request, body, state, caller, key)


async def _connect(
    request: Request, sandbox_id: str, timeout: int | None, state: ServerState, caller: Principal
) -> Response:
    """Resume a paused sandbox; make its timeout at least ``timeout`` from now (never
    shorter, as E2B does). 201 when it was resumed, else 200."""
    served = await _served(state, caller, sandbox_id)
    resumed = await _paused(state, sandbox_id)
    if resumed:
        await state.manager.resume(sandbox_id)
    if timeout is not None:
        left = (served.record.expires_at - datetime.now(UTC)).total_seconds()
        if timeout > left:
            await state.set_timeout(caller, sandbox_id, float(timeout))
    served = await state.get(caller, sandbox_id)
    return created(state, request, served, 201 if resumed else 200)


@router.post("/v2/sandboxes/{sandbox_id}/connect")
async def connect_v2(
    request: Request, sandbox_id: str, body: ConnectIn, state: State, caller: Caller
) -> Response:
    return await _connect(request, sandbox_id, body.timeout, state, caller)


@router.post("/sandboxes/{sandbox_id}/connect")
async def connect_v1(
    request: Request, sandbox_id: str, body: ConnectIn, state: State, caller: Caller
) -> Response:
    return await _connect(request, sandbox_id, body.timeout, state, caller)


@router.post("/sandboxes/{sandbox_id}/resume")
async def resume(
    request: Request, sandbox_id: str, body: ConnectIn, state: State, caller: Caller
) -> Response:
    """The older SDKs' resume: 409 when the sandbox is not paused."""
    await _served(state, caller, sandbox_id)
    if not await _paused(state, sandbox_id):
        return e2b_error(409, f"sandbox {sandbox_id} is not paused")
    return await _connect(request, sandbox_id, body.timeout, state, caller)


# -- list -----------------------------------------------------------------------------------


def _metadata_filter(text: str | None) -> dict[str, str]:
    """``k=v&k2=v2``, each key and value percent-encoded once more (as the SDKs send it)."""
    if not text:
        return {}
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_METADATA
        )
    except ValueError:
        pairs = []
    wanted = {unquote(k): unquote(v) for k, v in pairs}
    if not wanted or "" in wanted:
        raise InvalidArgumentError("metadata is key=value pairs joined by '&'")
    return wanted


def _states(values: list[str]) -> set[str]:
    wanted = {s.strip() for value in values for s in value.split(",") if s.strip()}
    unknown = wanted - {"running", "paused"}
    if unknown:
        raise InvalidArgumentError(f"state is 'running' or 'paused', not {sorted(unknown)[0]!r}")
    return wanted or {"running", "paused"}


def _page_mac(state: ServerState, request: Request, tenant: str, payload: bytes) -> bytes:
    key = access.signer_of(state, request.app.state).key()
    message = PAGE_CONTEXT + tenant.encode() + b"\0" + payload
    return hmac.new(key, message, hashlib.sha256).digest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def page_token(state: ServerState, request: Request, tenant: str, order: str, last: Any) -> str:
    """Where the next page starts: after ``last`` in ``order``, signed for this tenant."""
    payload = f"{order}|{last.created_at.timestamp()!r}|{last.id}".encode()
    return f"{_b64(payload)}.{_b64(_page_mac(state, request, tenant, payload))}"


def read_page_token(
    state: ServerState, request: Request, tenant: str, order: str, token: str
) -> tuple[float, str]:
    bad = InvalidArgumentError("nextToken is not one this server gave for this listing")
    try:
        encoded, _, mac = token.partition(".")
        payload = _unb64(encoded)
        given = _unb64(mac)
    except (ValueError, binascii.Error):
        raise bad from None
    if not hmac.compare_digest(given, _page_mac(state, request, tenant, payload)):
        raise bad
    token_order, _, rest = payload.decode("utf-8", "replace").partition("|")
    at, _, last_id = rest.partition("|")
    if token_order != order:
        raise bad
    return float(at), last_id


async def _listing(
    state: ServerState,
    caller: Principal,
    metadata: str | None,
    states: set[str],
    started_after: datetime | None = None,
    template: str | None = None,
) -> list[tuple[Served, bool]]:
    wanted = _metadata_filter(metadata)
    if template:
        wanted[TEMPLATE_KEY] = template
    records = await asyncio.to_thread(
        state.records.list_sandboxes, caller.tenant, wanted, "running"
    )
    if started_after is not None:
        since = started_after if started_after.tzinfo else started_after.replace(tzinfo=UTC)
        records = [r for r in records if r.created_at >= since]
    live = [state.served[r.id] for r in records if r.id in state.served]
    live = [s for s in live if not state.is_ending(s.record.id)]
    paused = await asyncio.gather(*(_paused(state, s.record.id) for s in live))
    return [(s, p) for s, p in zip(live, paused, strict=True) if _STATE[p] in states]


@router.get("/v2/sandboxes")
async def list_v2(
    request: Request,
    state: State,
    caller: Caller,
    metadata: Annotated[str | None, Query(max_length=16384)] = None,
    states: Annotated[list[str], Query(alias="state", max_length=4)] = [],  # noqa: B006
    next_token: Annotated[str | None, Query(alias="nextToken", max_length=MAX_TOKEN)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    order: Literal["asc", "desc"] = "asc",
    started_after: Annotated[datetime | None, Query(alias="startedAfter")] = None,
    template: Annotated[str | None, Query(max_length=MAX_TEMPLATE)] = None,
) -> Response:
    """The caller's sandboxes, oldest first (``order=desc``: newest first), a page at a
    time: ``x-next-token`` names where the next page starts."""
    found = await _listing(state, caller, metadata, _states(states), started_after, template)
    if order == "desc":
        found.reverse()
    if next_token:
        at, last_id = read_page_token(state, request, caller.tenant, order, next_token)

        def after(item: tuple[Served, bool]) -> bool:
            key = (item[0].record.created_at.timestamp(), item[0].record.id)
            return key > (at, last_id) if order == "asc" else key < (at, last_id)

        found = [item for item in found if after(item)]
    page = found[:limit]
    headers = {}
    if len(found) > limit:
        last = page[-1][0].record
        headers["x-next-token"] = page_token(state, request, caller.tenant, order, last)
    body = [detail(served, paused, None).wire(token=False) for served, paused in page]
    return JSONResponse(body, headers=headers)


@router.get("/sandboxes")
async def list_v1(
    state: State,
    caller: Caller,
    metadata: Annotated[str | None, Query(max_length=16384)] = None,
) -> Response:
    """The older listing: every running sandbox of the caller's, no paging."""
    found = await _listing(state, caller, metadata, {"running"})
    return JSONResponse([detail(s, p, None).wire(token=False) for s, p in found])


# -- one sandbox ----------------------------------------------------------------------------


@router.get("/sandboxes/metrics")
async def metrics_of_many(
    state: State,
    caller: Caller,
    sandbox_ids: Annotated[str | None, Query(max_length=16384)] = None,
) -> Response:
    """sandlot keeps no per-sandbox resource samples: no metrics for any of them."""
    return JSONResponse({"sandboxes": {}})


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(request: Request, sandbox_id: str, state: State, caller: Caller) -> Response:
    served = await _served(state, caller, sandbox_id)
    paused = await _paused(state, sandbox_id)
    state.manager.touch(sandbox_id)
    out = detail(served, paused, _token(state, request, sandbox_id))
    return JSONResponse(out.wire(token=True))


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, state: State, caller: Caller) -> Response:
    await _served(state, caller, sandbox_id)
    await state.kill(caller, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(sandbox_id: str, body: TimeoutIn, state: State, caller: Caller) -> Response:
    """The sandbox ends ``timeout`` seconds from now (longer or shorter than before)."""
    await _running(state, caller, sandbox_id)
    await state.set_timeout(caller, sandbox_id, float(body.timeout))
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/refreshes", status_code=204)
async def refresh(
    sandbox_id: str, state: State, caller: Caller, body: Annotated[RefreshIn | None, Body()] = None
) -> Response:
    """Keep the sandbox at least ``duration`` seconds more (default: its E2B timeout)."""
    served = await _running(state, caller, sandbox_id)
    duration = (body.duration if body else None) or DEFAULT_TIMEOUT
    left = (served.record.expires_at - datetime.now(UTC)).total_seconds()
    if duration > left:
        await state.set_timeout(caller, sandbox_id, float(duration))
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause(
    sandbox_id: str, state: State, caller: Caller, body: Annotated[PauseIn | None, Body()] = None
) -> Response:
    """Freeze every process (as ``/v1/sandboxes/{id}/pause``); 409 if paused already."""
    await _served(state, caller, sandbox_id)
    if await _paused(state, sandbox_id):
        return e2b_error(409, f"sandbox {sandbox_id} is already paused")
    await state.get(caller, sandbox_id)
    await state.manager.pause(sandbox_id)
    return Response(status_code=204)


@router.put("/sandboxes/{sandbox_id}/network", status_code=204)
async def update_network(
    sandbox_id: str, body: NetworkIn, state: State, caller: Caller
) -> Response:
    """Replace what the sandbox may reach (``allowOut``; nothing else without it)."""
    await _running(state, caller, sandbox_id)
    network = network_of(body)
    await state.set_network(caller, sandbox_id, network)
    return Response(status_code=204)


@router.get("/sandboxes/{sandbox_id}/metrics")
async def metrics(sandbox_id: str, state: State, caller: Caller) -> Response:
    """No samples: sandlot does not measure a sandbox's CPU, memory or disk over time."""
    await _served(state, caller, sandbox_id)
    return JSONResponse([])


@router.get("/sandboxes/{sandbox_id}/logs")
async def logs_v1(sandbox_id: str, state: State, caller: Caller) -> Response:
    """No log lines: a sandbox's commands and their output are in sandlot's transcript
    (``/v1/sandboxes/{id}/events``), not in E2B's system log."""
    await state.record(caller, sandbox_id)
    return JSONResponse({"logs": [], "logEntries": []})


@router.get("/v2/sandboxes/{sandbox_id}/logs")
async def logs_v2(sandbox_id: str, state: State, caller: Caller) -> Response:
    await state.record(caller, sandbox_id)
    return JSONResponse({"logs": []})


async def _unsupported(
    state: ServerState, caller: Principal, sandbox_id: str, what: str
) -> Response:
    await _served(state, caller, sandbox_id)
    return e2b_error(501, f"{what} is not supported by sandlot")


@router.post("/sandboxes/{sandbox_id}/fork")
async def fork(sandbox_id: str, state: State, caller: Caller) -> Response:
    return await _unsupported(state, caller, sandbox_id, "forking a sandbox")


@router.post("/sandboxes/{sandbox_id}/snapshots")
async def snapshot(sandbox_id: str, state: State, caller: Caller) -> Response:
    return await _unsupported(
        state, caller, sandbox_id, "snapshotting a sandbox (use a sandlot session's checkpoints)"
    )


@router.get("/snapshots")
async def snapshots(state: State, caller: Caller) -> Response:
    """sandlot takes no E2B snapshots: the list is empty."""
    return JSONResponse([])
