"""Code contexts: stateful Python workers the host runs cells in.

Each context is one worker process (:mod:`kernel`) in its own session and process group, with
its stdout/stderr on pipes this module reads and a control socket for cells and results. A cell
is a streaming request: output as DATA frames under credit, results and progress as EVENTs, and
an END with the error, if any. Output beyond a cap keeps its head (streamed as it comes) and its
tail (sent at the end, after a marker saying how much was cut), so a cell that prints gigabytes
costs neither side memory.

Interrupts: a timeout (total or inactivity) or an interrupt request sends SIGINT, then
SIGCONT (a stopped worker takes the pending SIGINT as it wakes), to the worker's process
group; the cell ends with ``KeyboardInterrupt`` and the namespace lives on. Code that
ignores SIGINT is killed after a grace period, the worker restarts empty, and the cell's END
says ``state_lost``. A worker that dies on its own (``os._exit``, the OOM killer) restarts
the same way.

Inactivity is liveness, not output: a cell is stopped when its worker showed no sign of life
for ``inactivity_timeout`` seconds. Signs of life are output, results, ``progress()``, the
heartbeat the worker's watchdog thread sends while a cell runs, and CPU time the worker spent
(/proc), so a quiet ``time.sleep`` or a long C call holding the GIL is alive, while a stopped or
deadlocked worker is not.

Setup code given at create runs in every fresh worker before its first cell (at create, after
a restart or a crash, after a persisted namespace is restored).
"""

import _socket
import posix
import select
import sys
import time
from collections import deque

from . import protocol as p
from .commands import _str_dict
from .errors import AgentError

SIGINT = 2
SIGKILL = 9
SIGCONT = 18
SIGPIPE = 13
SIGXFSZ = 25
READ_SIZE = 256 * 1024
PAUSE_AT = 1024 * 1024  # queued output per cell before the pipes are left unread
MAX_CONTROL = p.MAX_CONTROL  # a worker frame larger than this is a broken worker
DEFAULT_MAX_OUTPUT = 2 * 1024 * 1024  # per stream and cell: half head, half tail
DEFAULT_GRACE = 2.0
MAX_CONTEXTS = 64
MAX_SETUP = 256 * 1024  # bytes of setup code
SETUP_TIMEOUT = 50.0  # seconds; under a remote client's 60 s call timeout for create
MAX_SETUP_ERROR = 16 * 1024  # what a worker may say about its setup's failure
MAX_CWD = 4096
BOOT_STDERR = 8192  # what a worker printed while starting, kept for the error message
BOOT = "import sys;sys.path.insert(0,%r);from agent import kernel;kernel.main(%r)"
STREAM_NAMES = {p.STDOUT: "stdout", p.STDERR: "stderr"}


def _agent_root():
    return __file__.rsplit("/", 2)[0]  # the folder holding agent/


def _is_dir(path):
    try:
        return (posix.stat(path).st_mode & 0o170000) == 0o040000
    except OSError:
        return False


def _is_id(name):
    """Whether ``name`` has the form of an id ("default", "ctx-..."): never a name."""
    return name == "default" or name.startswith("ctx-")


def _name_ok(name):
    return (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and name.isascii()
        and all(c.isalnum() or c in "_.-" for c in name)
        and not name.startswith(".")
    )


def _number(request, key, default):
    value = request.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise AgentError("invalid_argument", "%s must be a positive number" % key)
    return float(value)


class _Tail:
    def __init__(self, limit):
        self.limit = limit
        self.chunks = deque()
        self.size = 0

    def add(self, data):
        self.chunks.append(data)
        self.size += len(data)
        while self.size - len(self.chunks[0]) >= self.limit:
            self.size -= len(self.chunks.popleft())

    def take(self):
        data = b"".join(self.chunks)
        return data[len(data) - self.limit :] if len(data) > self.limit else data


class Cell:
    """One run of code in a context: the request that streams it back."""

    def __init__(self, context, conn, rid, request):
        self.context = context
        self.conn = conn
        self.rid = rid
        self.credit = p.WINDOW
        self.queue = deque()  # [kind, stream, payload]: sent in order, DATA under credit
        self.queued = 0
        self.timed_out = False
        self.interrupted = False
        self.state_lost = False
        self.finished = False
        max_output = request.get("max_output", DEFAULT_MAX_OUTPUT)
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 2:
            raise AgentError("invalid_argument", "max_output must be an integer >= 2")
        self.head_left = {p.STDOUT: max_output // 2, p.STDERR: max_output // 2}
        self.tails = {p.STDOUT: _Tail(max_output // 2), p.STDERR: _Tail(max_output // 2)}
        self.cut = {p.STDOUT: 0, p.STDERR: 0}
        self.timeout = _number(request, "timeout", None)
        self.inactivity = _number(request, "inactivity_timeout", None)
        self.grace = _number(request, "grace", DEFAULT_GRACE)
        self.started = self.last_activity = time.monotonic()
        self.cpu_seen = context.cpu_time() if self.inactivity is not None else None
        self._timers = []
        loop = context.agent.loop
        if self.timeout is not None:
            self._timers.append(loop.call_at(self.started + self.timeout, self._on_timeout))
        if self.inactivity is not None:
            self._timers.append(loop.call_at(self.started + self.inactivity, self._on_idle))

    # -- output, in order --------------------------------------------------------------------

    def heartbeat_period(self):
        """How often the worker says it is alive: well under the inactivity timeout."""
        if self.inactivity is None:
            return None
        return max(0.05, min(self.inactivity / 4.0, 5.0))

    def alive(self):
        self.last_activity = time.monotonic()

    def output(self, stream, data):
        self.last_activity = time.monotonic()
        left = self.head_left[stream]
        if left > 0:
            head = data[:left]
            self.head_left[stream] = left - len(head)
            self._queue(p.DATA, stream, head)
            data = data[len(head) :]
        if data:
            self.cut[stream] += len(data)
            self.tails[stream].add(data)

    def event(self, obj):
        self.last_activity = time.monotonic()
        self._queue(p.EVENT, 0, obj)

    def _queue(self, kind, stream, payload, flush=True):
        if self.conn is None:
            return  # nobody listens: drop
        self.queue.append([kind, stream, payload])
        if kind == p.DATA:
            self.queued += len(payload)
        if flush:
            self.flush()

    def flush(self):
        conn = self.conn
        while self.queue and conn is not None:
            entry = self.queue[0]
            kind, stream, payload = entry
            if kind == p.DATA:
                if self.credit <= 0:
                    break
                part = payload[: min(self.credit, p.MAX_DATA)]  # a frame holds at most 1 MiB
                conn.send(p.DATA, self.rid, part, stream)
                self.credit -= len(part)
                self.queued -= len(part)
                if len(part) < len(payload):
                    entry[2] = payload[len(part) :]
                    break
            else:
                conn.send_json(kind, self.rid, payload)
            self.queue.popleft()
        if self.finished and not self.queue:
            self._complete()
        self.context.pipes_wanted(self.queued < PAUSE_AT)

    # -- the request interface (see connection.Connection) -----------------------------------

    def on_grant(self, stream, amount):
        if stream == p.STDOUT:
            self.credit += amount
            self.flush()

    def on_data(self, stream, data):
        pass  # cells take no stdin

    def on_eof(self, stream):
        pass

    def cancel(self):
        """The host gave up on this cell: stop it, keep the context."""
        self.detach()
        self.context.interrupt(self, timed_out=False)

    def detach(self):
        self.conn = None
        self.queue.clear()
        self.queued = 0
        self.context.pipes_wanted(True)

    # -- timeouts ----------------------------------------------------------------------------

    def _on_timeout(self):
        self.context.interrupt(self, timed_out=True)

    def _on_idle(self):
        now = time.monotonic()
        cpu = self.context.cpu_time()
        if cpu is not None and cpu != self.cpu_seen:  # busy in C with the GIL held: alive
            self.cpu_seen = cpu
            self.last_activity = now
        due = self.last_activity + self.inactivity
        if now < due:
            self._timers.append(self.context.agent.loop.call_at(due, self._on_idle))
            return
        self.context.interrupt(self, timed_out=True)

    def add_timer(self, timer):
        self._timers.append(timer)

    # -- end ---------------------------------------------------------------------------------

    def finish(self, end):
        """The worker is done with this cell (or gone): queue the tails and the END."""
        if self.finished:
            return
        self.finished = True
        for timer in self._timers:
            self.context.agent.loop.cancel(timer)
        self._timers = []
        cut = {}
        for stream, count in self.cut.items():
            if count:
                tail = self.tails[stream].take()
                dropped = count - len(tail)
                if dropped:
                    cut[STREAM_NAMES[stream]] = dropped
                    marker = "\n[sandlot: %d bytes of %s cut here]\n" % (
                        dropped,
                        STREAM_NAMES[stream],
                    )
                    self._queue(p.DATA, stream, marker.encode(), flush=False)
                self._queue(p.DATA, stream, tail, flush=False)
        end.update(
            {
                "timed_out": self.timed_out,
                "interrupted": self.interrupted or self.timed_out,
                "state_lost": self.state_lost or end.get("state_lost", False),
                "cut": cut,
                "duration": time.monotonic() - self.started,
            }
        )
        # Queued as one batch: a flush in between could empty the queue and complete the
        # request before the END is in it.
        self._queue(p.END, 0, end, flush=False)
        if self.conn is None:
            self._complete()
        else:
            self.flush()

    def _complete(self):
        if self.conn is not None:
            self.conn.requests.pop(self.rid, None)
            self.conn = None
        self.context.cell_completed(self)


class Context:
    """One worker process and the namespace it holds."""

    def __init__(self, agent, cid, name, cwd, env, persist_path, setup=None, cwd_on_path=True):
        self.agent = agent
        self.id = cid
        self.name = name
        self.cwd = cwd
        self.env = env
        self.persist_path = persist_path
        self.setup = setup  # run by every fresh worker before its first cell
        self.setup_error = None  # what the current worker's setup raised
        self.cwd_on_path = cwd_on_path
        self.pid = None
        self.ready = False
        self.removed = False
        self.lost = False  # the namespace was lost since the last cell reported it
        self.cell = None
        self.cell_count = 0
        self.refresh_seen = agent.code.refresh
        self.restored = []
        self.not_restored = {}
        self.report_restore = False  # the next cell's end carries restored/not_restored
        self.python = None
        self.waiters = []  # callables(error or None) waiting for ready
        self._exit_waiters = []  # callables() waiting for the worker to be gone (remove)
        self._kill_reason = None
        self._forget_state = False
        self._pipes = {}
        self._pipes_watched = False
        self._ctl = None
        self._ctl_in = bytearray()
        self._ctl_out = deque()
        self._boot_stderr = b""
        self._spawn()

    def describe(self):
        return {
            "id": self.id,
            "name": self.name,
            "cwd": self.cwd,
            "persist": self.persist_path is not None,
            "pid": self.pid,
            "python": self.python,
            "busy": self.cell is not None,
            "restored": self.restored,
            "not_restored": self.not_restored,
            "setup": self.setup is not None,
            "setup_error": _error_text(self.setup_error),
            "cwd_on_path": self.cwd_on_path,
        }

    def cpu_time(self):
        """The worker's CPU time in clock ticks, or None."""
        if self.pid is None:
            return None
        try:
            with open("/proc/%d/stat" % self.pid, "rb") as f:
                fields = f.read(4096).rsplit(b")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            return None

    # -- the worker process ------------------------------------------------------------------

    def _spawn(self):
        agent = self.agent
        env = dict(agent.base_env)
        env["PWD"] = agent.paths.to_real(self.cwd)  # as for a command (commands.py)
        if not _has_route() and not any(k.lower().endswith("_proxy") for k in env):
            env["PIP_RETRIES"] = "0"  # ``!pip`` in a cell: nowhere to retry to, fail at once
        env.update(self.env)
        python = sys.executable or "/usr/bin/python3"
        parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        out_r, out_w = posix.pipe2(posix.O_CLOEXEC)
        err_r, err_w = posix.pipe2(posix.O_CLOEXEC)
        real_persist = agent.paths.to_real(self.persist_path) if self.persist_path else ""
        flags = ("s" if self.setup is not None else "") + ("" if self.cwd_on_path else "n")
        argv = [python, "-c", BOOT % (_agent_root(), _agent_root()), real_persist, flags]
        try:
            posix.chdir(agent.paths.to_real(self.cwd))
            self.pid = agent.spawn(
                python,
                argv,
                env,
                file_actions=[
                    (posix.POSIX_SPAWN_OPEN, 0, "/dev/null", posix.O_RDONLY, 0),
                    (posix.POSIX_SPAWN_DUP2, out_w, 1),
                    (posix.POSIX_SPAWN_DUP2, err_w, 2),
                    (posix.POSIX_SPAWN_DUP2, child.fileno(), 3),
                ],
                setsid=True,
                setsigdef=(SIGINT, SIGPIPE, SIGXFSZ),
            )
        except OSError as exc:
            parent.close()
            for fd in (out_r, err_r):
                posix.close(fd)
            raise AgentError(
                "code_context_failed", "cannot start %s: %s" % (python, exc.strerror or exc)
            ) from None
        finally:
            child.close()
            posix.close(out_w)
            posix.close(err_w)
        self.ready = False
        self._boot_stderr = b""
        self._ctl_in = bytearray()
        self._ctl_out.clear()
        self._ctl = parent.detach()
        posix.set_blocking(self._ctl, False)
        agent.loop.watch(self._ctl, select.EPOLLIN, self._on_control)
        self.setup_error = None
        if self.setup is not None:  # the worker reads it first, before it says ready
            self._send_control({"op": "setup", "code": self.setup})
            pid = self.pid
            agent.loop.call_at(time.monotonic() + SETUP_TIMEOUT, lambda: self._setup_late(pid))
        self._pipes = {p.STDOUT: out_r, p.STDERR: err_r}
        for fd in self._pipes.values():
            posix.set_blocking(fd, False)
        self._pipes_watched = False
        self.pipes_wanted(True)
        agent.commands[self.pid] = self  # reaped, and killed at shutdown, with the commands

    def _setup_late(self, pid):
        """Setup still running: interrupt it (reported as its error); if it ignores that,
        the worker is killed and the context fails to start, with no respawn loop."""
        if self.pid != pid or self.ready:
            return
        self.signal(SIGINT)
        self.signal(SIGCONT)  # after: a stopped worker takes the pending SIGINT on waking

        def grace_over():
            if self.pid == pid and not self.ready:
                self.kill("setup")

        self.agent.loop.call_at(time.monotonic() + DEFAULT_GRACE, grace_over)

    def signal(self, signum):
        if self.pid is not None:
            try:
                posix.killpg(self.pid, signum)
            except OSError:
                try:
                    posix.kill(self.pid, signum)
                except OSError:
                    pass

    def kill(self, reason):
        """Kill the worker; ``on_exit`` decides what happens next from ``reason``."""
        self._kill_reason = reason
        self.signal(SIGKILL)

    # -- output pipes ------------------------------------------------------------------------

    def pipes_wanted(self, wanted):
        if wanted == self._pipes_watched:
            return
        self._pipes_watched = wanted
        for stream, fd in self._pipes.items():
            if wanted:
                self.agent.loop.watch(fd, select.EPOLLIN, self._reader(stream))
            else:
                self.agent.loop.unwatch(fd)

    def _reader(self, stream):
        def on_events(events):
            self._read(stream)

        return on_events

    def _read(self, stream, drain=False):
        fd = self._pipes.get(stream)
        while fd is not None:
            try:
                data = posix.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.agent.loop.unwatch(fd)
                posix.close(fd)
                del self._pipes[stream]
                return
            cell = self.cell
            if cell is not None and not cell.finished:
                cell.output(stream, data)
            elif not self.ready and stream == p.STDERR:
                self._boot_stderr = (self._boot_stderr + data)[-BOOT_STDERR:]
            if not drain:
                return

    def _drain(self):
        """Read what the worker wrote before its last control message: output comes first."""
        for stream in list(self._pipes):
            self._read(stream, drain=True)

    # -- control socket ----------------------------------------------------------------------

    def _send_control(self, message):
        body = p.dumps(message)
        self._ctl_out.append(p.CREDIT.pack(len(body)) + body)
        self._write_control()

    def _write_control(self, events=0):
        fd = self._ctl
        while self._ctl_out and fd is not None:
            chunk = self._ctl_out[0]
            try:
                sent = posix.write(fd, chunk)
            except BlockingIOError:
                break
            except OSError:
                self._ctl_out.clear()
                break
            if sent < len(chunk):
                self._ctl_out[0] = chunk[sent:]
                break
            self._ctl_out.popleft()
        if fd is not None:
            mask = select.EPOLLIN | (select.EPOLLOUT if self._ctl_out else 0)
            self.agent.loop.watch(fd, mask, self._on_control)

    def _on_control(self, events):
        if events & select.EPOLLOUT:
            self._write_control()
        if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            data = posix.read(self._ctl, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_control()
            return
        buf = self._ctl_in
        buf += data
        offset = 0
        while len(buf) - offset >= 4:
            (length,) = p.CREDIT.unpack_from(buf, offset)
            if length > MAX_CONTROL:
                self.kill("broken")
                return
            if len(buf) - offset - 4 < length:
                break
            body = bytes(buf[offset + 4 : offset + 4 + length])
            offset += 4 + length
            try:
                message = p.loads(body)
            except ValueError:
                self.kill("broken")
                return
            if isinstance(message, dict):
                self._on_message(message)
        del buf[:offset]

    def _close_control(self):
        if self._ctl is not None:
            self.agent.loop.unwatch(self._ctl)
            posix.close(self._ctl)
            self._ctl = None

    def _on_message(self, message):
        kind = message.get("type")
        if kind == "ready":
            self.ready = True
            self.python = message.get("python")
            self.restored = message.get("restored") or []
            self.not_restored = message.get("not_restored") or {}
            setup_error = message.get("setup_error")
            self.setup_error = setup_error if isinstance(setup_error, dict) else None
            self.report_restore = self.persist_path is not None
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                waiter(None)
            return
        if kind == "alive":  # the heartbeat orders nothing: no drain
            cell = self.cell
            if cell is not None and not cell.finished and message.get("cell") == self.cell_count:
                cell.alive()
            return
        # Output written before this message comes first. For results and progress the
        # worker waits for the ack before it writes more, so the drain takes exactly that.
        self._drain()
        if kind in ("result", "progress"):
            self._send_control({"op": "ack"})
        cell = self.cell
        if cell is None or cell.finished or message.get("cell") != self.cell_count:
            return  # late, or forged by user code writing to fd 3
        if kind == "result":
            event = {
                "event": "result",
                "data": message.get("data"),
                "main": bool(message.get("main")),
            }
            if message.get("dropped"):
                event["dropped"] = message["dropped"]
            cell.event(event)
        elif kind == "progress":
            cell.event({"event": "progress", "message": str(message.get("message", ""))})

        elif kind == "done":
            lost, self.lost = self.lost, False
            end = {
                "context": self.id,  # the caller may have named it
                "execution_count": message.get("execution_count"),
                "error": message.get("error"),
                "not_persisted": message.get("not_persisted"),
                "state_lost": lost,
                "cwd": self._shown_cwd(message.get("cwd")),
            }
            if self.report_restore:  # the first cell after a (re)start says what came back
                self.report_restore = False
                end["restored"] = self.restored
                end["not_restored"] = self.not_restored
            cell.finish(end)

    def _shown_cwd(self, cwd):
        """The worker's working directory as a sandbox path, or None."""
        if not isinstance(cwd, str) or not cwd.startswith("/") or len(cwd) > MAX_CWD:
            return None
        return self.agent.paths.to_shown(cwd)

    # -- cells -------------------------------------------------------------------------------

    def run(self, conn, rid, request):
        code = request.get("code")
        if not isinstance(code, str):
            raise AgentError("invalid_argument", "code must be a string")
        env = _str_dict(request.get("env"), "env")  # set for this cell only
        if any(not k or "=" in k or "\0" in k or "\0" in v for k, v in env.items()):
            raise AgentError("invalid_argument", "env names need no '=' and no NUL, values no NUL")
        if self.cell is not None:
            raise AgentError(
                "code_context_busy",
                "code context %s is still running a cell; interrupt it or wait" % self.id,
            )
        # A worker killed while idle may not be reaped yet (its SIGCHLD still queued behind
        # this request): reap now, so the cell goes to its replacement, not into a dead socket.
        self.agent.reap()
        if self.pid is None:  # its worker failed to start before: try again
            self._spawn()
        cell = Cell(self, conn, rid, request)
        self.cell = cell
        self.cell_count += 1
        conn.requests[rid] = cell
        if request.get("started"):  # asked for by background runs; a foreground one waits anyway
            conn.send_json(p.EVENT, rid, {"event": "started", "context": self.id})
        refresh = self.refresh_seen != self.agent.code.refresh
        self.refresh_seen = self.agent.code.refresh
        message = {"op": "run", "cell": self.cell_count, "code": code, "refresh": refresh}
        if cell.heartbeat_period() is not None:
            message["heartbeat"] = cell.heartbeat_period()
        if env:
            message["env"] = env
        self._send_control(message)

    def cell_completed(self, cell):
        if self.cell is cell:
            self.cell = None
            self.pipes_wanted(True)  # output between cells is read and dropped

    def interrupt(self, cell=None, timed_out=False):
        """SIGINT to the running cell; after the grace period, kill and restart the worker."""
        cell = cell or self.cell
        if cell is None or cell is not self.cell or cell.finished:
            return False
        if timed_out:
            cell.timed_out = True
        else:
            cell.interrupted = True
        # The message names the cell, so a signal that reaches the worker between two cells
        # is neither lost (the next cell was meant) nor misapplied (the last one was).
        self._send_control({"op": "interrupt", "cell": self.cell_count})
        # SIGINT first: a stopped worker keeps it pending and takes it the moment SIGCONT
        # wakes it, before running any more of the cell (woken first, it could finish the
        # cell and meet the SIGINT between cells, where it is dropped).
        self.signal(SIGINT)
        self.signal(SIGCONT)
        loop = self.agent.loop

        def grace_over():
            if self.cell is cell and not cell.finished:
                self.kill("grace")

        cell.add_timer(loop.call_at(time.monotonic() + cell.grace, grace_over))
        return True

    def restart(self, waiter, forget=False):
        """A new worker; ``forget`` also deletes a persistent context's saved state (once the
        old worker, which may be saving it, is gone), so the namespace starts empty."""
        self.waiters.append(waiter)
        self._forget_state = forget
        if self.pid is None:  # its worker failed to start: try again
            self._respawn()
        else:
            self.kill("restart")

    def _respawn(self):
        if self._forget_state and self.persist_path:
            try:
                posix.unlink(self.agent.paths.to_real(self.persist_path))
            except FileNotFoundError:
                pass
        self._forget_state = False
        self._spawn()

    def remove(self, waiter):
        """Forget the context at once; ``waiter()`` runs once its process is gone."""
        self.removed = True
        self.agent.code.contexts.pop(self.id, None)
        if self.pid is None:
            waiter()
        else:
            self._exit_waiters.append(waiter)
            self.kill("remove")

    # -- the worker ended ----------------------------------------------------------------------

    def on_exit(self, status):
        self._drain()
        if self._ctl is not None:  # a "done" may still sit in the socket
            self._on_control(select.EPOLLIN)
        self.agent.commands.pop(self.pid, None)
        self.pid = None
        self._close_control()
        for stream in list(self._pipes):
            fd = self._pipes.pop(stream)
            self.agent.loop.unwatch(fd)
            posix.close(fd)
        self._pipes_watched = False
        reason, self._kill_reason = self._kill_reason, None
        failed_start = not self.ready and reason in (None, "setup")
        self.ready = False
        cell = self.cell
        if cell is not None and not cell.finished:
            cell.state_lost = not failed_start
            error = self._death(reason, status, cell)
            if failed_start:
                error = {
                    "name": "ContextFailed",
                    "value": self._boot_failure(status),
                    "traceback": "",
                }
            cell.finish({"execution_count": None, "error": error})
        if self.removed:
            self._fail_waiters("code_context_not_found", "the code context was removed")
            waiters, self._exit_waiters = self._exit_waiters, []
            for waiter in waiters:
                waiter()
            return
        if failed_start:  # no respawn loop: the next request tries again
            self._fail_waiters("code_context_failed", self._boot_failure(status))
            return
        # A worker that died idle: the next cell learns that the state is gone.
        self.lost = cell is None and reason != "restart"
        self._respawn()

    def _boot_failure(self, status):
        text = self._boot_stderr.decode("utf-8", "replace").strip()
        return "the code context's Python exited while starting (status %d)%s" % (
            status,
            ": " + text[-2000:] if text else "",
        )

    def _fail_waiters(self, code, message):
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter(AgentError(code, message))

    def _death(self, reason, status, cell):
        if reason == "grace":
            return {
                "name": "ContextKilled",
                "value": "the cell ignored the interrupt for %g s and was killed; the context "
                "restarted empty: its state was lost" % cell.grace,
                "traceback": "",
            }
        if reason == "broken":
            return {
                "name": "ContextDied",
                "value": "the context's worker sent garbage on its control socket (did the "
                "cell write to fd 3?) and was killed; it restarted empty: its state was lost",
                "traceback": "",
            }
        if reason in ("restart", "remove"):
            return {
                "name": "ContextRestarted",
                "value": "the code context was %s while this cell ran; its state was lost"
                % ("restarted" if reason == "restart" else "removed"),
                "traceback": "",
            }
        if posix.WIFSIGNALED(status):
            how = "was killed by signal %d" % posix.WTERMSIG(status)
            if posix.WTERMSIG(status) == SIGKILL:
                how += " (out of memory?)"
        else:
            how = "exited with status %d" % posix.WEXITSTATUS(status)
        return {
            "name": "ContextDied",
            "value": "the code context's process %s; it restarted empty: its state was lost" % how,
            "traceback": "",
        }


class Contexts:
    """The agent's code contexts, by id; ``default`` is created on first use."""

    def __init__(self, agent):
        self.agent = agent
        self.contexts = {}
        self.refresh = 0  # bumped after each install: workers re-scan their paths
        self._next = 0

    def get(self, cid, create=False):
        """The context with this id or name; ``create`` makes a missing name (first use)."""
        context = self.contexts.get(cid or "default")
        if context is None:
            if cid in (None, "default"):
                return self.create("default", None, None, {}, None)  # no setup
            for candidate in self.contexts.values():
                if candidate.name == cid:
                    return candidate
            if create and _name_ok(cid) and not _is_id(cid):
                return self.create(None, cid, None, {}, False)
            raise AgentError("code_context_not_found", "no code context %r" % (cid,))
        return context

    def create(self, cid, name, cwd, env, persist, setup=None, cwd_on_path=True):
        agent = self.agent
        if len(self.contexts) >= MAX_CONTEXTS:
            raise AgentError("invalid_argument", "too many code contexts (%d)" % MAX_CONTEXTS)
        cwd = cwd or agent.workdir
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise AgentError("invalid_argument", "cwd must be an absolute path")
        if not _is_dir(agent.paths.to_real(cwd)):
            raise AgentError("file_not_found", "working directory does not exist: " + cwd)
        if name is not None:
            if not _name_ok(name):
                raise AgentError(
                    "invalid_argument", "a context name is 1-64 letters, digits, '_', '.', '-'"
                )
            if _is_id(name):  # ids and names never collide
                raise AgentError(
                    "invalid_argument", "%r is a context id's form: choose another name" % name
                )
            if any(c.name == name for c in self.contexts.values()):
                raise AgentError("invalid_argument", "a code context named %r exists" % name)
        persist_path = None
        if persist:
            persist_path = "%s/.sandlot/contexts/%s.pickle" % (agent.workdir, name or "default")
        if cid is None:
            self._next += 1
            cid = "ctx-%d" % self._next
        if setup is not None:
            if not isinstance(setup, str):
                raise AgentError("invalid_argument", "setup must be Python source text")
            if len(setup.encode("utf-8", "surrogatepass")) > MAX_SETUP:
                raise AgentError(
                    "invalid_argument", "setup code is at most %d KiB" % (MAX_SETUP // 1024)
                )
        if not isinstance(cwd_on_path, bool):
            raise AgentError("invalid_argument", "cwd_on_path must be true or false")
        context = Context(agent, cid, name, cwd, env, persist_path, setup, cwd_on_path)
        self.contexts[cid] = context
        return context


def _error_text(error):
    """A worker's error payload as one bounded line of text, or None."""
    if not isinstance(error, dict):
        return None
    text = "%s: %s" % (error.get("name"), error.get("value"))
    return text[:MAX_SETUP_ERROR]


def _contexts(agent):
    if agent.code is None:
        agent.code = Contexts(agent)
    return agent.code


def _answer_when_ready(context, conn, rid):
    def on_ready(error):
        if error is not None:
            conn.requests.pop(rid, None)
            conn.send_error(rid, error)
        else:
            conn.requests.pop(rid, None)
            conn.send_json(p.END, rid, context.describe())

    if context.ready:
        on_ready(None)
    else:
        conn.requests[rid] = _Waiting()
        context.waiters.append(on_ready)


class _Waiting:
    """A request that waits for a worker to be ready; it has no streams."""

    def on_grant(self, stream, amount):
        pass

    def on_data(self, stream, data):
        pass

    def on_eof(self, stream):
        pass

    def cancel(self):
        pass

    def detach(self):
        pass


# -- operations (see server.OPERATIONS) ------------------------------------------------------


def op_create(agent, conn, rid, request):
    persist = bool(request.get("persist"))
    context = _contexts(agent).create(
        None,
        request.get("name"),
        request.get("cwd"),
        _str_dict(request.get("env"), "env"),
        persist,
        setup=request.get("setup"),
        cwd_on_path=request.get("cwd_on_path", True),
    )
    _answer_when_ready(context, conn, rid)


def op_run(agent, conn, rid, request):
    _contexts(agent).get(request.get("context"), create=True).run(conn, rid, request)


def op_restart(agent, conn, rid, request):
    context = _contexts(agent).get(request.get("context"))
    conn.requests[rid] = _Waiting()

    def on_ready(error):
        conn.requests.pop(rid, None)
        if error is not None:
            conn.send_error(rid, error)
        else:
            conn.send_json(p.END, rid, context.describe())

    context.restart(on_ready, forget=bool(request.get("forget_state")))


def op_interrupt(agent, request):
    context = _contexts(agent).get(request.get("context"))
    return {"interrupted": context.interrupt()}


def op_remove(agent, conn, rid, request):
    cid = request.get("context")
    if cid in (None, "default") and "default" not in _contexts(agent).contexts:
        raise AgentError("code_context_not_found", "no code context %r" % (cid,))
    context = _contexts(agent).get(cid)  # by id or name
    conn.requests[rid] = _Waiting()

    def gone():  # answer once the process is gone: its memory is free when remove returns
        conn.requests.pop(rid, None)
        conn.send_json(p.END, rid, {})

    context.remove(gone)


def op_list(agent, request):
    return {"contexts": [c.describe() for c in _contexts(agent).contexts.values()]}


def op_install(agent, conn, rid, request):
    from .commands import Command

    packages = request.get("packages")
    if (
        not isinstance(packages, list)
        or not packages
        or not all(isinstance(x, str) and x and not x.startswith("-") for x in packages)
    ):
        raise AgentError(
            "invalid_argument", "packages must be a non-empty list of names (no options)"
        )
    argv = [sys.executable, "-m", "pip", "install", "--user", "--no-input", "--progress-bar", "off"]
    if request.get("upgrade"):
        argv.append("--upgrade")
    index_url = request.get("index_url")
    if index_url is not None:
        if not isinstance(index_url, str) or not index_url:
            raise AgentError("invalid_argument", "index_url must be a URL")
        argv += ["--index-url", index_url]
    argv += ["--", *packages]
    routed = _has_route()
    env = {"PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proxied = any(k.lower().endswith("_proxy") for k in agent.base_env)
    if not routed and not proxied:
        env["PIP_RETRIES"] = "0"  # nowhere to retry to: fail in seconds, not minutes
    command = Command(
        agent,
        conn,
        rid,
        {"argv": argv, "env": env, "timeout": request.get("timeout")},
    )
    command.end_extra = {"network": routed or proxied}
    contexts = _contexts(agent)

    def finished(exit_code):
        contexts.refresh += 1

    command.on_finished = finished


def _has_route():
    """Whether the sandbox has any route off this machine (not just loopback)."""
    for path in ("/proc/net/route", "/proc/net/ipv6_route"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            return True  # cannot tell: do not claim the network is off
        if path.endswith("ipv6_route"):
            if any(not line.rstrip().endswith("lo") for line in lines if line.strip()):
                return True
        elif len(lines) > 1:
            return True
    return False
