"""Errors as HTTP answers: the status of each error class (the most specific class in an
error's MRO wins) and the JSON body every error answer has. Shared by the app's handlers
and the routers that answer errors themselves (the port proxy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from starlette.responses import JSONResponse

from ..api import ErrorBody
from ..errors import (
    AuthenticationError,
    CodeContextBusyError,
    FileExistsInSandboxError,
    FileNotFoundInSandboxError,
    FileTooLargeError,
    ForbiddenError,
    IdempotencyConflictError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ProviderUnavailableError,
    RemoteUnavailableError,
    SandboxClosedError,
    SandlotError,
    ServerError,
    SessionBusyError,
    SessionError,
    VolumeError,
)

T = TypeVar("T")

# HTTP status by error class; the most specific class in an error's MRO wins.
STATUS: dict[type[SandlotError], int] = {
    InvalidArgumentError: 422,
    NotFoundError: 404,
    FileNotFoundInSandboxError: 404,
    AuthenticationError: 401,
    ForbiddenError: 403,
    PermissionDeniedError: 403,
    CodeContextBusyError: 409,
    FileExistsInSandboxError: 409,
    IdempotencyConflictError: 409,
    SessionError: 409,  # the session's state does not allow it (e.g. no sandbox attached)
    SessionBusyError: 409,
    VolumeError: 409,  # exists already, mounted, or a quota is full
    SandboxClosedError: 410,
    FileTooLargeError: 413,
    ProviderUnavailableError: 422,  # this server cannot provide what was asked for
    RemoteUnavailableError: 503,
    ServerError: 500,
}
# The error answers every router documents.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "no valid API key",
        403: "the key may not do this, or a quota is reached",
        404: "no such sandbox, session or template (or another tenant's), execution, file or "
        "context",
        409: "busy (a session's run lock or lease), exists already, or an idempotency key "
        "reused for another call",
        410: "the sandbox has ended, or a session's lease has expired",
        422: "invalid request: `details.errors` names the fields",
    }.items()
}
# Errors that FastAPI or Starlette raise themselves, by status: the code they answer with.
HTTP_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    422: "invalid_argument",
}


def most_specific(table: Mapping[type, T], error: BaseException, default: T) -> T:
    """The entry of ``table`` for the most specific class in the error's MRO."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return default


def status_of(error: SandlotError) -> int:
    return most_specific(STATUS, error, 500 if type(error) is SandlotError else 400)


def error_response(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    body = ErrorBody(code=code, message=message, details=details)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)
