"""envd's ``filesystem.Filesystem`` Connect service over sandlot's file operations (the
agent's ``stat``/``list``/``mkdir``/``rename``/``remove``, as ``/v1/sandboxes/{id}/files``
uses them).

Paths: relative ones are under E2B's home, ``/home/user``. Entries carry envd's fields:
``mode`` is the permission bits, ``permissions`` as Go prints a mode (``drwxr-xr-x``,
``Lrwxrwxrwx``), ``owner``/``group`` the sandbox's one user (``user``).

Watching (``WatchDir``, the async SDK's stream; ``CreateWatcher``/``GetWatcherEvents``, the
sync SDK's polled watcher) compares listings of the folder taken every :data:`POLL`
seconds: no watch runs inside the sandbox. An entry that appears is CREATE, one that goes
REMOVE, a file whose size or modification time changed WRITE, a changed mode CHMOD; a
remove and a create of the same entry in one interval are RENAME (of the old name) and
CREATE. Changes that cancel out within one interval are not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ...errors import (
    IsADirectoryInSandboxError,
    NoSpaceError,
    NotADirectoryInSandboxError,
    SandlotError,
)
from .access import SandboxCall, sandbox_call
from .connect import ConnectError, read_unary, server_stream, unary

HOME = "/home/user"
MAX_PATH = 4096
MAX_DEPTH = 64  # the deepest listing (sandlot's own API has the same limit)
POLL = 0.2  # seconds between two listings of a watched folder
KEEPALIVE = 15.0  # seconds of quiet before a WatchDir stream says it is alive
MAX_EVENTS = 10_000  # events a polled watcher keeps until read (the oldest go first)
MAX_WATCHERS = 8  # watches per sandbox, streamed or polled: each lists its folder
WATCHER_IDLE = 120.0  # a polled watcher not read for this long is removed
OWNER = "user"
FILE_TYPES = {
    "file": "FILE_TYPE_FILE",
    "dir": "FILE_TYPE_DIRECTORY",
    "symlink": "FILE_TYPE_SYMLINK",
}
TYPE_LETTERS = {"dir": "d", "symlink": "L", "file": "-"}


def resolve(path: Any) -> str:
    """A request's path as an absolute, clean path of the sandbox: relative to the home."""
    if not isinstance(path, str) or len(path) > MAX_PATH or "\0" in path:
        raise ConnectError("invalid_argument", "path must be a string without NUL bytes")
    if path == "~" or path.startswith("~/"):
        path = HOME + path[1:]
    elif not path.startswith("/"):
        path = posixpath.join(HOME, path)
    clean = posixpath.normpath(path)
    return "/" + clean.lstrip("/")


def permissions(kind: str, mode: int) -> str:
    letters = "".join(char if mode & (1 << (8 - i)) else "-" for i, char in enumerate("rwxrwxrwx"))
    return TYPE_LETTERS.get(kind, "?") + letters


def rfc3339(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z")


def entry_info(entry: dict[str, Any]) -> dict[str, Any]:
    """sandlot's entry (``EntryInfo`` of sandlot.models) as envd's, in Connect's JSON."""
    kind = str(entry["type"])
    mode = int(entry["mode"]) & 0o777
    info: dict[str, Any] = {
        "name": entry["name"],
        "type": FILE_TYPES.get(kind, "FILE_TYPE_UNSPECIFIED"),
        "path": entry["path"],
        "size": str(entry["size"]),
        "mode": mode,
        "permissions": permissions(kind, mode),
        "owner": OWNER,
        "group": OWNER,
        "modifiedTime": rfc3339(float(entry["mtime"])),
    }
    if kind == "symlink":
        info["isSymlink"] = True
        if entry.get("symlink_target") is not None:
            info["symlinkTarget"] = entry["symlink_target"]
    return info


async def _op(call: SandboxCall, op: str, **args: Any) -> Any:
    """One agent operation; file errors as envd answers them."""
    try:
        return await call.state.call(call.principal, call.sandbox_id, op, **args)
    except (NotADirectoryInSandboxError, IsADirectoryInSandboxError) as exc:
        raise ConnectError("invalid_argument", str(exc)) from None
    except NoSpaceError as exc:
        raise ConnectError("resource_exhausted", str(exc)) from None


async def _request(request: Request) -> tuple[SandboxCall, dict[str, Any]]:
    call = await sandbox_call(request)
    return call, await read_unary(request)


async def stat(request: Request) -> dict[str, Any]:
    call, message = await _request(request)
    return {"entry": entry_info(await _op(call, "stat", path=resolve(message.get("path", ""))))}


def _depth(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # uint32 may come as a string in Connect's JSON
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConnectError("invalid_argument", "depth must be a non-negative integer")
    return min(max(value, 1), MAX_DEPTH)


async def list_dir(request: Request) -> dict[str, Any]:
    call, message = await _request(request)
    path, depth = resolve(message.get("path", "")), _depth(message.get("depth"))
    answer = await _op(call, "list", path=path, depth=depth)
    return {"entries": [entry_info(entry) for entry in answer["entries"]]}


async def make_dir(request: Request) -> dict[str, Any]:
    call, message = await _request(request)
    path = resolve(message.get("path", ""))
    answer = await _op(call, "mkdir", path=path, parents=True, exist_ok=True)
    if not answer["created"]:
        raise ConnectError("already_exists", f"directory {path} already exists")
    return {"entry": entry_info(await _op(call, "stat", path=path))}


async def move(request: Request) -> dict[str, Any]:
    call, message = await _request(request)
    source = resolve(message.get("source", ""))
    destination = resolve(message.get("destination", ""))
    parent = posixpath.dirname(destination)
    await _op(call, "mkdir", path=parent, parents=True, exist_ok=True)  # as envd does
    entry = await _op(call, "rename", src=source, dst=destination, overwrite=True)
    return {"entry": entry_info(entry)}


async def remove(request: Request) -> dict[str, Any]:
    call, message = await _request(request)
    await _op(call, "remove", path=resolve(message.get("path", "")), recursive=True)
    return {}


# -- watching ---------------------------------------------------------------------------------

# What a listing tells of an entry, kept between two listings: (type, size, mtime, mode).
Identity = tuple[str, int, float, int]
_active: dict[str, int] = {}  # watches (streams and polled watchers) per sandbox


def _identity(entry: dict[str, Any]) -> Identity:
    return (entry["type"], entry["size"], entry["mtime"], entry["mode"])


@dataclass
class _Watch:
    """One watched folder: what its last listing held. Counted against its sandbox's
    :data:`MAX_WATCHERS` until :meth:`close`."""

    call: SandboxCall
    root: str
    recursive: bool
    include_entry: bool
    previous: dict[str, Identity] = field(default_factory=dict)
    closed: bool = False

    @classmethod
    async def start(cls, call: SandboxCall, message: dict[str, Any]) -> _Watch:
        root = resolve(message.get("path", ""))
        recursive, include = message.get("recursive") is True, message.get("includeEntry") is True
        if _active.get(call.sandbox_id, 0) >= MAX_WATCHERS:
            raise ConnectError("resource_exhausted", f"at most {MAX_WATCHERS} watches per sandbox")
        _active[call.sandbox_id] = _active.get(call.sandbox_id, 0) + 1
        watch = cls(call, root, recursive, include)
        try:
            stat = await _op(call, "stat", path=root)
            if stat["type"] != "dir":
                raise ConnectError("invalid_argument", f"{root} is not a directory")
            watch.previous = {path: _identity(e) for path, e in (await watch.listing()).items()}
        except BaseException:
            watch.close()
            raise
        return watch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            left = _active.get(self.call.sandbox_id, 1) - 1
            if left > 0:
                _active[self.call.sandbox_id] = left
            else:
                _active.pop(self.call.sandbox_id, None)

    async def listing(self) -> dict[str, dict[str, Any]]:
        depth = MAX_DEPTH if self.recursive else 1
        answer = await _op(self.call, "list", path=self.root, depth=depth)
        return {entry["path"]: entry for entry in answer["entries"]}

    async def changes(self) -> list[dict[str, Any]]:
        """The events between the last listing and a new one."""
        current = await self.listing()
        previous = self.previous
        self.previous = {path: _identity(e) for path, e in current.items()}
        came = {
            path: e
            for path, e in current.items()
            if path not in previous or previous[path][0] != e["type"]
        }
        moved = {_identity(e) for e in came.values()}
        events: list[dict[str, Any]] = []
        for path, old in sorted(previous.items()):
            if path not in current or path in came:
                kind = "EVENT_TYPE_RENAME" if old in moved else "EVENT_TYPE_REMOVE"
                events.append(self._event(path, kind, None))
        for path, entry in sorted(current.items()):
            if path in came:
                events.append(self._event(path, "EVENT_TYPE_CREATE", entry))
                continue
            old = previous[path]
            if entry["type"] != "dir" and old[1:3] != (entry["size"], entry["mtime"]):
                events.append(self._event(path, "EVENT_TYPE_WRITE", entry))
            if old[3] != entry["mode"]:
                events.append(self._event(path, "EVENT_TYPE_CHMOD", entry))
        return events

    def _event(self, path: str, kind: str, entry: dict[str, Any] | None) -> dict[str, Any]:
        event: dict[str, Any] = {"name": posixpath.relpath(path, self.root), "type": kind}
        if self.include_entry and entry is not None:
            event["entry"] = entry_info(entry)
        return event


async def watch_dir(request: Request, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The async SDK's watch: a start event, then the events as they are seen."""
    call = await sandbox_call(request)
    watch = await _Watch.start(call, message)
    try:
        yield {"start": {}}
        quiet = time.monotonic()
        while True:
            await asyncio.sleep(POLL)
            events = await watch.changes()
            for event in events:
                yield {"filesystem": event}
            if events:
                quiet = time.monotonic()
            elif time.monotonic() - quiet > KEEPALIVE:
                quiet = time.monotonic()
                yield {"keepalive": {}}
    finally:
        watch.close()


@dataclass
class _Watcher:
    """A polled watcher (the sync SDK's): a task lists the folder while someone reads."""

    watch: _Watch
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    read_at: float = field(default_factory=time.monotonic)
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    async def run(self, watcher_id: str) -> None:
        try:
            while time.monotonic() - self.read_at < WATCHER_IDLE:
                await asyncio.sleep(POLL)
                if self.error is None:
                    try:
                        self.events.extend(await self.watch.changes())
                    except (ConnectError, SandlotError) as exc:
                        self.error = exc  # the next read answers it
        finally:
            _WATCHERS.pop(watcher_id, None)
            self.watch.close()


_WATCHERS: dict[str, _Watcher] = {}


def _watcher(call: SandboxCall, message: dict[str, Any]) -> tuple[str, _Watcher]:
    watcher_id = message.get("watcherId")
    watcher = _WATCHERS.get(watcher_id) if isinstance(watcher_id, str) else None
    # Another sandbox's watcher is as unknown as one that never was.
    if watcher is None or watcher.watch.call.sandbox_id != call.sandbox_id:
        raise ConnectError("not_found", "no such watcher")
    assert isinstance(watcher_id, str)
    return watcher_id, watcher


async def create_watcher(request: Request) -> dict[str, Any]:
    call, message = await _request(request)
    watcher = _Watcher(await _Watch.start(call, message))
    watcher_id = secrets.token_urlsafe(16)
    _WATCHERS[watcher_id] = watcher
    watcher.task = asyncio.get_running_loop().create_task(watcher.run(watcher_id))
    return {"watcherId": watcher_id}


async def get_watcher_events(request: Request) -> dict[str, Any]:
    call, message = await _request(request)
    watcher_id, watcher = _watcher(call, message)
    watcher.read_at = time.monotonic()
    events = list(watcher.events)
    watcher.events.clear()
    if watcher.error is not None and not events:
        await _drop(watcher_id, watcher)
        raise watcher.error
    return {"events": events}


async def remove_watcher(request: Request) -> dict[str, Any]:
    call, message = await _request(request)
    await _drop(*_watcher(call, message))
    return {}


async def _drop(watcher_id: str, watcher: _Watcher) -> None:
    _WATCHERS.pop(watcher_id, None)
    if watcher.task is not None:
        watcher.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher.task


_PREFIX = "/filesystem.Filesystem/"
routes: list[Route] = [
    Route(_PREFIX + "Stat", unary(stat), methods=["POST"]),
    Route(_PREFIX + "ListDir", unary(list_dir), methods=["POST"]),
    Route(_PREFIX + "MakeDir", unary(make_dir), methods=["POST"]),
    Route(_PREFIX + "Move", unary(move), methods=["POST"]),
    Route(_PREFIX + "Remove", unary(remove), methods=["POST"]),
    Route(_PREFIX + "WatchDir", server_stream(watch_dir), methods=["POST"]),
    Route(_PREFIX + "CreateWatcher", unary(create_watcher), methods=["POST"]),
    Route(_PREFIX + "GetWatcherEvents", unary(get_watcher_events), methods=["POST"]),
    Route(_PREFIX + "RemoveWatcher", unary(remove_watcher), methods=["POST"]),
]
