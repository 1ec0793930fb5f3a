"""File operations. Paths arrive absolute and are checked again here; the sandbox's own
permissions (read-only root, writable /workspace and /tmp) decide what is allowed."""

import posix

from . import protocol as p
from .errors import AgentError

CHUNK = 256 * 1024
S_IFMT = 0o170000
TYPES = {0o040000: "dir", 0o100000: "file", 0o120000: "symlink"}


def _absolute(request, key="path"):
    path = request.get(key)
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise AgentError("invalid_argument", "%s must be an absolute path" % key)
    return path


def _entry(paths, real, shown, name=None):
    st = posix.lstat(real)
    kind = TYPES.get(st.st_mode & S_IFMT, "other")
    entry = {
        "name": name if name is not None else (shown.rstrip("/").rsplit("/", 1)[-1] or "/"),
        "path": shown,
        "type": kind,
        "size": st.st_size,
        "mode": st.st_mode & 0o7777,
        "mtime": st.st_mtime,
        "symlink_target": None,
    }
    if kind == "symlink":
        entry["symlink_target"] = posix.readlink(real)
    return entry


def _join(folder, name):
    return folder + name if folder.endswith("/") else folder + "/" + name


def stat(agent, request):
    path = _absolute(request)
    return _entry(agent.paths, agent.paths.to_real(path), path)


def exists(agent, request):
    try:
        posix.lstat(agent.paths.to_real(_absolute(request)))
    except FileNotFoundError:
        return {"exists": False}
    except NotADirectoryError:
        return {"exists": False}
    return {"exists": True}


def list_dir(agent, request):
    path = _absolute(request)
    depth = request.get("depth", 1)
    if not isinstance(depth, int) or depth < 1:
        raise AgentError("invalid_argument", "depth must be a positive integer")
    entries = []
    _walk(agent, path, depth, entries)
    return {"entries": entries}


MAX_ENTRIES = 50000  # one answer stays far below the protocol's 16 MiB control-frame limit


def _walk(agent, shown, depth, entries):
    real = agent.paths.to_real(shown)
    with posix.scandir(real) as it:
        names = sorted(e.name for e in it)
    for name in names:
        child = _join(shown, name)
        try:
            entry = _entry(agent.paths, _join(real, name), child, name)
        except FileNotFoundError:
            continue  # removed while listing
        if len(entries) >= MAX_ENTRIES:
            raise AgentError(
                "invalid_argument",
                "more than %d entries: list a smaller folder or a smaller depth" % MAX_ENTRIES,
            )
        entries.append(entry)
        if depth > 1 and entry["type"] == "dir":
            try:
                _walk(agent, child, depth - 1, entries)
            except PermissionError:
                pass


def make_dir(agent, request):
    path = _absolute(request)
    real = agent.paths.to_real(path)
    parents = bool(request.get("parents", True))
    exist_ok = bool(request.get("exist_ok", True))
    created = _mkdir(real, parents, exist_ok)
    return {"created": created}


def _mkdir(real, parents, exist_ok):
    try:
        posix.mkdir(real, 0o755)
        return True
    except FileNotFoundError:
        if not parents:
            raise
        parent = real.rstrip("/").rsplit("/", 1)[0] or "/"
        _mkdir(parent, True, True)
        posix.mkdir(real, 0o755)
        return True
    except FileExistsError:
        if exist_ok and (posix.stat(real).st_mode & S_IFMT) == 0o040000:
            return False
        raise


def remove(agent, request):
    path = _absolute(request)
    real = agent.paths.to_real(path)
    if path.rstrip("/") in ("", "/workspace") and not request.get("allow_root"):
        raise AgentError("invalid_argument", "refusing to remove " + (path or "/"))
    if _mount_point(real):  # /tmp, the workspace's alias: it would empty it, then fail
        raise AgentError("invalid_argument", "refusing to remove a mount point: " + path)
    try:
        _remove(real, bool(request.get("recursive", True)))
    except AgentError as exc:
        raise AgentError(exc.code, exc.message + ": " + path) from None
    return {}


def _mount_point(real):
    try:
        st = posix.lstat(real)
        parent = posix.lstat(real.rstrip("/") + "/..")
    except OSError:
        return False  # the removal's own error says what is wrong
    if (st.st_mode & S_IFMT) != 0o040000:
        return False
    return st.st_dev != parent.st_dev or st.st_ino == parent.st_ino


def _remove(real, recursive, device=None):
    st = posix.lstat(real)
    if (st.st_mode & S_IFMT) != 0o040000:
        posix.unlink(real)
        return
    if device is not None and st.st_dev != device:
        # Another file system mounted beneath (the workspace at its alias): never emptied
        # through a folder above it (rm's --one-file-system).
        raise AgentError("invalid_argument", "refusing to remove a mount point in it")
    if recursive:
        with posix.scandir(real) as it:
            names = [e.name for e in it]
        for name in names:
            _remove(_join(real, name), True, st.st_dev)
    posix.rmdir(real)


def rename(agent, request):
    src = _absolute(request, "src")
    dst = _absolute(request, "dst")
    real_src, real_dst = agent.paths.to_real(src), agent.paths.to_real(dst)
    if not request.get("overwrite", False):
        try:
            posix.lstat(real_dst)
        except FileNotFoundError:
            pass
        else:
            raise AgentError("file_exists", "destination exists: " + dst)
    posix.rename(real_src, real_dst)
    return _entry(agent.paths, real_dst, dst)


class Download:
    """Stream a regular file to the host as DATA frames on STDOUT, under credit."""

    def __init__(self, agent, conn, rid, request):
        path = _absolute(request)
        real = agent.paths.to_real(path)
        limit = request.get("max_bytes")
        fd = posix.open(real, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK)
        try:
            st = posix.fstat(fd)
            kind = st.st_mode & S_IFMT
            if kind == 0o040000:
                raise AgentError("is_a_directory", "is a folder: " + path)
            if kind != 0o100000:
                raise AgentError("invalid_argument", "not a regular file: " + path)
            if isinstance(limit, int) and st.st_size > limit:
                raise AgentError(
                    "file_too_large",
                    "%s is %d bytes, over the %d-byte limit" % (path, st.st_size, limit),
                )
        except BaseException:
            posix.close(fd)
            raise
        self.agent, self.conn, self.rid, self.fd = agent, conn, rid, fd
        self.credit = p.WINDOW
        self.limit = limit
        self.sent = 0
        self._scheduled = False
        conn.requests[rid] = self
        conn.send_json(p.EVENT, rid, {"event": "size", "size": st.st_size})
        self._schedule()

    def _schedule(self):
        if not self._scheduled and self.fd is not None:
            self._scheduled = True
            self.agent.loop.call_soon(self._pump)

    def _pump(self):
        self._scheduled = False
        if self.fd is None or self.credit <= 0:
            return
        data = posix.read(self.fd, min(CHUNK, self.credit))
        if not data:
            self.conn.send(p.EOF, self.rid, b"", p.STDOUT)
            self.conn.send_json(p.END, self.rid, {"size": self.sent})
            self._close()
            return
        self.sent += len(data)
        if isinstance(self.limit, int) and self.sent > self.limit:  # grew while we read
            self.conn.send_json(
                p.ERROR, self.rid, {"code": "file_too_large", "message": "file grew over the limit"}
            )
            self._close()
            return
        self.credit -= len(data)
        self.conn.send(p.DATA, self.rid, data, p.STDOUT)
        self._schedule()

    def on_grant(self, stream, amount):
        self.credit += amount
        self._schedule()

    def on_data(self, stream, data):
        pass

    def on_eof(self, stream):
        pass

    def _close(self):
        if self.fd is not None:
            posix.close(self.fd)
            self.fd = None
            self.conn.requests.pop(self.rid, None)

    def cancel(self):
        self._close()

    def detach(self):
        self._close()


class Upload:
    """Receive DATA frames into a temporary file; rename it into place on EOF (atomic)."""

    def __init__(self, agent, conn, rid, request):
        path = _absolute(request)
        if path.endswith("/"):
            raise AgentError("invalid_argument", "a file path must not end with /")
        real = agent.paths.to_real(path)
        folder, name = real.rsplit("/", 1)
        folder = folder or "/"
        if request.get("parents", True):
            _mkdir(folder, True, True)
        mode = request.get("mode")
        self.mode = mode if isinstance(mode, int) else None
        try:
            if (posix.stat(real).st_mode & S_IFMT) == 0o040000:
                raise AgentError("is_a_directory", "is a folder: " + path)
            if self.mode is None:
                self.mode = posix.stat(real).st_mode & 0o7777
        except FileNotFoundError:
            pass
        self.tmp = "%s/.%s.sandlot-%d-%d" % (folder, name, posix.getpid(), rid)
        try:
            self.fd = posix.open(
                self.tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC, 0o644
            )
        except OSError as exc:  # name the file the caller asked for, not our temporary
            raise OSError(exc.errno, exc.strerror, path) from None
        self.agent, self.conn, self.rid, self.path, self.real = agent, conn, rid, path, real
        self.limit = request.get("max_bytes")
        self.size = 0
        conn.requests[rid] = self

    def on_data(self, stream, data):
        if self.fd is None:
            return
        self.size += len(data)
        try:
            if isinstance(self.limit, int) and self.size > self.limit:
                raise AgentError("file_too_large", "upload is over the %d-byte limit" % self.limit)
            view = memoryview(data)
            while view:
                view = view[posix.write(self.fd, view) :]
        except (OSError, AgentError) as exc:
            self._abort()
            self.conn.send_error(self.rid, exc)
            return
        self.conn.send(p.GRANT, self.rid, p.CREDIT.pack(len(data)), p.STDIN)

    def on_eof(self, stream):
        if self.fd is None:
            return
        try:
            if self.mode is not None:
                posix.fchmod(self.fd, self.mode)
            posix.close(self.fd)
            self.fd = None
            posix.rename(self.tmp, self.real)
        except OSError as exc:
            self._abort()
            self.conn.send_error(self.rid, exc)
            return
        self.conn.requests.pop(self.rid, None)
        self.conn.send_json(p.END, self.rid, _entry(self.agent.paths, self.real, self.path))

    def on_grant(self, stream, amount):
        pass

    def _abort(self):
        if self.fd is not None:
            posix.close(self.fd)
            self.fd = None
        try:
            posix.unlink(self.tmp)
        except OSError:
            pass
        self.conn.requests.pop(self.rid, None)

    def cancel(self):
        self._abort()

    def detach(self):
        self._abort()
