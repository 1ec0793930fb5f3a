"""The code-context worker: one process per context, running cells in one namespace.

The agent starts it with stdout and stderr on pipes it reads (so ``print``, C extensions and
subprocesses all stream the same way) and a control socket on fd 3, which carries length-
prefixed JSON: the context's setup code and cells to run one way; ``ready``, ``result``,
``progress``, ``alive`` (the heartbeat) and ``done`` the other.
A cell runs like a notebook cell: its statements, then the value of a trailing expression as
the main result (a trailing ``;`` hides it). SIGINT raises ``KeyboardInterrupt`` only while
user code runs, never inside the worker's own bookkeeping, so an interrupt cannot corrupt the
control stream. Standard library only.
"""

import _signal
import _struct
import builtins
import posix
import sys

from . import display as _display
from . import protocol as _p

CONTROL_FD = 3
LENGTH = _struct.Struct("!I")
MAX_CWD = 4096  # a longer working directory is reported as unknown
SETUP_OUTPUT = 2000  # the tail of a failing setup's output kept in its error
MAX_RESULT = 12 * 1024 * 1024  # one result message; bigger ones keep only their text
RESULT_BUDGET = 64 * 1024 * 1024  # all results of one cell
HIDDEN = frozenset(["display", "sandlot_progress"])


class _State:
    armed = False  # user code is running: SIGINT may raise
    pending = False  # SIGINT arrived while disarmed
    cell = None
    result_bytes = 0
    shown = ()  # ids of figures already displayed in this cell


state = _State()


def _on_sigint(signum, frame):
    if state.armed:
        raise KeyboardInterrupt
    # Between cells, or in the worker's own code: whether it was meant for the cell about to
    # run (sent before the worker got to it) or for one that just ended is settled by the
    # agent's "interrupt" message, checked when user code starts (see Kernel._execute).
    state.pending = True


class Control:
    """fd 3: blocking, length-prefixed JSON both ways.

    From the agent: ``run``, ``ack`` (a result or progress message was ordered after the
    output before it) and ``interrupt`` (sent just before each SIGINT, naming the cell).
    """

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b""
        self.backlog = []  # messages read while waiting for something else
        self.interrupts = set()  # cells the agent asked to interrupt
        self.lock = None  # set by heartbeat(): frames from two threads must not interleave

    def send(self, message, ack=False):
        """Send; with ``ack``, also wait until the agent has taken in the output written
        before the message, so later output cannot overtake it."""
        body = _p.dumps(message)
        data = LENGTH.pack(len(body)) + body
        armed, state.armed = state.armed, False  # an interrupt must not cut a frame in half
        try:
            self._write(data)
            while ack:
                reply = self._next(block=True)
                if reply is None:
                    raise SystemExit(0)  # the agent is gone
                ack = reply.get("op") != "ack"
                if ack:
                    self._keep(reply)
        finally:
            state.armed = armed
        if armed and state.pending:  # during a cell, a SIGINT can only be for this cell
            state.pending = False
            raise KeyboardInterrupt

    def _write(self, data):
        lock = self.lock
        if lock is not None:
            lock.acquire()
        try:
            view = memoryview(data)
            while view:
                view = view[posix.write(self.fd, view) :]
        finally:
            if lock is not None:
                lock.release()

    def heartbeat(self, cell, period):
        """Start a thread that says "alive" every ``period`` seconds while ``cell`` runs, so
        the agent tells a quiet cell (``time.sleep``, a C call that releases the GIL) from a
        frozen worker. Returns the function that stops it."""
        import threading

        if self.lock is None:
            self.lock = threading.Lock()
            posix.register_at_fork(after_in_child=self._fresh_lock)
        body = _p.dumps({"type": "alive", "cell": cell})
        frame = LENGTH.pack(len(body)) + body
        stop = threading.Event()

        def beat():
            while not stop.wait(period):
                try:
                    self._write(frame)
                except OSError:
                    return

        thread = threading.Thread(target=beat, name="sandlot-heartbeat", daemon=True)
        thread.start()

        def stopper():
            stop.set()
            thread.join()

        return stopper

    def _fresh_lock(self):
        import threading

        self.lock = threading.Lock()  # a child forked mid-beat must not inherit it held

    def receive(self):
        """The next request (blocking), or None when the agent is gone."""
        while not self.backlog:
            message = self._next(block=True)
            if message is None:
                return None
            self._keep(message)
        return self.backlog.pop(0)

    def interrupted(self, cell):
        """Whether the agent asked to interrupt ``cell`` (reads what is there, never waits)."""
        while True:
            message = self._next(block=False)
            if message is None:
                break
            self._keep(message)
        return cell in self.interrupts

    def _keep(self, message):
        if message.get("op") == "interrupt":
            self.interrupts.add(message.get("cell"))
        elif message.get("op") != "ack":
            self.backlog.append(message)

    def _next(self, block):
        while True:
            if len(self.buffer) >= 4:
                (length,) = LENGTH.unpack_from(self.buffer)
                if len(self.buffer) >= 4 + length:
                    body = self.buffer[4 : 4 + length]
                    self.buffer = self.buffer[4 + length :]
                    message = _p.loads(body)
                    return message if isinstance(message, dict) else {}
            try:
                if not block:
                    posix.set_blocking(self.fd, False)
                try:
                    chunk = posix.read(self.fd, 1 << 20)
                finally:
                    if not block:
                        posix.set_blocking(self.fd, True)
            except InterruptedError:
                continue
            except BlockingIOError:
                return None
            if not chunk:
                return None
            self.buffer += chunk


class Kernel:
    def __init__(self, control, persist_path, setup=False):
        import types

        self.control = control
        self.pid = posix.getpid()
        self.count = 0
        self.setup = setup  # the agent sends the context's setup code first
        self.setup_error = None  # reported by the next cell, once
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = builtins
        module.display = self.display
        module.sandlot_progress = self.progress
        builtins.sandlot_progress = self.progress  # also from modules the cell calls into
        # A builtin, not a global: a user's own ``progress`` shadows it and is persisted as
        # theirs, and ours is never saved.
        builtins.progress = self.progress
        sys.modules["__main__"] = module  # pickle, dataclasses and typing look things up here
        self.namespace = module.__dict__
        self.store = None
        self.restored = []
        self.not_restored = {}
        self._loop = None
        _display.install_matplotlib_backend(self._show)  # before a restored figure imports it
        if persist_path:
            from . import persist

            self.store = persist.Store(persist_path)
            self.restored, self.not_restored = self.store.load(self.namespace)

    # -- what user code calls ----------------------------------------------------------------

    def display(self, *objects):
        """Show each object as a rich result (HTML, images, ...), as Jupyter's display()."""
        for obj in objects:
            self._send_result(_display.bundle(obj, self._warn), main=False)
            if _display._is_figure(obj):
                state.shown = (*state.shown, id(obj))

    def progress(self, message=""):
        """Tell the caller this cell is alive (resets its inactivity timeout)."""
        _flush()
        message = {"type": "progress", "cell": state.cell, "message": str(message)}
        self.control.send(message, ack=True)

    def _show(self, *args, **kwargs):  # plt.show() under the inline backend
        self._flush_figures()

    # -- running cells -----------------------------------------------------------------------

    def serve(self):
        if self.setup:
            while True:
                try:
                    message = self.control.receive()
                    break
                except KeyboardInterrupt:
                    continue
            if message is None:
                return
            if message.get("op") == "setup":
                self.setup_error = self._run_setup(message.get("code") or "")
            else:  # cannot happen: the agent sends the setup first
                self.control.backlog.insert(0, message)
        self.control.send(
            {
                "type": "ready",
                "pid": posix.getpid(),
                "python": "%d.%d.%d" % sys.version_info[:3],
                "restored": self.restored,
                "not_restored": self.not_restored,
                "setup_error": self.setup_error,
            }
        )
        while True:
            try:
                message = self.control.receive()
            except KeyboardInterrupt:
                continue  # a stray interrupt between cells: nothing to stop
            if message is None:
                return
            if message.get("op") == "run":
                self.run(message)

    def _run_setup(self, source):
        """Run the context's setup code in the namespace (after a restore, so what it defines
        is fresh). Its output never reaches a cell: Python's ``sys.stdout``/``sys.stderr`` keep
        only their tail, for the error if setup fails; file descriptors 1 and 2 (subprocesses,
        C code) point at /dev/null, so a server that setup starts cannot fill anything."""
        import linecache

        filename = "<setup>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        error = None
        _flush()
        saved = (posix.dup(1), posix.dup(2))
        streams = (sys.stdout, sys.stderr)
        scratch = posix.open("/dev/null", posix.O_WRONLY)
        tail = _TailWriter()
        try:
            posix.dup2(scratch, 1)
            posix.dup2(scratch, 2)
            sys.stdout = sys.stderr = tail
            import ast

            flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
            try:
                code = compile(source, filename, "exec", flags)
                state.armed = True
                try:
                    self._exec(code)
                finally:
                    state.armed = False
            except BaseException:
                error = _error_payload(*sys.exc_info())
        finally:
            sys.stdout, sys.stderr = streams
            posix.dup2(saved[0], 1)
            posix.dup2(saved[1], 2)
            for fd in (*saved, scratch):
                posix.close(fd)
        if error is not None:
            output = tail.text
            error = {
                "name": "SetupError",
                "value": "the context's setup code raised %s: %s" % (error["name"], error["value"]),
                "traceback": error["traceback"]
                + ("\nsetup output (its end):\n" + output if output.strip() else ""),
            }
        return error

    def run(self, message):
        state.cell = message.get("cell")
        state.result_bytes = 0
        state.shown = ()
        if message.get("refresh"):
            _refresh_paths()
        error = None
        if self.setup_error is not None:  # reported once, instead of running the cell
            error, self.setup_error = dict(self.setup_error), None
            error["value"] += "; this cell did not run (the context is usable: run it again)"
            self.control.send(
                {"type": "done", "cell": state.cell, "execution_count": None, "error": error}
            )
            state.cell = None
            return
        self.count += 1
        period = message.get("heartbeat")
        stop_heartbeat = None
        if isinstance(period, (int, float)) and not isinstance(period, bool) and period > 0:
            stop_heartbeat = self.control.heartbeat(state.cell, period)
        saved = _set_env(message.get("env"))
        try:
            error = self._execute(message.get("code", ""))
        except KeyboardInterrupt:  # landed in the worker's own code between two checks
            error = _error_payload(*sys.exc_info())
        finally:
            _restore_env(saved)
        _flush()
        if posix.getpid() != self.pid:  # a child the cell forked must not become a 2nd kernel
            posix._exit(0)
        if stop_heartbeat is not None:
            stop_heartbeat()
        try:
            cwd = posix.getcwd()
        except OSError:  # deleted, or unreadable
            cwd = None
        not_persisted = None
        if self.store is not None:
            try:
                not_persisted = self.store.save(self.namespace, HIDDEN)
            except Exception as exc:
                not_persisted = {"*": "saving the state failed: %s: %s" % (type(exc).__name__, exc)}
        self.control.send(
            {
                "type": "done",
                "cell": state.cell,
                "execution_count": self.count,
                "error": error,
                "not_persisted": not_persisted,
                "cwd": cwd if cwd is not None and len(cwd) <= MAX_CWD else None,
            }
        )
        state.cell = None

    def _execute(self, source):
        filename = "<cell-%d>" % self.count
        import linecache

        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            body, last = _compile(source, filename)
        except (SyntaxError, ValueError, OverflowError):
            etype, value, _ = sys.exc_info()
            return _error_payload(etype, value, None)
        try:
            state.armed = True
            try:
                if state.pending:  # a SIGINT came before the cell started: for this one?
                    state.pending = False
                    if self.control.interrupted(state.cell):
                        raise KeyboardInterrupt
                self._exec(body)
                value = self._exec(last) if last is not None else None
                if value is not None and not _hides_result(source):
                    self.namespace["_"] = value
                    self._send_result(_display.bundle(value, self._warn), main=True)
                    if _display._is_figure(value):
                        state.shown = (*state.shown, id(value))  # shown once, not flushed again
                self._flush_figures()
            finally:
                state.armed = False
        except BaseException:  # SystemExit and KeyboardInterrupt are the cell's, not ours
            etype, value, tb = sys.exc_info()
            _display.close_figures()
            return _error_payload(etype, value, tb)
        return None

    def _exec(self, code):
        result = eval(code, self.namespace)
        if code.co_flags & 0x80:  # CO_COROUTINE: the cell used top-level await
            if self._loop is None:
                import asyncio

                self._loop = asyncio.new_event_loop()
            result = self._loop.run_until_complete(result)
        return result

    def _flush_figures(self):
        figures = _display.open_figures()
        if not figures:
            return
        for figure in figures:
            if id(figure) not in state.shown:
                self.display(figure)
        _display.close_figures()

    def _send_result(self, data, main):
        _flush()
        message = {"type": "result", "cell": state.cell, "data": data, "main": main}
        try:
            body_size = len(_p.dumps(message))
        except (TypeError, ValueError):  # e.g. _repr_json_ returned something JSON cannot hold
            data.pop("application/json", None)
            body_size = len(_p.dumps(message))
        if body_size > MAX_RESULT or state.result_bytes + body_size > RESULT_BUDGET:
            text = data.get("text/plain", "")[:4096]
            dropped = sorted(k for k in data if k != "text/plain")
            message["data"] = {"text/plain": text}
            message["dropped"] = dropped
            body_size = len(text) + 256
        state.result_bytes += body_size
        self.control.send(message, ack=True)

    def _warn(self, method, exc):
        sys.stderr.write("sandlot: %s failed: %s: %s\n" % (method, type(exc).__name__, exc))


class _TailWriter:
    """A text stream that keeps only its last ``SETUP_OUTPUT`` characters."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self):
        self.text = ""

    def write(self, text):
        text = str(text)
        self.text = (self.text + text)[-SETUP_OUTPUT:]
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass

    def isatty(self):
        return False

    def writable(self):
        return True


def _compile(source, filename):
    """(statements, trailing expression or None) as code objects."""
    import ast

    flags = ast.PyCF_ONLY_AST | getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
    try:
        tree = compile(source, filename, "exec", flags)
    except SyntaxError:
        escaped = _shell_escapes(source)
        if escaped is None:
            raise
        tree = compile(escaped, filename, "exec", flags)
    code_flags = flags & ~ast.PyCF_ONLY_AST
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expression = ast.Expression(tree.body.pop().value)
        last = compile(expression, filename, "eval", code_flags)
    body = compile(tree, filename, "exec", code_flags)
    return body, last


def _shell_escapes(source):
    """The cell with IPython's shell escapes as Python, or None if it has none. Notebooks and
    E2B's code interpreter (and the agents written for them: ``!pip install ...``) accept
    ``!cmd`` and ``%pip ...`` lines: each becomes a statement that runs the command through
    the shell, its output the cell's, its exit status ignored (as in IPython). Tried only on
    a cell that is not Python as it stands, so valid code is never rewritten; one line stays
    one line, so tracebacks point at the cell's own lines. ``{var}`` is not expanded."""
    import re
    import shlex

    escape = re.compile(r"([ \t]*)(?:!|%pip(?=[ \t]))(.*)")
    lines = source.splitlines(True)
    changed = False
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        found = escape.fullmatch(body)
        if found is None:
            continue
        indent, command = found.groups()
        if not body.lstrip().startswith("!"):
            command = "%s -m pip%s" % (shlex.quote(sys.executable), command)
        statement = '__import__("subprocess").call(%r, shell=True)' % command.strip()
        lines[i] = "%sif %s: pass%s" % (indent, statement, line[len(body) :])
        changed = True
    return "".join(lines) if changed else None


def _hides_result(source):
    """A trailing ``;`` hides the value, as in Jupyter."""
    if ";" not in source:
        return False
    import io
    import tokenize

    last = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type not in (
                tokenize.NEWLINE,
                tokenize.NL,
                tokenize.COMMENT,
                tokenize.ENDMARKER,
                tokenize.INDENT,
                tokenize.DEDENT,
            ):
                last = token
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.string == ";"


def _error_payload(etype, value, tb):
    import traceback

    # The traceback shows the user's frames only: the worker's (the cell runner, the SIGINT
    # handler, the import hook) are noise.
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(("<cell-", "<setup")):
        tb = tb.tb_next
    report = traceback.TracebackException(etype, value, tb)
    report.stack = traceback.StackSummary.from_list(
        [frame for frame in report.stack if not frame.filename.startswith(_AGENT_FILES)]
    )
    return {
        "name": etype.__name__,
        "value": str(value),
        "traceback": "".join(report.format()),
    }


_AGENT_FILES = __file__.rsplit("/", 1)[0] + "/"


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _set_env(env):
    """A cell's own environment variables (E2B's ``env_vars``): set for the cell only; what
    they replaced is returned for :func:`_restore_env`."""
    if not env:
        return None
    import os

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    return saved


def _restore_env(saved):
    if not saved:
        return
    import os

    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _refresh_paths():
    """Packages pip just put in the user site become importable without a restart."""
    import importlib
    import site

    user_site = site.getusersitepackages()
    if site.ENABLE_USER_SITE and user_site not in sys.path and posix.access(user_site, posix.F_OK):
        site.addsitedir(user_site)  # its .pth files too
        if user_site in sys.path:  # before the system's, as site.py puts it: an upgrade wins
            sys.path.remove(user_site)
            sys.path.insert(_first_site_dir(), user_site)
    # Python 3.9 caches "no finder" for a folder that did not exist yet: drop it.
    if sys.path_importer_cache.get(user_site, True) is None:
        del sys.path_importer_cache[user_site]
    importlib.invalidate_caches()


def _first_site_dir():
    for index, entry in enumerate(sys.path):
        if entry.endswith(("site-packages", "dist-packages")):
            return index
    return len(sys.path)


class _AfterPip:
    """Last on ``sys.meta_path``: an import nothing found is looked up again once the user
    site appeared after the worker started (``pip install`` from a cell, a command or another
    context; pip makes the folder on its first install). Costs a check per failed import."""

    def find_spec(self, name, path=None, target=None):
        if path is not None:  # a submodule: its package's own path
            return None
        import site

        user_site = site.getusersitepackages()
        if user_site in sys.path or not site.ENABLE_USER_SITE:
            return None
        if not posix.access(user_site, posix.F_OK):
            return None
        _refresh_paths()
        from importlib.machinery import PathFinder

        return PathFinder.find_spec(name)


def _streams():
    import io

    for fd, name in ((1, "stdout"), (2, "stderr")):
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(
            io.BufferedWriter(raw, 64 * 1024),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=True,
        )
        setattr(sys, name, stream)
        setattr(sys, "__%s__" % name, stream)


def _forget_agent(root):
    """The user's namespace must not see the agent: ``import agent`` is theirs to define."""
    if root in sys.path:
        sys.path.remove(root)
    for name in list(sys.modules):
        if name == "agent" or name.startswith("agent."):
            del sys.modules[name]


def _cell_folder_after_stdlib():
    """Put the cell's folder ('') after the standard library but before installed packages.

    A local ``ast.py`` or ``random.py`` must not replace the standard module (the worker
    imports some lazily, and it would confuse the user's own imports too), while a local
    module still wins over an installed package of the same name, as in a notebook.
    """
    if "" not in sys.path:
        return
    sys.path.remove("")
    for index, entry in enumerate(sys.path):
        if entry.endswith(("site-packages", "dist-packages")):
            sys.path.insert(index, "")
            return
    sys.path.append("")


def main(root):
    flags = sys.argv[2] if len(sys.argv) > 2 else ""  # "s": a setup comes; "n": no cwd on path
    if "n" in flags:
        while "" in sys.path:
            sys.path.remove("")
    else:
        _cell_folder_after_stdlib()
    sys.meta_path.append(_AfterPip())
    persist_path = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
    sys.argv = [""]
    posix.set_inheritable(CONTROL_FD, False)  # subprocesses of cells must not get it
    _signal.signal(_signal.SIGINT, _on_sigint)
    _streams()
    control = Control(CONTROL_FD)
    # Kernel imports what it needs before the agent is forgotten.
    kernel = Kernel(control, persist_path, setup="s" in flags)
    _forget_agent(root)
    kernel.serve()
