"""envd's ``/files``: ``GET`` a file's bytes, ``POST`` files into the sandbox, streamed
both ways through sandlot's own file transfer (:mod:`sandlot.server.api_files`: the agent's
``read``/``write`` under the channel's credit), never whole in the server.

Uploads come as ``application/octet-stream`` (one file, at ``?path=``; gzip accepted) or
``multipart/form-data`` (each part a file at its ``filename``, else at ``?path=``), parsed
as it arrives by python-multipart's push parser, with bounds on the parts and their headers.
Errors are envd's JSON, ``{"code": status, "message"}``, which the SDKs turn into their
exceptions (404: not found, 400: invalid argument, 401: authentication, 507: not enough space).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ...errors import (
    AuthenticationError,
    FileNotFoundInSandboxError,
    FileTooLargeError,
    InvalidArgumentError,
    IsADirectoryInSandboxError,
    NoSpaceError,
    NotADirectoryInSandboxError,
    NotFoundError,
    PermissionDeniedError,
    SandboxClosedError,
    SandboxNotFoundError,
    SandlotError,
)
from ..api_files import MAX_FILE, download_body, exact_path, upload
from ..http_errors import most_specific
from .access import SandboxCall, sandbox_call
from .connect import ConnectError
from .filesystem import resolve

# The parser logs a warning for every malformed body: a client could fill the server's log.
# The client gets the error instead.
logging.getLogger("python_multipart").setLevel(logging.ERROR)

MAX_PARTS = 1000  # files in one multipart upload
MAX_PART_HEAD = 16 * 1024  # one part's headers
CHUNK = 256 * 1024  # the most one step of gunzip gives
# envd's statuses for sandlot's errors; the most specific class in the MRO wins.
STATUS: dict[type[BaseException], int] = {
    InvalidArgumentError: 400,
    ConnectError: 400,
    IsADirectoryInSandboxError: 400,
    NotADirectoryInSandboxError: 400,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    NotFoundError: 404,
    FileNotFoundInSandboxError: 404,
    FileTooLargeError: 413,
    NoSpaceError: 507,
    SandboxNotFoundError: 502,  # as E2B's proxy answers for a sandbox it does not know
    SandboxClosedError: 502,
}


def envd_error(exc: BaseException) -> Response:
    status = most_specific(STATUS, exc, 500)
    message = str(exc) if isinstance(exc, (SandlotError, ConnectError)) else "internal error"
    if status == 502:
        message = f"The sandbox was not found: {message}"  # the SDK's SandboxNotRunning
    body = json.dumps({"code": status, "message": message})
    return Response(body, status_code=status, media_type="application/json")


def _query_path(request: Request) -> str | None:
    value = request.query_params.get("path")
    return resolve(exact_path(request, value)) if value else None  # non-UTF-8 names kept


async def download(request: Request) -> Response:
    try:
        call = await sandbox_call(request)
        path = _query_path(request)
        if path is None:
            raise InvalidArgumentError("path is required")
        reading = call.served.live.channel.open("read", path=path, max_bytes=MAX_FILE)
        try:
            first = await reading.receive()  # no such file, ...: raised here
        except BaseException:
            reading.cancel()
            raise
    except (SandlotError, ConnectError) as exc:
        return envd_error(exc)
    return StreamingResponse(download_body(reading, first), media_type="application/octet-stream")


async def upload_files(request: Request) -> Response:
    try:
        call = await sandbox_call(request)
        if any(name.lower().startswith("x-metadata-") for name in request.headers):
            raise InvalidArgumentError("file metadata (X-Metadata-* headers) is not supported")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FILE:
            raise FileTooLargeError(f"an upload may be at most {MAX_FILE} bytes")
        media = request.headers.get("content-type", "")
        if media.split(";", 1)[0].strip().lower() == "multipart/form-data":
            written = await _multipart(call, request, media)
        else:
            written = [await _octet_stream(call, request)]
    except (SandlotError, ConnectError) as exc:
        return envd_error(exc)
    except ClientDisconnect:  # the client left mid-upload: the file was not written
        return Response(status_code=499)
    return Response(json.dumps(written), media_type="application/json")


def _written(entry: dict[str, Any]) -> dict[str, Any]:
    return {"name": entry["name"], "type": "dir" if entry["type"] == "dir" else "file",
            "path": entry["path"]}  # fmt: skip


async def _octet_stream(call: SandboxCall, request: Request) -> dict[str, Any]:
    path = _query_path(request)
    if path is None:
        raise InvalidArgumentError("path is required for an octet-stream upload")
    chunks: AsyncIterator[bytes] = request.stream()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        chunks = _gunzip(chunks)
    elif encoding not in ("", "identity"):
        raise InvalidArgumentError(f"content encoding {encoding!r} is not supported")
    args = {"path": path, "max_bytes": MAX_FILE}
    return _written(await upload(call.served, args, chunks))


async def _gunzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Decompressed as it arrives, a step at a time (a small bomb never becomes a big
    buffer: the file's bound and the disk's stop it in the sandbox)."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        async for chunk in chunks:
            data = chunk
            while data:
                yield inflate.decompress(data, CHUNK)
                data = inflate.unconsumed_tail
        if not inflate.eof:
            raise InvalidArgumentError("the gzip body ends early")
    except zlib.error:
        raise InvalidArgumentError("the body is not valid gzip") from None


# -- multipart/form-data ----------------------------------------------------------------------


async def _multipart(call: SandboxCall, request: Request, media: str) -> list[dict[str, Any]]:
    boundary = parse_options_header(media)[1].get(b"boundary", b"")
    if not 0 < len(boundary) <= 200:
        raise InvalidArgumentError("the multipart body has no boundary")
    parts = _Parts(request.stream(), boundary)
    fallback = _query_path(request)
    written: list[dict[str, Any]] = []
    while (disposition := await parts.next_part()) is not None:
        name = _filename(disposition)
        path = resolve(name) if name else fallback
        if path is None:
            raise InvalidArgumentError("a part has no filename and no path was given")
        args = {"path": path, "max_bytes": MAX_FILE}
        written.append(_written(await upload(call.served, args, parts.body())))
    if not written:
        raise InvalidArgumentError("the upload holds no file")
    return written


def _filename(disposition: bytes) -> str | None:
    """A part's ``filename`` from its Content-Disposition (raw UTF-8, as browsers and httpx
    send it: a quote comes as ``%22``). ``filename*`` is ignored, as RFC 7578 says."""
    options = parse_options_header(disposition.decode("latin-1"))[1]
    name = options.get(b"filename")
    return name.decode("utf-8", "surrogateescape").replace("%22", '"') if name else None


class _Parts:
    """A multipart body read as it arrives, through python-multipart's push parser: its
    callbacks queue events that :meth:`next_part` and :meth:`body` take in order, and more
    of the body is read only once they are taken (the sandbox's pace is the client's)."""

    def __init__(self, stream: AsyncIterator[bytes], boundary: bytes) -> None:
        self.stream = stream
        # ("part", Content-Disposition), ("data", content), ("end", b""), ("done", b"")
        self.events: deque[tuple[str, bytes]] = deque()
        self.count = 0
        self.head = 0  # the current part's header bytes
        self.field = bytearray()
        self.value = bytearray()
        self.disposition = b""
        self.in_body = False
        self.done = False
        put = self.events.append
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._head(self.field, data[start:end]),
                "on_header_value": lambda data, start, end: self._head(self.value, data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": lambda: put(("part", self.disposition)),
                "on_part_data": lambda data, start, end: put(("data", data[start:end])),
                "on_part_end": lambda: put(("end", b"")),
                "on_end": lambda: put(("done", b"")),
            },
            max_header_size=MAX_PART_HEAD,  # the bound is ours, on all of a part's headers
        )

    def _part_begin(self) -> None:
        self.head = 0
        self.disposition = b""

    def _head(self, into: bytearray, data: bytes) -> None:
        self.head += len(data)
        if self.head > MAX_PART_HEAD:
            raise InvalidArgumentError("a part's headers are too long")
        into += data

    def _header_end(self) -> None:
        if self.field.strip().lower() == b"content-disposition":
            self.disposition = bytes(self.value)
        self.field.clear()
        self.value.clear()

    async def _next(self) -> tuple[str, bytes]:
        while not self.events:
            chunk = await anext(self.stream, None)
            if chunk is None:
                raise InvalidArgumentError("the multipart body ends early")
            try:
                self.parser.write(chunk)
            except FormParserError as exc:
                raise InvalidArgumentError(f"the multipart body is malformed: {exc}") from None
        return self.events.popleft()

    async def next_part(self) -> bytes | None:
        """The next part's Content-Disposition (b"" without one; None after the last part)."""
        if self.in_body:
            async for _ in self.body():  # a part its reader left: skipped
                pass
        while not self.done:
            kind, data = await self._next()
            if kind == "part":
                # Counted as taken (not as parsed): the parts before the bound are written.
                self.count += 1
                if self.count > MAX_PARTS:
                    raise InvalidArgumentError(f"at most {MAX_PARTS} files in one upload")
                self.in_body = True
                return data
            self.done = kind == "done"
        return None

    async def body(self) -> AsyncIterator[bytes]:
        """The current part's content, in the pieces the parser gives."""
        while self.in_body:
            kind, data = await self._next()
            if kind == "end":
                self.in_body = False
            elif data:
                yield data


routes: list[Route] = [
    Route("/files", download, methods=["GET"]),
    Route("/files", upload_files, methods=["POST"]),
]
