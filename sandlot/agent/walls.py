"""The agent's own walls: out of reach of the commands it runs.

Commands run as the agent's user, in its namespaces. What keeps them away from the agent:

- The agent is not dumpable (``prctl(PR_SET_DUMPABLE, 0)``, before any command exists): a
  process of the same uid without ``CAP_SYS_PTRACE`` cannot ptrace it, open
  ``/proc/<agent>/mem``, ``fd/`` or ``environ``, or take its descriptors with ``pidfd_getfd``.
  The sandbox's seccomp filter (bwrap) denies ptrace and pidfd_getfd as well.
- Where the kernel has Landlock with scopes (ABI 6, Linux 6.12), commands are started from
  a thread of the agent that has entered a Landlock domain; the agent's own thread stays
  outside it. A process in the domain cannot signal the agent (a SIGSTOP would stop its
  clock and its deadline), trace it, or connect to an abstract socket made outside the
  domain; and, given ``writable`` folders, it may create, change or remove files only beneath
  them, so no command writes ``/proc/<pid>/mem`` of another process (a second wall behind the
  read-only mounts).

Both call libc through ``_ctypes`` (standard library, but an image may lack libffi); without
it, or on an older kernel, the agent runs without that wall and :func:`report` says which are
up.
"""

import _thread
import posix
import sys

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1
SCOPES_ABI = 6

# Filesystem rights Landlock governs here: every way of changing the tree, none of reading.
WRITE_FILE = 1 << 1
WRITE_ACCESS = {
    1: WRITE_FILE | (1 << 4) | (1 << 5) | (0x7F << 6),  # + remove dir/file, make char..sym
    2: 1 << 13,  # REFER (rename and link across folders)
    3: 1 << 14,  # TRUNCATE
}
DEVICE_ACCESS = WRITE_FILE | (1 << 14)
MAKE_BLOCK = 1 << 11
THREAD_STACK = 512 * 1024
M_ARENA_MAX = -8  # /dev: write to /dev/null and ttys, nothing else

_state = {"dumpable": True, "landlock": None, "seccomp": False}
_functions = {}


def _c(name):
    """A libc function through ``_ctypes`` itself: importing ``ctypes`` costs the agent's
    start-up ~4 ms more. Arguments are C longs or ``bytes`` (read-only pointers), results
    C longs."""
    if not _functions:
        import _ctypes

        class c_long(_ctypes._SimpleCData):
            _type_ = "l"

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = c_long

        _functions["_long"] = c_long
        _functions["_type"] = Function
        _functions["_libc"] = _ctypes.dlopen(None, 0)
    found = _functions.get(name)
    if found is None:
        import _ctypes

        raw = _functions["_type"](_ctypes.dlsym(_functions["_libc"], name))
        c_long = _functions["_long"]

        def found(*args):
            return raw(*(c_long(a) if isinstance(a, int) else a for a in args))

        _functions[name] = found
    return found


def _u64(*values):
    return b"".join(v.to_bytes(8, sys.byteorder) for v in values)


def not_dumpable():
    """Make this process non-dumpable; False if that could not be done."""
    try:
        ok = _c("prctl")(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except Exception:  # no _ctypes (an image without libffi): run on, and report it
        return False
    _state["dumpable"] = not ok
    return ok


def landlock_abi():
    try:
        abi = _c("syscall")(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except Exception:
        return 0
    return max(abi, 0)


def _restrict_thread(writable):
    """Put the calling thread (only it: Landlock domains are per thread) in a new domain.
    Returns the ABI used, or 0 if the kernel cannot scope signals."""
    abi = landlock_abi()
    if abi < SCOPES_ABI:
        return 0
    syscall = _c("syscall")
    handled = 0
    if writable:
        for level, bits in WRITE_ACCESS.items():
            if abi >= level:
                handled |= bits
    attr = _u64(handled, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    ruleset = syscall(SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
    if ruleset < 0:
        return 0
    try:
        for path in writable:
            allowed = handled & DEVICE_ACCESS if path == "/dev" else handled
            _allow_beneath(syscall, ruleset, path, allowed)
        if _c("prctl")(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return 0
        if syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            return 0
    finally:
        posix.close(ruleset)
    return abi


def _allow_beneath(syscall, ruleset, path, allowed):
    try:
        fd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
    except OSError:
        return  # not in this sandbox: nothing to allow
    try:
        if posix.fstat(fd).st_mode & 0o170000 != 0o040000:
            # A single file (a bind of one): Landlock takes only file rights for it, and
            # refuses the whole rule otherwise.
            allowed &= DEVICE_ACCESS
        # struct landlock_path_beneath_attr, packed: u64 allowed_access, s32 parent_fd
        rule = _u64(allowed) + fd.to_bytes(4, sys.byteorder, signed=True)
        syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0)
    finally:
        posix.close(fd)


class Spawner:
    """Starts commands from threads inside the commands' Landlock domain (a child inherits
    the domain of the thread that made it), so that commands are in it and the agent is not.

    A thread of that domain (``_serve``) keeps one thread ready per next command, which has
    entered a nested domain of its own: commands may still signal one another (``kill %1``,
    ``pkill``), but none can open another's ``/proc/<pid>/fd``, ``mem`` or take its
    descriptors, so no command changes what another writes to its pipes. A command's thread
    lives as long as the command (a process's parent-death signal follows the *thread* that
    made it), then :meth:`exited` lets it go. Making the next thread happens after a spawn,
    off the path of the one asked for.
    """

    def __init__(self, writable, filter_code=None):
        self._refill = _locked()  # released: make the next ready thread
        self._ready = _locked()  # released: self._box holds a ready thread
        self._done = _locked()  # released: self._result holds an answer
        self._box = None
        self._result = None
        self._held = {}  # pid -> the lock its thread waits on
        self.abi = 0
        self.filtered = False
        _thread.start_new_thread(self._serve, (writable, filter_code))
        self._done.acquire()  # until the thread is in its domain (or could not enter it)

    @property
    def active(self):
        return bool(self.abi or self.filtered)

    def _serve(self, writable, filter_code):
        try:
            self.abi = _restrict_thread(writable)
        except Exception:
            self.abi = 0
        if filter_code:
            self.filtered = _load_filter(filter_code)
        self._done.release()
        if not self.active:
            return
        while True:
            box = {"go": _locked()}
            try:
                _thread.start_new_thread(self._command, (box,))
            except Exception as exc:  # no thread to spare (a process limit): say so
                box["error"] = exc
                self._offer(box)
            self._refill.acquire()

    def _offer(self, box):
        self._box = box
        self._ready.release()

    def _command(self, box):
        if self.abi:
            _nest()
        self._offer(box)
        box["go"].acquire()  # until spawn() gives it its command
        args, kwargs = box["job"]
        try:
            pid = posix.posix_spawn(*args, **kwargs)
        except BaseException as exc:
            self._result = (False, exc)
            self._done.release()
            return
        held = self._held[pid] = _locked()
        self._result = (True, pid)
        self._done.release()
        held.acquire()  # until the command has exited

    def spawn(self, *args, **kwargs):
        self._ready.acquire()
        box, self._box = self._box, None
        self._refill.release()
        error = box.get("error")
        if error is not None:
            raise OSError(11, "cannot start a command: no thread to start it from (%s)" % error)
        box["job"] = (args, kwargs)
        box["go"].release()
        self._done.acquire()
        ok, value = self._result
        self._result = None
        if ok:
            return value
        raise value

    def exited(self, pid):
        held = self._held.pop(pid, None)
        if held is not None:
            held.release()


def _locked():
    lock = _thread.allocate_lock()
    lock.acquire()
    return lock


def _nest():
    """A nested domain that limits nothing but stands apart from its siblings: Landlock lets
    a process reach another (ptrace, /proc/<pid>/fd, mem) only in its own domain or below.

    A layer that handles any file-system right but not REFER denies every rename and link
    across folders (EXDEV: Landlock's ABI 1 compatibility), so this one handles REFER too
    and grants it beneath /: moving a file between folders stays the outer domain's call."""
    syscall = _c("syscall")
    refer = WRITE_ACCESS[2] if _nest_abi() >= 2 else 0
    attr = _u64(MAKE_BLOCK | refer, 0, 0)  # making block devices: never allowed here anyway
    ruleset = syscall(SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
    if ruleset >= 0:
        if refer:
            _allow_beneath(syscall, ruleset, "/", refer)
        syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
        posix.close(ruleset)


def _nest_abi():
    if "nest_abi" not in _state:
        _state["nest_abi"] = landlock_abi()
    return _state["nest_abi"]


def _load_filter(code):
    """Load a seccomp program (a ``struct sock_filter`` array) on the calling thread, which
    has ``no_new_privs`` set; where the provider's isolation has its own (Docker's profile),
    this one stacks on it for commands."""
    import _ctypes

    if len(code) % 8 or not code or sys.maxsize < 2**32:
        return False

    class c_char(_ctypes._SimpleCData):
        _type_ = "c"

    buffer = type("Program", (_ctypes.Array,), {"_type_": c_char, "_length_": len(code)})
    program = buffer.from_buffer_copy(code)
    # struct sock_fprog: unsigned short len, (padding), struct sock_filter *filter
    fprog = (len(code) // 8).to_bytes(2, sys.byteorder) + bytes(6)
    fprog += _ctypes.addressof(program).to_bytes(8, sys.byteorder)
    try:
        if _c("prctl")(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return _c("prctl")(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0) == 0
    except Exception:
        return False


class _Plain:
    """No walls to keep (no ctypes, an old kernel): spawn from the agent's own thread."""

    spawn = staticmethod(posix.posix_spawn)

    def exited(self, pid):
        pass


def _lean_threads():
    """Threads that only start a command and wait need little room. Under an address-space
    limit (``--rlimit as=``, where there are no cgroups), glibc's 64 MiB malloc arena per
    thread and 8 MiB stacks would let only a dozen commands run at once."""
    try:
        _thread.stack_size(THREAD_STACK)
        _c("mallopt")(M_ARENA_MAX, 1)
    except Exception:
        pass


def setup(writable, filter_path=None):
    """Raise the walls; returns what starts commands (``spawn``, ``exited``)."""
    not_dumpable()
    _lean_threads()
    code = None
    if filter_path:
        try:
            with open(filter_path, "rb") as f:
                code = f.read(1 << 20)
        except OSError:
            code = None
    try:
        spawner = Spawner(writable, code)
    except Exception:
        return _Plain()
    if not spawner.active:
        return _Plain()
    _state["landlock"] = spawner.abi or None
    _state["seccomp"] = spawner.filtered
    return spawner


def report():
    """Which walls are up, for ``info``."""
    return dict(_state)
