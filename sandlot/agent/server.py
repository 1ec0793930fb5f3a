"""The agent: accepts host connections, dispatches requests, reaps children, keeps time."""

import _signal
import _socket
import posix
import select
import sys
import time

from . import protocol as p
from .connection import Connection
from .errors import AgentError

SIGCHLD = 17
SIGTERM = 15
SIGKILL = 9
PARENT_CHECK = 1.0
# Idleness: requests of these ops are not a client's activity (the host's idle checks, probes).
NOT_ACTIVITY = ("idle", "ping")
# Requests in flight that are plumbing the host keeps open, not anybody's use of the sandbox.
PLUMBING = ("Listener", "_Standby")
MAX_IDLE = 366 * 86400.0


SEND_BUFFER = 4 * 1024 * 1024


def _grow_send_buffer(fd):
    """A Unix socket holds only ``SO_SNDBUF`` bytes in flight (208 KiB by default): with a
    bigger one, each wake-up of host and agent moves megabytes, not a fraction of a frame.
    The kernel caps it at net.core.wmem_max."""
    sock = _socket.socket(fileno=fd)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, SEND_BUFFER)
    except OSError:
        pass
    finally:
        sock.detach()


class Paths:
    """Maps sandbox paths to real ones. Identity inside an isolated sandbox; the ``process``
    provider maps /workspace onto a host folder."""

    def __init__(self, mapping):
        self.mapping = mapping  # [(sandbox prefix, real prefix)]

    def to_real(self, path):
        for shown, real in self.mapping:
            if path == shown or path.startswith(shown + "/"):
                return real + path[len(shown) :]
        return path

    def to_shown(self, path):
        """A real path as the sandbox shows it (the reverse of :meth:`to_real`)."""
        for shown, real in self.mapping:
            if path == real or path.startswith(real.rstrip("/") + "/"):
                return shown + path[len(real) :]
        return path


class Agent:
    def __init__(
        self,
        listen_fd,
        mapping=(),
        workdir="/workspace",
        deadline=None,
        parent=None,
        lifeline=None,
        walls=None,
        reap_all=False,
    ):
        from .loop import Loop

        self.loop = Loop()
        # Starts commands: posix_spawn, or walls.Spawner's (commands out of the agent's reach),
        # once ``walls`` (a function that raises them) has run: after the first hello, so
        # that the host reads it meanwhile, and before any request is read.
        self.spawn = posix.posix_spawn
        self._spawned_exit = None
        self._raise_walls = walls
        self.paths = Paths(list(mapping))
        self.workdir = workdir
        self.connections = set()
        self.commands = {}  # pid -> Command, or code.Context (its worker)
        self.code = None  # code.Contexts, created on first use
        self.listeners = {}  # name -> ports.Listener (egress proxy, callback bridge)
        self.base_env = {k.decode(): v.decode() for k, v in posix.environ.items()}
        _pip_defaults(self.base_env, sys.prefix)
        self._shell = None
        self._parent = parent
        self._deadline_timer = None
        self._idle_limit = None  # seconds without activity before shutting down (None: never)
        self._idle_timer = None
        self._last_active = time.monotonic()
        self._idle_checked = self._last_active
        self._was_busy = False  # whether something was in use at the last look
        self._reap_all = reap_all
        posix.set_inheritable(listen_fd, False)  # commands must never inherit it
        self._listen = _socket.socket(fileno=listen_fd)
        self._listen.setblocking(False)
        self.loop.watch(listen_fd, select.EPOLLIN, self._on_accept)
        self._install_signals()
        if deadline is not None:
            self.set_deadline(deadline)
        if parent is not None:
            self.loop.call_at(time.monotonic() + PARENT_CHECK, self._check_parent)
        if lifeline is not None:
            # The creator holds the other end: when it dies, however, this end reads EOF.
            posix.set_inheritable(lifeline, False)
            self.loop.watch(lifeline, select.EPOLLIN | select.EPOLLHUP, self._on_lifeline)

    @property
    def shell(self):
        """bash where the sandbox has it, else sh (looked up on first use)."""
        if self._shell is None:
            which = _commands()._which
            path = self.base_env.get("PATH", "/usr/bin:/bin")
            self._shell = which("bash", path) or which("sh", path) or "/bin/sh"
        return self._shell

    # -- signals and children ---------------------------------------------------------------

    def _install_signals(self):
        r, w = posix.pipe2(posix.O_CLOEXEC | posix.O_NONBLOCK)
        self._wake_r = r
        self._pending_signals = []
        _signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        _signal.signal(SIGCHLD, self._on_signal)
        _signal.signal(SIGTERM, self._on_signal)
        self.loop.watch(r, select.EPOLLIN, self._on_wake)

    def _on_signal(self, signum, frame):
        self._pending_signals.append(signum)

    def _on_wake(self, events):
        try:
            while posix.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        pending, self._pending_signals = self._pending_signals, []
        if SIGTERM in pending:
            self.shutdown()
            return
        self.reap()

    def reap(self):
        while True:
            try:
                pid, status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self._spawned_exit is not None:
                self._spawned_exit(pid)
            command = self.commands.get(pid)
            if command is not None:
                command.on_exit(status)

    # -- lifetime ---------------------------------------------------------------------------

    def set_deadline(self, seconds):
        if self._deadline_timer is not None:
            self.loop.cancel(self._deadline_timer)
        self._deadline_timer = self.loop.call_at(time.monotonic() + seconds, self.shutdown)

    def set_idle(self, seconds):
        """Shut down after ``seconds`` without activity (None: never). The host that owns the
        sandbox stops it earlier (it gives us a longer limit than its own); this is for when
        no host is left to do it."""
        if self._idle_timer is not None:
            self.loop.cancel(self._idle_timer)
            self._idle_timer = None
        self._idle_limit = seconds
        if seconds is not None:
            self._last_active = self._idle_checked = time.monotonic()
            self._idle_timer = self.loop.call_at(
                self._idle_checked + self._idle_step(), self._idle_check
            )

    def _idle_step(self):
        return min(max(self._idle_limit / 4, 0.25), 5.0)

    def busy(self):
        """What is in use now: running commands, ptys and installs, running cells, and host
        requests in flight (streams being read, transfers, forwarded connections)."""
        count = 0
        for item in self.commands.values():
            # A command's status is None while it runs; a code context's worker has none,
            # and counts while a cell runs in it.
            if getattr(item, "status", 0) is None or getattr(item, "cell", None) is not None:
                count += 1
        for conn in self.connections:
            for request in conn.requests.values():
                if type(request).__name__ not in PLUMBING:
                    count += 1
        return count

    def idle_for(self):
        """Seconds since the last activity (0 while something is in use). Something in use
        at the last look and gone now ended between the two looks: it counts as ending now,
        so idleness is never overstated (at most one look's interval understated)."""
        now = time.monotonic()
        busy = self.busy() > 0
        if busy or self._was_busy or self._thawed(now):
            self._last_active = now
        self._was_busy = busy
        return now - self._last_active

    def _thawed(self, now):
        """Whether our idle timer missed its time by far: we did not run meanwhile (the
        sandbox was paused, the host suspended), and that time is nobody's idleness."""
        if self._idle_limit is None:
            return False
        return now - self._idle_checked > 2 * self._idle_step() + 1.0

    def _idle_check(self):
        self._idle_timer = None
        if self._idle_limit is None:
            return
        step = self._idle_step()
        now = time.monotonic()
        idle = self.idle_for()
        self._idle_checked = now
        if idle >= self._idle_limit:
            self.shutdown()
            return
        self._idle_timer = self.loop.call_at(now + step, self._idle_check)

    def _check_parent(self):
        if posix.getppid() != self._parent:
            self.shutdown()
            return
        self.loop.call_at(time.monotonic() + PARENT_CHECK, self._check_parent)

    def _on_lifeline(self, events):
        self.shutdown()

    def shutdown(self):
        for command in list(self.commands.values()):
            command.signal(SIGKILL)
        if self._reap_all:
            # Everything else of the sandbox too: a setsid'd daemon would otherwise keep its
            # PID namespace (whose init outlives us when the creator is gone) alive.
            try:
                posix.kill(-1, SIGKILL)
            except OSError:
                pass
        self.loop.running = False

    # -- connections and requests ------------------------------------------------------------

    def _on_accept(self, events):
        while True:
            try:
                fd, _ = self._listen._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            posix.set_inheritable(fd, False)
            _grow_send_buffer(fd)
            conn = Connection(self, fd)
            self.connections.add(conn)
            conn.send_json(p.HELLO, 0, {"version": p.VERSION, "pid": posix.getpid()})
            if self._raise_walls is not None:
                spawner, self._raise_walls = self._raise_walls(), None
                self.spawn, self._spawned_exit = spawner.spawn, spawner.exited
            # Import the request handlers while the host reads the hello: off the critical
            # path of a cold start.
            self.loop.call_soon(_preload)

    def handle_request(self, conn, rid, request):
        op = request.get("op")
        if op not in NOT_ACTIVITY:
            self._last_active = time.monotonic()
        try:
            entry = OPERATIONS.get(op)
            if entry is None:
                raise AgentError("invalid_argument", "unknown operation %r" % (op,))
            kind, module, name = entry
            if module is None:
                result = getattr(self, name)(conn, rid, request)
            elif kind == "stream":  # registers itself on the connection and answers later
                getattr(module(), name)(self, conn, rid, request)
                result = None
            else:
                result = getattr(module(), name)(self, request)
        except Exception as exc:  # every failure is an answer, never a dead agent
            conn.requests.pop(rid, None)
            conn.send_error(rid, exc)
            return
        if result is not None:
            conn.send_json(p.END, rid, result)

    def op_signal(self, conn, rid, request):
        pid = request.get("pid")
        signum = request.get("signal", SIGKILL)
        if not isinstance(signum, int) or not 0 < signum < 65:
            raise AgentError("invalid_argument", "signal must be a signal number")
        command = self.commands.get(pid)
        if command is None:
            raise AgentError("process_not_found", "no running command with pid %r" % (pid,))
        command.signal(signum)
        return {}

    def op_deadline(self, conn, rid, request):
        seconds = request.get("seconds")
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise AgentError("invalid_argument", "seconds must be a non-negative number")
        self.set_deadline(seconds)
        return {}

    def op_idle(self, conn, rid, request):
        """``{"op": "idle", "seconds": N | null, "touch": bool}``: ``seconds`` (when given)
        sets the idle limit (null: none); ``touch`` counts as activity (the host saw some we
        did not). Answers how long the sandbox has been idle, and how much is in use."""
        if "seconds" in request:
            seconds = request["seconds"]
            if seconds is not None and (
                not isinstance(seconds, (int, float))
                or isinstance(seconds, bool)
                or not 0 < seconds <= MAX_IDLE
            ):
                raise AgentError("invalid_argument", "seconds must be a positive number or null")
            self.set_idle(seconds)
        if request.get("touch") is True:
            self._last_active = time.monotonic()
        return {"idle": self.idle_for(), "busy": self.busy(), "limit": self._idle_limit}

    def op_env(self, conn, rid, request):
        """Set variables for every later command and code context: values the host keeps
        off the sandbox's command line (resolved secrets)."""
        values = request.get("set")
        if not isinstance(values, dict):
            raise AgentError("invalid_argument", "set must map names to strings")
        for key, value in values.items():
            if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
                raise AgentError("invalid_argument", "set must map names to strings")
            if "\0" in key or "\0" in value:
                raise AgentError("invalid_argument", "environment values cannot hold NUL")
        self.base_env.update(values)
        return {}

    def op_ping(self, conn, rid, request):
        return {}

    def op_info(self, conn, rid, request):
        from . import walls

        return {
            "pid": posix.getpid(),
            "version": p.VERSION,
            "commands": sorted(pid for pid in self.commands if pid > 0),
            "walls": walls.report(),
        }


def _pip_defaults(env, prefix):
    """pip that works in the sandbox, from a cell (``!pip``), a command or ``install``.

    On a read-only root, pip cannot write the interpreter's site-packages and installs into
    the user site instead (``$HOME/.local``, in the workspace), which every ``python3`` of that
    version puts on its path; PEP 668's marker (Debian, Ubuntu) would refuse first, so it is
    lifted, which is safe only because the system cannot be written anyway. Where the prefix is
    writable (the process provider run by root) the marker keeps protecting the host's Python.
    PIP_USER is not set: it would break ``pip`` in a virtual environment the user makes.
    ``$HOME/.local/bin`` (installed scripts) goes last on PATH. The caller's values win.
    """
    if not posix.access(prefix or "/usr", posix.W_OK):
        env.setdefault("PIP_BREAK_SYSTEM_PACKAGES", "1")
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")  # no lookup of a newer pip offline
    home = env.get("HOME", "")
    if home.startswith("/"):
        scripts = home.rstrip("/") + "/.local/bin"
        path = env.get("PATH", "")
        if scripts not in path.split(":"):
            env["PATH"] = path + ":" + scripts if path else scripts


def _commands():
    from . import commands

    return commands


def _files():
    from . import files

    return files


def _code():
    from . import code

    return code


def _ports():
    from . import ports

    return ports


def _preload():
    _commands()
    _files()


# op -> (kind, module loader or None for an Agent method, attribute)
OPERATIONS = {
    "exec": ("stream", _commands, "Command"),
    "pty": ("stream", _commands, "Pty"),
    "proc.list": ("call", _commands, "op_list"),
    "proc.attach": ("stream", _commands, "op_attach"),
    "proc.resize": ("call", _commands, "op_resize"),
    "signal": ("call", None, "op_signal"),
    "deadline": ("call", None, "op_deadline"),
    "idle": ("call", None, "op_idle"),
    "info": ("call", None, "op_info"),
    "ping": ("call", None, "op_ping"),
    "read": ("stream", _files, "Download"),
    "write": ("stream", _files, "Upload"),
    "stat": ("call", _files, "stat"),
    "exists": ("call", _files, "exists"),
    "list": ("call", _files, "list_dir"),
    "mkdir": ("call", _files, "make_dir"),
    "remove": ("call", _files, "remove"),
    "rename": ("call", _files, "rename"),
    "code.create": ("stream", _code, "op_create"),
    "code.run": ("stream", _code, "op_run"),
    "code.restart": ("stream", _code, "op_restart"),
    "code.interrupt": ("call", _code, "op_interrupt"),
    "code.remove": ("stream", _code, "op_remove"),
    "code.list": ("call", _code, "op_list"),
    "code.install": ("stream", _code, "op_install"),
    "connect": ("stream", _ports, "op_connect"),
    "listen": ("stream", _ports, "op_listen"),
    "accepted": ("stream", _ports, "op_accepted"),
    "env": ("call", None, "op_env"),
}
