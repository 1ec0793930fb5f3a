"""``sb.files``: read, write, list and manage files inside the sandbox."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal, overload

from ..agent import protocol as p
from ..errors import FileTooLargeError, InvalidArgumentError
from ..models import EntryInfo

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox

MAX_FILE_BYTES = 256 * 1024 * 1024  # default cap for one read or write


def _path(path: object, name: str = "path") -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgumentError(
            f"{name} must be an absolute path inside the sandbox, got {path!r}"
        )
    if "\0" in path:
        raise InvalidArgumentError(f"{name} contains a NUL byte")
    return path


def _limit(max_bytes: object) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise InvalidArgumentError("max_bytes must be a non-negative integer")
    return max_bytes


class AsyncFiles:
    """``sb.files``: read, write, list and manage files inside the sandbox (absolute paths)."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox

    async def _call(self, op: str, **args: Any) -> Any:
        return await self._sandbox._channel.call(op, **args)

    @overload
    async def read(
        self, path: str, format: Literal["text"] = "text", *, max_bytes: int = ...
    ) -> str: ...

    @overload
    async def read(self, path: str, format: Literal["bytes"], *, max_bytes: int = ...) -> bytes: ...

    async def read(
        self,
        path: str,
        format: Literal["text", "bytes"] = "text",
        *,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> str | bytes:
        """A file's content: text (UTF-8, undecodable bytes replaced) or bytes."""
        if format not in ("text", "bytes"):
            raise InvalidArgumentError('format must be "text" or "bytes"')
        request = self._sandbox._channel.open("read", path=_path(path), max_bytes=_limit(max_bytes))
        chunks = []
        try:
            while True:
                kind, _, payload = await request.receive()
                if kind == p.DATA:
                    chunks.append(payload)
                    request.consumed(len(payload))
                elif kind == p.END:
                    break
        except BaseException:
            request.cancel()
            raise
        data = b"".join(chunks)
        return data.decode("utf-8", "replace") if format == "text" else data

    async def write(
        self,
        path: str,
        data: str | bytes,
        *,
        mode: int | None = None,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> EntryInfo:
        """Write a whole file atomically (parents are created). Returns its new entry."""
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError("data must be str or bytes")
        if len(data) > _limit(max_bytes):
            raise FileTooLargeError(
                f"{len(data)} bytes is over the {max_bytes}-byte limit (raise max_bytes)"
            )
        if mode is not None and (not isinstance(mode, int) or not 0 <= mode <= 0o7777):
            raise InvalidArgumentError("mode must be an integer permission like 0o644")
        args: dict[str, Any] = {"path": _path(path), "max_bytes": max_bytes}
        if mode is not None:
            args["mode"] = mode
        request = self._sandbox._channel.open("write", **args)
        try:
            await request.send_data(bytes(data))
            request.send_eof()
            while True:
                kind, _, payload = await request.receive()
                if kind == p.END:
                    return EntryInfo.model_validate(json.loads(payload))
        except BaseException:
            request.cancel()
            raise

    async def list(self, path: str, *, depth: int = 1) -> list[EntryInfo]:
        """Entries of a folder, sorted by name; ``depth`` > 1 descends into sub-folders."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InvalidArgumentError("depth must be a positive integer")
        answer = await self._call("list", path=_path(path), depth=depth)
        return [EntryInfo.model_validate(e) for e in answer["entries"]]

    async def stat(self, path: str) -> EntryInfo:
        """The entry at ``path`` (a file, folder or link). Raises if there is none."""
        return EntryInfo.model_validate(await self._call("stat", path=_path(path)))

    async def exists(self, path: str) -> bool:
        """Whether anything exists at ``path``."""
        return bool((await self._call("exists", path=_path(path)))["exists"])

    async def make_dir(self, path: str, *, parents: bool = True, exist_ok: bool = True) -> bool:
        """Create a folder. True if it was created, False if it already existed."""
        answer = await self._call("mkdir", path=_path(path), parents=parents, exist_ok=exist_ok)
        return bool(answer["created"])

    async def remove(self, path: str, *, recursive: bool = True) -> None:
        """Remove a file, or a folder (with its content unless ``recursive=False``)."""
        await self._call("remove", path=_path(path), recursive=recursive)

    async def rename(self, src: str, dst: str, *, overwrite: bool = False) -> EntryInfo:
        """Move ``src`` to ``dst``; an existing ``dst`` is replaced only with ``overwrite``.
        Returns the moved entry."""
        answer = await self._call(
            "rename", src=_path(src, "src"), dst=_path(dst, "dst"), overwrite=overwrite
        )
        return EntryInfo.model_validate(answer)
