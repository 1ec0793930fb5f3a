"""Running commands: spawn, log and stream stdout/stderr under credit, stdin, signals, timeouts.

Each command gets its own session and process group (``setsid``), so a signal or a timeout
reaches everything it started. Its output goes into its log (:mod:`.outlog`, bounded, oldest
bytes dropped) as soon as it is produced, and from there to every *reader*: the request that
started it, and any ``proc.attach`` request since, each with its own offset and credit. The
pipe is left unread while an attached reader has ``buffer`` unread bytes, so the child blocks
on write and memory stays bounded on both sides; with no reader attached (the host went away)
the command runs on and its log keeps the newest bytes. An ended command stays listed (with its
log and exit status) for a while: see :func:`_retain`.
"""

import posix
import select
import time

from . import protocol as p
from .errors import AgentError
from .outlog import OutLog

READ_SIZE = 1024 * 1024  # = MAX_DATA: one frame per read
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031
LINGER = 0.05  # after exit, how long to wait for EOF from pipes a grandchild still holds
SIGKILL = 9
SIGPIPE = 13
SIGXFSZ = 25
EXEC_FAILED = 127

DEFAULT_BUFFER = 2 * 1024 * 1024  # a command's log, unless the request says (``buffer``)
MIN_BUFFER = 4096
MAX_BUFFER = 64 * 1024 * 1024
MAX_ENDED = 64  # ended commands kept listed, with their logs...
ENDED_BYTES = 64 * 1024 * 1024  # ...holding at most this much together (oldest go first)
TOTAL_BYTES = 128 * 1024 * 1024  # every log together (past it, see Command._over_budget)
SHOWN_CHARS = 1024  # of a command line or argument in proc.list


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


def _buffer(request):
    value = request.get("buffer", DEFAULT_BUFFER)
    if value is None:
        return DEFAULT_BUFFER
    if type(value) is not int or not MIN_BUFFER <= value <= MAX_BUFFER:
        raise AgentError(
            "invalid_argument",
            "buffer must be a number of bytes from %d to %d" % (MIN_BUFFER, MAX_BUFFER),
        )
    return value


def _timeout(request):
    value = request.get("timeout")
    if value is None:
        return None
    if type(value) not in (int, float) or value != value or value < 0 or value == float("inf"):
        raise AgentError("invalid_argument", "timeout must be a non-negative number of seconds")
    return value or None


def _shown(value):
    if value is None:
        return None
    if isinstance(value, str):
        return value[:SHOWN_CHARS]
    return [a[:SHOWN_CHARS] for a in value[:64]]


class Reader:
    """One request streaming a command's log: the request that started it, or an attach.

    Its ``cursor`` is the offset of the next byte it sends; it sends while it has credit.
    DATA it receives is the command's input. CANCEL on the first reader kills the command;
    on an attach it only detaches that reader.
    """

    def __init__(self, command, conn, rid, offset, first):
        self.command = command
        self.conn = conn
        self.rid = rid
        self.first = first
        self.credit = p.WINDOW
        self.cursor = max(offset, command.log.start)
        conn.requests[rid] = self
        command.readers.append(self)

    def on_data(self, stream, data):
        self.command.write_stdin(self, data)

    def on_eof(self, stream):
        self.command.stdin_eof()

    def on_grant(self, stream, amount):
        if stream == p.STDOUT:
            self.credit += amount
            self.command.pump(self)
            self.command.room_changed()

    def grant_stdin(self, amount):
        if self.conn is not None:
            self.conn.send(p.GRANT, self.rid, p.CREDIT.pack(amount), p.STDIN)

    def cancel(self):
        """The host abandoned this request (it drops what still comes for it): detach, and
        kill the command if this request started it."""
        if self.first:
            self.command.cancel()
        self.leave()

    def detach(self):
        """The host connection is gone: the command runs on, logging."""
        self.conn = None
        self.leave()

    def leave(self):
        command = self.command
        if self in command.readers:
            command.readers.remove(self)
            if self.conn is not None:
                self.conn.requests.pop(self.rid, None)
            command.room_changed()


class Command:
    """One process, its output log and the readers streaming it."""

    kind = "exec"

    def __init__(self, agent, conn, rid, request):
        self.agent = agent
        self.status = None
        self.timed_out = False
        self.finished = False
        self.end_info = None  # the END message's fields, once ended
        self.readers = []
        self._streams = {}  # stream id -> read fd, while open
        self._paused = False
        self._stdin_fd = None
        self._stdin_buf = []  # [data, reader] not yet written
        self._stdin_eof = False
        self._timer = None
        self._linger = None
        self.end_extra = {}  # more fields for the END message (see code.Install)
        self.started_at = time.time()
        self.buffer = _buffer(request)
        timeout = _timeout(request)
        self.cmd = request.get("cmd")
        self.argv = request.get("argv")
        self.log = OutLog(self.buffer, _state(agent).budget)
        self.pid = self._spawn(request)
        if self.pid > 0:
            _remember(agent, self)
        agent.commands[self.pid] = self
        Reader(self, conn, rid, 0, True)
        conn.send_json(
            p.EVENT, rid, {"event": "started", "pid": self.pid if self.pid > 0 else None}
        )
        if timeout:
            self._timer = agent.loop.call_at(time.monotonic() + timeout, self._on_timeout)

    # -- start ------------------------------------------------------------------------------

    def _command_line(self, request, env):
        if "cmd" in request:
            cmd = request["cmd"]
            if not isinstance(cmd, str) or not cmd:
                raise AgentError("invalid_argument", "cmd must be a non-empty string")
            return _plain_words(cmd, env.get("PATH")) or [self.agent.shell, "-c", cmd]
        argv = request.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise AgentError("invalid_argument", "argv must be a non-empty list of strings")
        return argv

    def _spawn(self, request):
        agent = self.agent
        env = dict(agent.base_env)
        asked = _str_dict(request.get("env"), "env")
        env.update(asked)
        argv = self._command_line(request, env)
        cwd = request.get("cwd") or agent.workdir
        if not isinstance(cwd, str):
            raise AgentError("invalid_argument", "cwd must be a path")
        cwd = agent.paths.to_real(cwd)
        if "PWD" not in asked:
            # A shell trusts an inherited PWD naming the same folder: the agent's own would
            # make ``pwd`` print /workspace in a second mount of it (a workspace alias).
            env["PWD"] = cwd
        try:
            if not _is_dir(cwd):
                raise AgentError("not_a_directory", "working directory is not a folder: " + cwd)
        except (OSError, ValueError):
            raise AgentError("file_not_found", "working directory does not exist: " + cwd) from None
        self._prepare(request, env)
        actions, close_after, streams = self._io(request)
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
        except (OSError, ValueError) as exc:
            failure = "sandlot: %s: %s\n" % (argv[0], getattr(exc, "strerror", None) or exc)
        finally:
            for fd in close_after:
                posix.close(fd)
        if failure is not None:
            # Report like a shell does: a message on stderr and exit status 127.
            for fd in set(streams.values()) | {self._stdin_fd} - {None}:
                posix.close(fd)
            self._stdin_fd = None
            pid = self._spawn_failed(failure)
            return pid
        for stream, fd in streams.items():
            posix.set_blocking(fd, False)
            self._streams[stream] = fd
            agent.loop.watch(fd, select.EPOLLIN, self._reader(stream, fd))
        if self._stdin_fd is not None:
            posix.set_blocking(self._stdin_fd, False)
        return pid

    def _prepare(self, request, env):
        """Check and apply what only this kind of command takes (see Pty)."""

    def _io(self, request):
        """The child's file actions, the descriptors to close once it started, and the
        streams to read ({stream: fd}); sets ``_stdin_fd`` if the command has input."""
        out_r, out_w = _pipe()
        err_r, err_w = _pipe()
        _grow_pipe(out_w)
        actions = [
            (posix.POSIX_SPAWN_DUP2, out_w, 1),
            (posix.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        close_after = [out_w, err_w]
        if request.get("stdin"):
            in_r, self._stdin_fd = _pipe()
            actions.insert(0, (posix.POSIX_SPAWN_DUP2, in_r, 0))
            close_after.append(in_r)
        else:
            actions.insert(0, (posix.POSIX_SPAWN_OPEN, 0, "/dev/null", posix.O_RDONLY, 0))
        return actions, close_after, {p.STDOUT: out_r, p.STDERR: err_r}

    def _spawn_failed(self, message):
        """Finish on the next turn with the message on stderr; a negative, never-real pid."""
        self._failure = message
        self.agent.loop.call_soon(self._finish_failed)
        return -(id(self) % (1 << 30)) - 1  # never a real pid; keeps the bookkeeping uniform

    def _finish_failed(self):
        stream = p.STDOUT if self.kind == "pty" else p.STDERR  # a terminal has one output
        self.log.append(stream, self._failure.encode("utf-8", "replace"))
        self.status = EXEC_FAILED << 8
        self._maybe_finish()

    # -- output -----------------------------------------------------------------------------

    def _reader(self, stream, fd):
        def on_events(events):
            self._read(stream, fd)

        return on_events

    def _room(self):
        """How much more may be read now: ``buffer`` less the most any attached reader has
        not yet sent on (a detached command always has room: its log drops the oldest)."""
        end = self.log.end
        worst = 0
        for reader in self.readers:
            worst = max(worst, end - reader.cursor)
        return self.buffer - worst

    def _read(self, stream, fd):
        room = self._room()
        if room <= 0:
            self._pause()
            return
        try:
            data = posix.read(fd, min(READ_SIZE, room))
        except BlockingIOError:
            return
        except OSError:  # EIO: a terminal whose every other end has closed
            data = b""
        if not data:
            self._close_stream(stream)
            self._maybe_finish()
            return
        self.log.append(stream, data)
        if _state(self.agent).budget[0] > TOTAL_BYTES:
            self._over_budget()
        for reader in list(self.readers):
            self.pump(reader)
        if self._room() <= 0:
            self._pause()

    def _over_budget(self):
        """Every log together holds too much: ended commands' logs go first (oldest first),
        then this log's bytes that no attached reader still has to send."""
        state = _state(self.agent)
        while state.budget[0] > TOTAL_BYTES and _forget_oldest(self.agent):
            pass
        if state.budget[0] > TOTAL_BYTES:
            self.log.trim(min([r.cursor for r in self.readers] or [self.log.end]))

    def pump(self, reader):
        """Send the reader what it has credit for; its END once it has sent the last byte."""
        conn = reader.conn
        if conn is None:
            return
        log = self.log
        reader.cursor = max(reader.cursor, log.start)
        while reader.credit > 0 and reader.cursor < log.end:
            for stream, data in log.read(reader.cursor, min(reader.credit, p.MAX_DATA)):
                conn.send(p.DATA, reader.rid, data, stream)
                reader.cursor += len(data)
                reader.credit -= len(data)
        if self.finished and reader.cursor >= log.end:
            end = dict(self.end_info)
            end["end"] = log.end
            conn.send_json(p.END, reader.rid, end)
            reader.leave()

    def room_changed(self):
        """A reader sent on or left: read again if that made room."""
        if self.finished:
            if not self.readers and self.agent is not None and _state(self.agent).forgot(self):
                self.log.clear()
            return
        if self._paused and self._room() > 0:
            self._resume()
            if self._linger is None and self.status is not None and self._streams:
                self._start_linger()

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

    # -- stdin ------------------------------------------------------------------------------

    def write_stdin(self, reader, data):
        if self._stdin_fd is None:
            reader.grant_stdin(len(data))  # stdin closed or never opened: drop, keep host moving
            return
        self._stdin_buf.append([data, reader])
        self.agent.loop.watch(self._stdin_fd, select.EPOLLOUT, self._on_stdin_writable)

    def stdin_eof(self):
        self._stdin_eof = True
        if not self._stdin_buf:
            self._close_stdin()

    def _on_stdin_writable(self, events):
        while self._stdin_buf:
            entry = self._stdin_buf[0]
            chunk, reader = entry
            try:
                n = posix.write(self._stdin_fd, chunk)
            except BlockingIOError:
                break
            except OSError:  # the child closed its stdin: drop what is left
                for chunk, reader in self._stdin_buf:
                    reader.grant_stdin(len(chunk))
                self._stdin_buf = []
                self._close_stdin()
                break
            reader.grant_stdin(n)
            if n == len(chunk):
                self._stdin_buf.pop(0)
            else:
                entry[0] = chunk[n:]
        if not self._stdin_buf and self._stdin_fd is not None:
            self.agent.loop.unwatch(self._stdin_fd)
            if self._stdin_eof:
                self._close_stdin()

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
            if self._room() <= 0:
                return  # a reader is behind: room_changed restarts the linger
            self._read(stream, fd)
            if stream in self._streams:
                self._close_stream(stream)
        self._maybe_finish()

    def _maybe_finish(self):
        if self.status is None or self._streams or self.finished:
            return
        status = self.status
        if posix.WIFSIGNALED(status):
            signum = posix.WTERMSIG(status)
            exit_code = 128 + signum
        else:
            signum = None
            exit_code = posix.WEXITSTATUS(status)
        self.end_info = {"exit_code": exit_code, "signal": signum, "timed_out": self.timed_out}
        self.end_info.update(self.end_extra)
        self.finished = True
        self._cleanup()
        for reader in list(self.readers):
            self.pump(reader)
        if self.pid > 0:
            _retain(self.agent, self)
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
        self._stdin_buf = []
        self._close_stdin()
        for stream in list(self._streams):
            self._close_stream(stream)
        self.agent.commands.pop(self.pid, None)

    # -- listing and attaching ----------------------------------------------------------------

    def describe(self):
        end = self.end_info or {}
        return {
            "pid": self.pid,
            "kind": self.kind,
            "cmd": _shown(self.cmd if isinstance(self.cmd, str) else None),
            "argv": _shown(self.argv if isinstance(self.argv, list) else None),
            "running": not self.finished,
            "exit_code": end.get("exit_code"),
            "signal": end.get("signal"),
            "timed_out": self.timed_out,
            "start": self.log.start,
            "end": self.log.end,
            "attached": len(self.readers),
            "started_at": self.started_at,
        }


def _terminal():
    import fcntl
    import termios

    return fcntl, termios


class Pty(Command):
    """A process on a new pseudo-terminal: session leader with the terminal as its
    controlling one (opened by path in the child after ``setsid``, without ``O_NOCTTY``).
    The terminal's output is its STDOUT; its input is written to the master side."""

    kind = "pty"

    def __init__(self, agent, conn, rid, request):
        self.cols, self.rows = _size(request.get("cols", 80), request.get("rows", 24))
        self._master = None
        Command.__init__(self, agent, conn, rid, request)

    def _command_line(self, request, env):
        if "cmd" not in request and "argv" not in request:
            return [self.agent.shell, "-i"]
        return Command._command_line(self, request, env)

    def _prepare(self, request, env):
        own = request.get("env")
        if not (isinstance(own, dict) and "TERM" in own):
            env["TERM"] = "xterm-256color"

    def _io(self, request):
        try:
            master, slave = posix.openpty()
        except OSError as exc:
            raise AgentError("sandbox_error", "cannot open a terminal: %s" % exc) from None
        try:
            path = posix.ttyname(slave)
            self._master = master
            self.set_size(self.cols, self.rows)
            self._stdin_fd = posix.dup(master)  # written apart from reading: two epoll entries
        except OSError as exc:
            posix.close(master)
            posix.close(slave)
            raise AgentError("sandbox_error", "cannot set up a terminal: %s" % exc) from None
        actions = [
            (posix.POSIX_SPAWN_OPEN, 0, path, posix.O_RDWR, 0),  # becomes the controlling tty
            (posix.POSIX_SPAWN_DUP2, 0, 1),
            (posix.POSIX_SPAWN_DUP2, 0, 2),
        ]
        return actions, [slave], {p.STDOUT: master}

    def stdin_eof(self):
        """Closing a terminal's input would hang it up: EOF is ignored (send ^D instead)."""

    def set_size(self, cols, rows):
        import _struct

        fcntl, termios = _terminal()
        fcntl.ioctl(self._master, termios.TIOCSWINSZ, _struct.pack("HHHH", rows, cols, 0, 0))
        self.cols, self.rows = cols, rows

    def resize(self, cols, rows):
        if self.finished or p.STDOUT not in self._streams:
            raise AgentError("process_not_found", "the terminal of %d has closed" % self.pid)
        try:
            self.set_size(cols, rows)
        except OSError as exc:
            raise AgentError("invalid_argument", "cannot resize: %s" % exc) from None

    def describe(self):
        info = Command.describe(self)
        info["cols"] = self.cols
        info["rows"] = self.rows
        return info


def _size(cols, rows):
    for value in (cols, rows):
        if type(value) is not int or not 1 <= value <= 10000:
            raise AgentError("invalid_argument", "cols and rows must be integers from 1 to 10000")
    return cols, rows


# -- what the agent keeps of its commands ---------------------------------------------------


class _Kept:
    """The agent's record of commands: every one with a log, by pid, and the ended ones."""

    def __init__(self):
        self.procs = {}  # pid -> Command, running or ended (insertion order: start order)
        self.ended = []  # ended commands still listed, oldest first
        self.budget = [0]  # bytes all logs hold together (OutLog counts into it)

    def forgot(self, command):
        return self.procs.get(command.pid) is not command


def _state(agent):
    kept = getattr(agent, "kept", None)
    if kept is None:
        kept = agent.kept = _Kept()
        _keep_heap()
    return kept


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def _keep_heap():
    """Logs keep megabyte reads alive for a while, so glibc's heuristics would hand each new
    read fresh pages (unmapped or trimmed, then faulted in again: a third more CPU per byte
    streamed). Reads stay on the heap, and up to 8 MiB of free heap is kept for the next."""
    try:
        from .walls import _c

        _c("mallopt")(M_MMAP_THRESHOLD, 4 * 1024 * 1024)
        _c("mallopt")(M_TRIM_THRESHOLD, 8 * 1024 * 1024)
    except Exception:  # no _ctypes in this image: only slower
        pass


def _remember(agent, command):
    kept = _state(agent)
    old = kept.procs.pop(command.pid, None)  # a pid reused: the old record goes
    if old is not None:
        _drop(kept, old)
    kept.procs[command.pid] = command


def _drop(kept, command):
    if command in kept.ended:
        kept.ended.remove(command)
    if kept.procs.get(command.pid) is command:
        del kept.procs[command.pid]
    if not command.readers:  # else the last reader to leave clears it (room_changed)
        command.log.clear()


def _retain(agent, command):
    """An ended command stays listed: at most MAX_ENDED, ENDED_BYTES of logs, oldest go."""
    kept = _state(agent)
    if kept.procs.get(command.pid) is not command:
        if not command.readers:
            command.log.clear()
        return
    kept.ended.append(command)
    while len(kept.ended) > MAX_ENDED or sum(c.log.held for c in kept.ended) > ENDED_BYTES:
        _drop(kept, kept.ended[0])


def _forget_oldest(agent):
    kept = _state(agent)
    if not kept.ended:
        return False
    _drop(kept, kept.ended[0])
    return True


def _find(agent, request):
    pid = request.get("pid")
    command = _state(agent).procs.get(pid) if type(pid) is int else None
    if command is None:
        raise AgentError("process_not_found", "no command with pid %r" % (pid,))
    return command


def op_list(agent, request):
    return {"processes": [c.describe() for c in _state(agent).procs.values()]}


def op_attach(agent, conn, rid, request):
    command = _find(agent, request)
    offset = request.get("offset", 0)
    if offset is None:
        offset = 0
    if type(offset) is not int or offset < 0:
        raise AgentError("invalid_argument", "offset must be a non-negative integer")
    log = command.log
    reader = Reader(command, conn, rid, offset, False)
    conn.send_json(
        p.EVENT,
        rid,
        {
            "event": "attached",
            "pid": command.pid,
            "kind": command.kind,
            "start": log.start,
            "end": log.end,
            "gap": log.gap(offset),
            "running": not command.finished,
        },
    )
    command.pump(reader)
    command.room_changed()


def op_resize(agent, request):
    command = _find(agent, request)
    if not isinstance(command, Pty):
        raise AgentError("invalid_argument", "process %d has no terminal" % command.pid)
    cols, rows = _size(request.get("cols"), request.get("rows"))
    command.resize(cols, rows)
    return {}
