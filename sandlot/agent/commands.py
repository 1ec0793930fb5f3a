"""Running commands: spawn, stream stdout/stderr under credit, stdin, signals, timeouts.

Each command gets its own session and process group (``setsid``), so a signal or a timeout
reaches everything it started. Output is read as soon as it is produced and sent as DATA frames
while the host has credit; without credit the pipe is left unread and the child blocks on write,
which bounds memory on both sides.
"""

import posix
import select
import time

from . import protocol as p
from .errors import AgentError

READ_SIZE = 1024 * 1024  # = MAX_DATA: one frame per read
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031
LINGER = 0.05  # after exit, how long to wait for EOF from pipes a grandchild still holds
SIGKILL = 9
SIGPIPE = 13
SIGXFSZ = 25
EXEC_FAILED = 127


def _pipe():
    r, w = posix.pipe2(posix.O_CLOEXEC)
    return r, w


def _grow_pipe(fd):
    try:
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError):
        pass


def _which(name, path):
    if "/" in name:
        return name
    for folder in (path or "").split(":"):
        candidate = (folder or ".") + "/" + name
        if posix.access(candidate, posix.X_OK):
            try:
                if not _is_dir(candidate):
                    return candidate
            except OSError:
                continue
    return None


# Characters that mean nothing special to a POSIX shell outside quotes.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@% \t")
# Words a shell resolves itself (builtins, keywords). true and false are left out: their
# programs behave exactly like the builtins.
_SHELL_WORDS = frozenset(
    [
        "alias",
        "bg",
        "bind",
        "break",
        "builtin",
        "caller",
        "case",
        "cd",
        "command",
        "compgen",
        "complete",
        "continue",
        "declare",
        "dirs",
        "disown",
        "do",
        "done",
        "echo",
        "elif",
        "else",
        "enable",
        "esac",
        "eval",
        "exec",
        "exit",
        "export",
        "fc",
        "fg",
        "fi",
        "for",
        "function",
        "getopts",
        "hash",
        "help",
        "history",
        "if",
        "in",
        "jobs",
        "kill",
        "let",
        "local",
        "logout",
        "mapfile",
        "popd",
        "printf",
        "pushd",
        "pwd",
        "read",
        "readarray",
        "readonly",
        "return",
        "select",
        "set",
        "shift",
        "shopt",
        "source",
        "suspend",
        "test",
        "then",
        "time",
        "times",
        "trap",
        "type",
        "typeset",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "until",
        "wait",
        "while",
    ]
)


def _plain_words(cmd, path):
    """argv for a command line the shell would only split on blanks, else None.

    ``ls -la /workspace`` runs as argv without starting a shell (a shell would exec the same
    program after ~1 ms of its own start-up); anything with quotes, variables, globs,
    redirections, operators, assignments or builtins goes through the shell.
    """
    if not _PLAIN.issuperset(cmd):
        return None
    words = cmd.split()
    if not words or "=" in words[0] or words[0] in _SHELL_WORDS:
        return None
    resolved = _which(words[0], path)
    return words if resolved else None


def _is_dir(path):
    return (posix.stat(path).st_mode & 0o170000) == 0o040000


def _str_dict(value, what):
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise AgentError("invalid_argument", what + " must map strings to strings")
    return value


class Command:
    """One running process and the request that streams it."""

    def __init__(self, agent, conn, rid, request):
        self.agent = agent
        self.conn = conn
        self.rid = rid
        self.credit = p.WINDOW
        self.status = None
        self.timed_out = False
        self._streams = {}  # stream id -> read fd, while open
        self._paused = False
        self._stdin_fd = None
        self._stdin_buf = []
        self._stdin_eof = False
        self._timer = None
        self._linger = None
        self.end_extra = {}  # more fields for the END message (see code.Install)
        self.pid = self._spawn(request)
        conn.requests[rid] = self
        agent.commands[self.pid] = self
        conn.send_json(
            p.EVENT, rid, {"event": "started", "pid": self.pid if self.pid > 0 else None}
        )
        timeout = request.get("timeout")
        if timeout:
            self._timer = agent.loop.call_at(time.monotonic() + float(timeout), self._on_timeout)

    # -- start ------------------------------------------------------------------------------

    def _spawn(self, request):
        agent = self.agent
        env = dict(agent.base_env)
        env.update(_str_dict(request.get("env"), "env"))
        if "cmd" in request:
            cmd = request["cmd"]
            if not isinstance(cmd, str) or not cmd:
                raise AgentError("invalid_argument", "cmd must be a non-empty string")
            argv = _plain_words(cmd, env.get("PATH")) or [agent.shell, "-c", cmd]
        else:
            argv = request.get("argv")
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise AgentError("invalid_argument", "argv must be a non-empty list of strings")
        cwd = agent.paths.to_real(request.get("cwd") or agent.workdir)
        try:
            if not _is_dir(cwd):
                raise AgentError("not_a_directory", "working directory is not a folder: " + cwd)
        except OSError:
            raise AgentError("file_not_found", "working directory does not exist: " + cwd) from None

        out_r, out_w = _pipe()
        err_r, err_w = _pipe()
        _grow_pipe(out_w)
        actions = [
            (posix.POSIX_SPAWN_DUP2, out_w, 1),
            (posix.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        in_r = None
        if request.get("stdin"):
            in_r, self._stdin_fd = _pipe()
            actions.insert(0, (posix.POSIX_SPAWN_DUP2, in_r, 0))
        else:
            actions.insert(0, (posix.POSIX_SPAWN_OPEN, 0, "/dev/null", posix.O_RDONLY, 0))
        path = _which(argv[0], env.get("PATH"))
        pid = None
        failure = None
        try:
            if path is None:
                raise FileNotFoundError(2, "command not found")
            posix.chdir(cwd)
            pid = agent.spawn(
                path,
                argv,
                env,
                file_actions=actions,
                setsid=True,
                setsigdef=(SIGPIPE, SIGXFSZ),
            )
        except OSError as exc:
            failure = "sandlot: %s: %s\n" % (argv[0], exc.strerror or exc)
        finally:
            for fd in (out_w, err_w, in_r):
                if fd is not None:
                    posix.close(fd)
        if failure is not None:
            # Report like a shell does: a message on stderr and exit status 127.
            for fd in (out_r, err_r, self._stdin_fd):
                if fd is not None:
                    posix.close(fd)
            self._stdin_fd = None
            pid = self._spawn_failed(failure)
            return pid
        for stream, fd in ((p.STDOUT, out_r), (p.STDERR, err_r)):
            posix.set_blocking(fd, False)
            self._streams[stream] = fd
            agent.loop.watch(fd, select.EPOLLIN, self._reader(stream, fd))
        if self._stdin_fd is not None:
            posix.set_blocking(self._stdin_fd, False)
        return pid

    def _spawn_failed(self, message):
        """Finish on the next turn with the message on stderr; a negative, never-real pid."""
        self._failure = message
        self.agent.loop.call_soon(self._finish_failed)
        return -self.rid - 1  # never a real pid; keeps the bookkeeping uniform

    def _finish_failed(self):
        if self.conn is not None:
            self.conn.send(p.DATA, self.rid, self._failure.encode("utf-8", "replace"), p.STDERR)
        self.status = EXEC_FAILED << 8
        self._maybe_finish()

    # -- output -----------------------------------------------------------------------------

    def _reader(self, stream, fd):
        def on_events(events):
            self._read(stream, fd)

        return on_events

    def _read(self, stream, fd):
        if self.conn is not None and self.credit <= 0:
            self._pause()
            return
        size = READ_SIZE if self.conn is None else min(READ_SIZE, self.credit)
        try:
            data = posix.read(fd, size)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stream(stream)
            self._maybe_finish()
            return
        if self.conn is not None:
            self.conn.send(p.DATA, self.rid, data, stream)
            self.credit -= len(data)
            if self.credit <= 0:
                self._pause()

    def _pause(self):
        if not self._paused:
            self._paused = True
            for fd in self._streams.values():
                self.agent.loop.unwatch(fd)

    def _resume(self):
        if self._paused:
            self._paused = False
            for stream, fd in self._streams.items():
                self.agent.loop.watch(fd, select.EPOLLIN, self._reader(stream, fd))

    def _close_stream(self, stream):
        fd = self._streams.pop(stream, None)
        if fd is not None:
            self.agent.loop.unwatch(fd)
            posix.close(fd)

    def on_grant(self, stream, amount):
        if stream == p.STDOUT:
            self.credit += amount
            if self.credit > 0:
                self._resume()
                if self._linger is None and self.status is not None and self._streams:
                    self._start_linger()

    # -- stdin ------------------------------------------------------------------------------

    def on_data(self, stream, data):
        if self._stdin_fd is None:
            self._grant_stdin(len(data))  # stdin closed or never opened: drop, keep host moving
            return
        self._stdin_buf.append(data)
        self.agent.loop.watch(self._stdin_fd, select.EPOLLOUT, self._on_stdin_writable)

    def on_eof(self, stream):
        self._stdin_eof = True
        if not self._stdin_buf:
            self._close_stdin()

    def _on_stdin_writable(self, events):
        written = 0
        while self._stdin_buf:
            chunk = self._stdin_buf[0]
            try:
                n = posix.write(self._stdin_fd, chunk)
            except BlockingIOError:
                break
            except OSError:  # the child closed its stdin: drop what is left
                written += sum(len(c) for c in self._stdin_buf)
                self._stdin_buf = []
                self._close_stdin()
                break
            written += n
            if n == len(chunk):
                self._stdin_buf.pop(0)
            else:
                self._stdin_buf[0] = chunk[n:]
        if written:
            self._grant_stdin(written)
        if not self._stdin_buf and self._stdin_fd is not None:
            self.agent.loop.unwatch(self._stdin_fd)
            if self._stdin_eof:
                self._close_stdin()

    def _grant_stdin(self, amount):
        if self.conn is not None:
            self.conn.send(p.GRANT, self.rid, p.CREDIT.pack(amount), p.STDIN)

    def _close_stdin(self):
        if self._stdin_fd is not None:
            self.agent.loop.unwatch(self._stdin_fd)
            posix.close(self._stdin_fd)
            self._stdin_fd = None

    # -- end --------------------------------------------------------------------------------

    def signal(self, signum):
        if self.pid > 0 and self.status is None:
            try:
                posix.killpg(self.pid, signum)
            except OSError:
                try:
                    posix.kill(self.pid, signum)
                except OSError:
                    pass

    def cancel(self):
        self.signal(SIGKILL)

    def _on_timeout(self):
        self._timer = None
        if self.status is None:
            self.timed_out = True
            self.signal(SIGKILL)

    def on_exit(self, status):
        self.status = status
        # Anything left in the process group (a backgrounded grandchild) goes with its leader
        # only if the caller asked for a kill; otherwise it may keep running, but it no longer
        # holds the command open: after a short linger the pipes are closed.
        if self._streams:
            self._start_linger()
        self._maybe_finish()

    def _start_linger(self):
        if self._linger is None:
            self._linger = self.agent.loop.call_at(time.monotonic() + LINGER, self._end_linger)

    def _end_linger(self):
        self._linger = None
        for stream, fd in list(self._streams.items()):
            if self.conn is not None and self.credit <= 0:
                return  # data may be waiting for credit: on_grant restarts the linger
            self._read(stream, fd)
            if stream in self._streams:
                self._close_stream(stream)
        self._maybe_finish()

    def _maybe_finish(self):
        if self.status is None or self._streams:
            return
        status = self.status
        if posix.WIFSIGNALED(status):
            signum = posix.WTERMSIG(status)
            exit_code = 128 + signum
        else:
            signum = None
            exit_code = posix.WEXITSTATUS(status)
        if self.conn is not None:
            end = {"exit_code": exit_code, "signal": signum, "timed_out": self.timed_out}
            end.update(self.end_extra)
            self.conn.send_json(p.END, self.rid, end)
            self.conn.requests.pop(self.rid, None)
        self._cleanup()
        self.on_finished(exit_code)

    def on_finished(self, exit_code):
        """Called once the command has ended and been reported."""

    def _cleanup(self):
        loop = self.agent.loop
        if self._timer is not None:
            loop.cancel(self._timer)
            self._timer = None
        if self._linger is not None:
            loop.cancel(self._linger)
            self._linger = None
        self._close_stdin()
        for stream in list(self._streams):
            self._close_stream(stream)
        self.agent.commands.pop(self.pid, None)
        self.conn = None

    def detach(self):
        """The host connection is gone: keep running, drain and drop the output."""
        self.conn = None
        self._stdin_buf = []
        self._close_stdin()
        self._resume()
