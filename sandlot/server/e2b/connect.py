"""The Connect protocol (connectrpc.com/docs/protocol) with the JSON codec, as envd speaks it
to the E2B SDKs: unary calls, server streams and client streams over HTTP/1.1.

- Unary: the request body is one JSON message (``application/json``); the answer is one JSON
  message, or an error as ``{"code", "message"}`` with the HTTP status of its code.
- Streams (``application/connect+json``): every message is an envelope, a flags byte and a
  big-endian 32-bit length before the JSON; the answer's last envelope has flag 0x02 and
  carries ``{"error": ...}`` or ``{}``. Errors in a stream travel there, with status 200.

What a client sends is bounded (:data:`MAX_MESSAGE`) before it is read whole.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...errors import (
    AuthenticationError,
    CodeContextBusyError,
    CommandTimeoutError,
    FileExistsInSandboxError,
    FileNotFoundInSandboxError,
    FileTooLargeError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    SandboxClosedError,
    SandlotError,
)
from ..http_errors import most_specific

JSON = "application/json"
STREAM_JSON = "application/connect+json"
MAX_MESSAGE = 8 * 1024 * 1024  # one message from a client: stdin chunks are far smaller
END_STREAM = 0x02
COMPRESSED = 0x01
_HEADER = struct.Struct(">BI")

# Connect's codes and their HTTP statuses (the protocol's table).
STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}
# sandlot's errors as Connect codes; the most specific class in an error's MRO wins.
CODES: dict[type[SandlotError], str] = {
    InvalidArgumentError: "invalid_argument",
    NotFoundError: "not_found",
    FileNotFoundInSandboxError: "not_found",
    FileExistsInSandboxError: "already_exists",
    AuthenticationError: "unauthenticated",
    ForbiddenError: "permission_denied",
    PermissionDeniedError: "permission_denied",
    FileTooLargeError: "resource_exhausted",
    CodeContextBusyError: "aborted",
    CommandTimeoutError: "deadline_exceeded",
    SandboxClosedError: "unavailable",
    ProtocolError: "invalid_argument",
}


class ConnectError(Exception):
    """An error to answer as Connect does: a code of :data:`STATUS` and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in STATUS else "unknown"
        self.message = message


def code_of(exc: BaseException) -> str:
    if isinstance(exc, ConnectError):
        return exc.code
    return most_specific(CODES, exc, "unknown" if isinstance(exc, SandlotError) else "internal")


def message_of(exc: BaseException) -> str:
    if isinstance(exc, (ConnectError, SandlotError)):
        return str(exc)
    return "internal error"  # nothing of the server's insides goes to the client


def error_body(exc: BaseException) -> dict[str, str]:
    return {"code": code_of(exc), "message": message_of(exc)}


def error_response(exc: BaseException) -> Response:
    """A unary call's error answer."""
    body = error_body(exc)
    return Response(json.dumps(body), status_code=STATUS[body["code"]], media_type=JSON)


def unary_response(message: dict[str, Any]) -> Response:
    return Response(json.dumps(message, separators=(",", ":")), media_type=JSON)


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(flags, len(data)) + data


def end_of_stream(exc: BaseException | None = None) -> bytes:
    return envelope({} if exc is None else {"error": error_body(exc)}, END_STREAM)


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_MESSAGE + 5:
        raise ConnectError("resource_exhausted", f"a message may be at most {MAX_MESSAGE} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_MESSAGE + 5:
            raise ConnectError(
                "resource_exhausted", f"a message may be at most {MAX_MESSAGE} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data) if data else {}
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the parser's depth
        raise ConnectError("invalid_argument", "the message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ConnectError("invalid_argument", "the message is not a JSON object")
    return message


async def read_unary(request: Request) -> dict[str, Any]:
    """A unary call's request message."""
    media = request.headers.get("content-type", JSON).split(";", 1)[0].strip().lower()
    if media != JSON:
        raise ConnectError("unimplemented", f"only the JSON codec is served, not {media!r}")
    return _parse(await _body(request))


def _unwrap(data: bytes, at: int = 0) -> tuple[dict[str, Any] | None, int]:
    """The envelope at ``at`` (None: not whole yet) and where the next one starts."""
    if len(data) - at < _HEADER.size:
        return None, at
    flags, length = _HEADER.unpack_from(data, at)
    if length > MAX_MESSAGE:
        raise ConnectError("resource_exhausted", f"a message may be at most {MAX_MESSAGE} bytes")
    if flags & COMPRESSED:
        raise ConnectError("unimplemented", "compressed messages are not served")
    end = at + _HEADER.size + length
    if len(data) < end:
        return None, at
    if flags & END_STREAM:
        return {}, end  # a client's end of stream: nothing more follows
    return _parse(data[at + _HEADER.size : end]), end


async def read_stream_request(request: Request) -> dict[str, Any]:
    """A server stream's one request message (enveloped)."""
    _check_stream_media(request)
    message, _ = _unwrap(await _body(request))
    if message is None:
        raise ConnectError("invalid_argument", "the request envelope is incomplete")
    return message


async def read_client_stream(request: Request) -> AsyncIterator[dict[str, Any]]:
    """A client stream's messages, as they arrive."""
    _check_stream_media(request)
    pending = b""
    async for chunk in request.stream():
        pending += chunk
        while True:
            message, end = _unwrap(pending)
            if message is None:
                if len(pending) > MAX_MESSAGE + _HEADER.size:
                    raise ConnectError("resource_exhausted", "a message is too large")
                break
            pending = pending[end:]
            yield message
    if pending:
        raise ConnectError("invalid_argument", "the stream ended inside an envelope")


def _check_stream_media(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != STREAM_JSON:
        raise ConnectError("unimplemented", f"only the JSON codec is served, not {media!r}")


def stream_response(messages: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """A server stream: each message enveloped; an error raised by ``messages`` ends the
    stream as Connect says (in the last envelope, the status staying 200)."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for message in messages:
                yield envelope(message)
        except Exception as exc:  # the client reads it in the end-of-stream message
            yield end_of_stream(exc)
            return
        yield end_of_stream()

    return StreamingResponse(body(), media_type=STREAM_JSON)


Handler = Callable[[Request], Awaitable[Response]]


def unary(handler: Callable[[Request], Awaitable[dict[str, Any]]]) -> Handler:
    """A unary procedure: its message or its error, answered as Connect does."""

    async def endpoint(request: Request) -> Response:
        try:
            return unary_response(await handler(request))
        except (ConnectError, SandlotError) as exc:
            return error_response(exc)

    return endpoint


def server_stream(
    handler: Callable[[Request, dict[str, Any]], AsyncIterator[dict[str, Any]]],
) -> Handler:
    """A server-streaming procedure: ``handler(request, message)`` yields the messages;
    every error, also one before the first message, ends the stream as Connect says."""

    async def endpoint(request: Request) -> Response:
        try:
            message = await read_stream_request(request)
        except (ConnectError, SandlotError) as exc:
            return _failed_stream(exc)
        return stream_response(handler(request, message))

    return endpoint


def _failed_stream(exc: BaseException) -> Response:
    return Response(end_of_stream(exc), media_type=STREAM_JSON)
