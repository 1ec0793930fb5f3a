"""``sandlot cp``: files and folders between this host and a sandbox, as ``docker cp`` does;
``ID:/path`` names the sandbox side, ``-`` our stdin or stdout.

Folders go through the SDK's files API entry by entry (a listing, then a read or write per
file), so nothing is needed in the sandbox beyond its agent. What comes out of a sandbox is
hostile: names are checked to stay inside the target folder, files are never written through
a link, links are made last, and set-id bits are dropped.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import FileNotFoundInSandboxError, SandlotError
from ._common import UsageError, note

if TYPE_CHECKING:
    from ..models import EntryInfo

MAX_DEPTH = 64  # folder levels listed in one call (a server's limit)
MAX_ENTRIES = 1_000_000  # entries copied from one folder at most
MODE_BITS = 0o777  # what of a mode is copied (no set-id or sticky bits)


def cp(
    src: Annotated[
        str, typer.Argument(metavar="SRC", help="ID:/path in a sandbox, a local path, or -.")
    ],
    dst: Annotated[
        str, typer.Argument(metavar="DST", help="ID:/path in a sandbox, a local path, or -.")
    ],
) -> None:
    """Copy a file or folder between this host and a sandbox (as docker cp).

    One side is ID:/absolute/path. A folder is copied with its content; an existing folder
    as DST receives SRC inside it. '-' as SRC is stdin (one file's content); as DST, stdout
    (a file's content, or a folder as a tar stream).

    Examples: sandlot cp ./src ID:/workspace; sandlot cp ID:/workspace/out.csv .
    """
    src_id, src_path = _side(src)
    dst_id, dst_path = _side(dst)
    if src_id is not None and dst_id is not None:
        raise UsageError("copy between this host and a sandbox: only one side may be ID:/path")
    if src_id is None and dst_id is None:
        raise UsageError("one side must be in a sandbox: ID:/path (see `sandlot ls`)")

    from ..sdk import Sandbox

    sandbox_id = src_id if src_id is not None else dst_id
    assert sandbox_id is not None
    sandbox = Sandbox.connect(sandbox_id)
    try:
        if dst_id is not None:
            _upload(sandbox, src_path, dst_path)
        else:
            _download(sandbox, src_path, dst_path)
    finally:
        try:
            sandbox.close()
        except Exception:
            pass


def _side(arg: str) -> tuple[str | None, str]:
    """``(sandbox id, absolute path)`` for ``ID:/path``; ``(None, arg)`` for a local path
    (a colon after a slash is part of a local name: ``./a:b``)."""
    head, sep, tail = arg.partition(":")
    if not sep or not head or "/" in head or arg == "-":
        if not arg:
            raise UsageError("an empty path")
        return None, arg
    if not tail.startswith("/"):
        raise UsageError(f"{arg!r}: the sandbox side needs an absolute path (ID:/path)")
    return head, tail


def _join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _remote_stat(sandbox: Any, path: str) -> EntryInfo | None:
    try:
        return sandbox.files.stat(path.rstrip("/") or "/")
    except FileNotFoundInSandboxError:
        return None


# -- this host -> the sandbox -----------------------------------------------------------------


def _upload(sandbox: Any, src: str, dst: str) -> None:
    where = f"sandbox {sandbox.id}"
    target = _remote_stat(sandbox, dst)
    if src == "-":
        if (target is not None and target.type == "dir") or dst.endswith("/"):
            raise UsageError(f"{dst} in {where} is a folder: give the file's path for stdin")
        data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        sandbox.files.write(dst, data)
        return
    try:
        st = os.stat(src)
    except OSError as exc:
        raise UsageError(f"cannot read {src}: {exc.strerror or exc}") from None
    contents = stat.S_ISDIR(st.st_mode) and src.endswith("/.")
    if (target is not None and target.type == "dir" and not contents) or dst.endswith("/"):
        dst = _join(dst, _base(os.path.abspath(src)))
        target = _remote_stat(sandbox, dst)
    if not stat.S_ISDIR(st.st_mode):
        if target is not None and target.type == "dir":
            raise UsageError(f"{dst} in {where} is a folder; {src} is a file")
        sandbox.files.write(dst, _read_local(src), mode=st.st_mode & MODE_BITS)
        return
    if target is not None and target.type != "dir":
        raise UsageError(f"{dst} in {where} is not a folder; {src} is one")
    _upload_tree(sandbox, src, dst)


def _read_local(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _upload_tree(sandbox: Any, src: str, dst: str) -> None:
    sandbox.files.make_dir(dst)
    for folder, dirs, files in os.walk(src):
        rel = os.path.relpath(folder, src)
        here = dst if rel == "." else _join(dst, rel.replace(os.sep, "/"))
        for name in sorted(dirs + files):
            local = os.path.join(folder, name)
            remote = _join(here, name)
            st = os.lstat(local)
            if stat.S_ISLNK(st.st_mode):
                _remote_link(sandbox, os.readlink(local), remote)
            elif stat.S_ISDIR(st.st_mode):
                sandbox.files.make_dir(remote)
            elif stat.S_ISREG(st.st_mode):
                sandbox.files.write(remote, _read_local(local), mode=st.st_mode & MODE_BITS)
            else:
                note(f"skipped {local}: not a file, folder or link")
        dirs.sort()


def _remote_link(sandbox: Any, target: str, path: str) -> None:
    """A symbolic link in the sandbox (the files API has no links: ``ln`` there makes it)."""
    result = sandbox.commands.run(["ln", "-sfn", target, path], timeout=30)
    if result.exit_code != 0:
        note(f"skipped link {path} -> {target}: {result.stderr.strip() or 'ln failed'}")


# -- the sandbox -> this host -----------------------------------------------------------------


def _download(sandbox: Any, src: str, dst: str) -> None:
    entry = _remote_stat(sandbox, src)
    if entry is None:
        raise UsageError(f"no such file or folder in sandbox {sandbox.id}: {src}")
    if entry.type not in ("file", "dir"):
        raise UsageError(f"{src} in sandbox {sandbox.id} is a {entry.type}, not a file or folder")
    if dst == "-":
        out = sys.stdout.buffer
        if entry.type == "file":
            out.write(sandbox.files.read(src, "bytes"))
        else:
            _tar_tree(sandbox, src, out)
        out.flush()
        return
    contents = entry.type == "dir" and (src.endswith("/.") or src.rstrip("/") == "")
    if (os.path.isdir(dst) and not contents) or dst.endswith(("/", os.sep)):
        dst = os.path.join(dst, _base(src) or "root")
    if entry.type == "file":
        if os.path.isdir(dst):
            raise UsageError(f"{dst} is a folder; {src} in sandbox {sandbox.id} is a file")
        _make_parents(dst)
        _write_local(dst, sandbox.files.read(src, "bytes"), entry.mode, follow=True)
        return
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise UsageError(f"{dst} is not a folder; {src} in sandbox {sandbox.id} is one")
    _download_tree(sandbox, src, dst)


def _make_parents(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot make {parent}: {exc.strerror or exc}") from None


def _write_local(path: str, data: bytes, mode: int, *, follow: bool = False) -> None:
    """Write a file; a link at ``path`` is followed only if ``follow`` (the user named the
    path, not the sandbox)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, mode & MODE_BITS or 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _entries(sandbox: Any, src: str) -> list[tuple[str, EntryInfo]]:
    """The folder's entries below ``src``, parents first, each with its path relative to it,
    checked: the sandbox chose these names, so none may climb out or hide a separator.
    Listed MAX_DEPTH levels at a time (a server lists no deeper in one call)."""
    found: list[tuple[str, EntryInfo]] = []
    pending = [(src.rstrip("/") or "/", "")]
    while pending:
        folder, above = pending.pop()
        prefix = folder.rstrip("/") + "/"
        for entry in sandbox.files.list(folder, depth=MAX_DEPTH):
            rel = entry.path[len(prefix) :] if entry.path.startswith(prefix) else ""
            parts = rel.split("/")
            if not rel or any(part in ("", ".", "..") or "\0" in part for part in parts):
                raise SandlotError(f"the sandbox listed an entry outside {src}: {entry.path!r}")
            found.append((f"{above}/{rel}" if above else rel, entry))
            if entry.type == "dir" and len(parts) == MAX_DEPTH:
                pending.append((entry.path, found[-1][0]))
        if len(found) > MAX_ENTRIES:
            raise SandlotError(f"{src} holds more than {MAX_ENTRIES} entries: copy less at once")
    return found


def _download_tree(sandbox: Any, src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    folders = {""}  # relative folders made (or found) here as real folders
    links = []
    for rel, entry in _entries(sandbox, src):
        parent = rel.rpartition("/")[0]
        if parent not in folders:  # under a link or a skipped entry: the sandbox lied
            raise SandlotError(f"the sandbox listed {entry.path!r} outside a folder it listed")
        local = os.path.join(dst, *rel.split("/"))
        if entry.type == "dir":
            try:
                os.mkdir(local, 0o755)
            except FileExistsError:
                pass
            if not stat.S_ISDIR(os.lstat(local).st_mode):
                raise UsageError(f"{local} exists and is not a folder")
            folders.add(rel)
        elif entry.type == "file":
            _write_local(local, sandbox.files.read(entry.path, "bytes"), entry.mode)
        elif entry.type == "symlink" and entry.symlink_target:
            links.append((local, entry.symlink_target))
        else:
            note(f"skipped {entry.path}: not a file, folder or link")
    for local, target in links:  # last, so that no file above was written through one
        try:
            os.symlink(target, local)
        except OSError as exc:
            note(f"skipped link {local} -> {target}: {exc.strerror or exc}")


def _tar_tree(sandbox: Any, src: str, out: Any) -> None:
    """The folder as a tar stream on ``out``, its entries under the folder's own name."""
    import io
    import tarfile

    top = _base(src) or "root"
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for rel, entry in [("", None), *_entries(sandbox, src)]:
            info = tarfile.TarInfo(f"{top}/{rel}".rstrip("/"))
            info.mtime = int(entry.mtime) if entry is not None else 0
            info.mode = (entry.mode if entry is not None else 0o755) & MODE_BITS
            if entry is None or entry.type == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.type == "file":
                data = sandbox.files.read(entry.path, "bytes")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif entry.type == "symlink" and entry.symlink_target:
                info.type = tarfile.SYMTYPE
                info.linkname = entry.symlink_target
                tar.addfile(info)
