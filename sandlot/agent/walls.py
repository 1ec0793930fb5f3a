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
DEVICE_ACCESS = WRITE_FILE | (1 << 14)  # /dev: write to /dev/null and ttys, nothing else

_state = {"dumpable": True, "landlock": None}
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
        # struct landlock_path_beneath_attr, packed: u64 allowed_access, s32 parent_fd
        rule = _u64(allowed) + fd.to_bytes(4, sys.byteorder, signed=True)
        syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0)
    finally:
        posix.close(fd)


class Spawner:
    """Runs ``posix_spawn`` on a thread inside the commands' Landlock domain (children
    inherit the calling thread's domain), so that commands are in it and the agent is not."""

    def __init__(self, writable):
        self._go = _thread.allocate_lock()
        self._done = _thread.allocate_lock()
        self._go.acquire()
        self._done.acquire()
        self._job = None
        self._result = None
        self.abi = 0
        _thread.start_new_thread(self._serve, (writable,))
        self._done.acquire()  # until the thread is in its domain (or could not enter it)

    def _serve(self, writable):
        try:
            self.abi = _restrict_thread(writable)
        except Exception:
            self.abi = 0
        self._done.release()
        if not self.abi:
            return
        while True:
            self._go.acquire()
            args, kwargs = self._job
            try:
                self._result = (True, posix.posix_spawn(*args, **kwargs))
            except BaseException as exc:
                self._result = (False, exc)
            self._done.release()

    def spawn(self, *args, **kwargs):
        self._job = (args, kwargs)
        self._go.release()
        self._done.acquire()
        ok, value = self._result
        self._result = self._job = None
        if ok:
            return value
        raise value


def setup(writable):
    """Raise the walls; returns the function that starts commands."""
    not_dumpable()
    try:
        spawner = Spawner(writable)
    except Exception:
        spawner = None
    if spawner is None or not spawner.abi:
        return posix.posix_spawn
    _state["landlock"] = spawner.abi
    return spawner.spawn


def report():
    """Which walls are up, for ``info``."""
    return {"dumpable": _state["dumpable"], "landlock": _state["landlock"]}
