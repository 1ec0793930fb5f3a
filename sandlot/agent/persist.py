"""Code-context state on disk: a namespace pickled name by name, so one bad value costs only
itself, and what could not be kept is reported once, with the reason, instead of silently
dropped.

The pickler is the copy of ``cloudpickle`` that sandlot ships next to the agent (``vendor/``,
read-only in every sandbox), else the sandbox's own ``cloudpickle``, else the standard
``pickle``, which keeps data and imported modules but refuses, by name, what was defined in a
cell. Whatever the pickler, handles (files, sockets, locks, generators...) are refused at save:
re-opening a file on restore could truncate it. Values are capped in size, each and in total,
and the cap is enforced while pickling (the writer aborts), so a huge value costs little.
Standard library only.
"""

import os
import sys

FORMAT = 1
VALUE_CAP = 16 << 20  # bytes per pickled value
TOTAL_CAP = 64 << 20  # bytes for the whole state
SKIP_NAMES = frozenset(
    ["__builtins__", "__name__", "__doc__", "__loader__", "__spec__", "__package__"]
)
# immutable values whose pickle can be reused while the name holds the very same object
_ATOMS = (int, float, complex, str, bytes, bool, type(None))


def _vendor_folder():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vendor")


def _pickler_module():
    """sandlot's copy of cloudpickle first (same version everywhere, so a state saved in one
    sandbox loads in the next), then the sandbox's own, else None (standard pickle)."""
    folder = _vendor_folder()
    if os.path.isdir(os.path.join(folder, "cloudpickle")) and "cloudpickle" not in sys.modules:
        sys.path.insert(0, folder)
        try:
            import cloudpickle

            return cloudpickle, "cloudpickle"
        except Exception:  # a copy this Python cannot run: fall through
            for name in [n for n in sys.modules if n.split(".")[0] == "cloudpickle"]:
                del sys.modules[name]
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    try:
        import cloudpickle

        return cloudpickle, "cloudpickle"
    except Exception:
        return None, "pickle"


class _Refused(Exception):
    """A value that must not be saved; the message says why."""


class _TooBig(Exception):
    pass


class _BoundedWriter:
    """A pickler's file that keeps what it is given and aborts once past ``cap`` bytes, so
    the size of a huge value is known without building its whole pickle."""

    def __init__(self):
        self.chunks = []
        self.size = 0
        self.cap = VALUE_CAP

    def reset(self, cap):
        self.chunks = []
        self.size = 0
        self.cap = cap

    def write(self, data):
        self.size += len(data)
        if self.size > self.cap:
            raise _TooBig()
        self.chunks.append(bytes(data))
        return len(data)

    def value(self):
        return b"".join(self.chunks)


def _handle_types():
    """Types that stand for something outside the process: never saved. Looked up in
    sys.modules so that saving imports nothing the cell did not."""
    import _thread
    import io
    import types

    found = [
        (io.IOBase, "a file or stream"),
        (_thread.LockType, "a lock"),
        (type(_thread.RLock()), "a lock"),
        (types.GeneratorType, "a generator"),
        (types.CoroutineType, "a coroutine"),
        (types.AsyncGeneratorType, "an async generator"),
        (types.FrameType, "a frame"),
    ]
    optional = [
        ("socket", "socket", "a socket"),
        ("mmap", "mmap", "a memory map"),
        ("select", "epoll", "a poll object"),
        ("subprocess", "Popen", "a process"),
        ("sqlite3", "Connection", "a database connection"),
        ("sqlite3", "Cursor", "a database cursor"),
        ("multiprocessing.synchronize", "SemLock", "a lock"),
        ("asyncio", "AbstractEventLoop", "an event loop"),
    ]
    for module_name, attribute, what in optional:
        module = sys.modules.get(module_name)
        kind = getattr(module, attribute, None) if module is not None else None
        if isinstance(kind, type):
            found.append((kind, what))
    return found


def _refusal(obj, handles):
    """Why ``obj`` must not be pickled, or None."""
    import io

    if isinstance(obj, (io.BytesIO, io.StringIO)):
        return None  # data in memory: nothing to re-open
    for kind, what in handles:
        if isinstance(obj, kind):
            name = getattr(obj, "name", None)
            detail = ""
            if isinstance(name, (str, int)) and what.endswith("stream"):
                detail = " %s" % repr(name)[:200]  # which file, bounded
            return (
                "holds %s%s (%s.%s): handles are not saved, as re-creating one on restore "
                "could destroy data (re-opening a file for writing truncates it)"
                % (what, detail, type(obj).__module__, type(obj).__qualname__)
            )
    return None


def _make_pickler(module, writer, handles):
    import pickle

    base = module.CloudPickler if module is not None else pickle.Pickler

    class Pickler(base):
        def reducer_override(self, obj):
            reason = _refusal(obj, handles)
            if reason is not None:
                raise _Refused(reason)
            if module is not None:
                return super().reducer_override(obj)
            if isinstance(obj, type(sys)):  # by name, through a function any Python has
                import importlib

                return importlib.import_module, (obj.__name__,)
            if getattr(obj, "__module__", None) == "__main__" and (
                isinstance(obj, type) or (callable(obj) and hasattr(obj, "__code__"))
            ):
                raise _Refused(
                    "%s is defined in a cell and cloudpickle is unavailable in this sandbox "
                    "(standard pickle keeps only data and imported names)"
                    % getattr(obj, "__qualname__", obj)
                )
            return NotImplemented

    return Pickler(writer, pickle.HIGHEST_PROTOCOL)


class Store:
    def __init__(self, path):
        self.path = path
        self.module, self.library = _pickler_module()
        self._cache = {}  # name: (value, blob) for immutable atoms
        self._written = None  # the blobs last written, to skip an identical write
        self.reported = {}  # name: reason already reported (once per name and reason)

    # -- saving ------------------------------------------------------------------------------

    def _dump(self, pickler, writer, value, cap):
        """The pickle of ``value``, or raise _Refused/_TooBig/another pickling error."""
        if isinstance(value, (str, bytes, bytearray)) and len(value) > cap:
            raise _TooBig()  # known without pickling
        writer.reset(cap)
        pickler.clear_memo()
        if hasattr(pickler, "globals_ref"):
            pickler.globals_ref = {}  # cloudpickle's, per pickle: one value's globals only
        pickler.dump(value)
        return writer.value()

    def save(self, namespace, hidden):
        """Write the namespace; return {name: reason} for what could not be saved and was not
        already reported by an earlier save."""
        import pickle

        writer = _BoundedWriter()
        pickler = _make_pickler(self.module, writer, _handle_types())
        blobs = {}
        skipped = {}
        cache = {}
        total = 0
        for name, value in list(namespace.items()):
            if name in SKIP_NAMES or name in hidden or name.startswith("_"):
                continue
            room = TOTAL_CAP - total
            cap = min(VALUE_CAP, room)
            cached = self._cache.get(name)
            try:
                if cached is not None and cached[0] is value:
                    blob = cached[1]
                    if len(blob) > cap:
                        raise _TooBig()
                else:
                    blob = self._dump(pickler, writer, value, cap)
                if type(value) in _ATOMS:
                    cache[name] = (value, blob)
            except _TooBig:
                if cap < VALUE_CAP:
                    skipped[name] = "the state's total cap of %d MiB is reached" % (TOTAL_CAP >> 20)
                else:
                    skipped[name] = "larger than the %d MiB cap per value" % (VALUE_CAP >> 20)
                continue
            except _Refused as exc:
                skipped[name] = str(exc)
                continue
            except Exception as exc:  # includes RecursionError: too deeply nested
                skipped[name] = "%s: %s" % (type(exc).__name__, exc)
                continue
            blobs[name] = blob
            total += len(blob)
        self._cache = cache
        if blobs != self._written:
            self._write({"format": FORMAT, "library": self.library, "values": blobs}, pickle)
            self._written = blobs
        new = {n: r for n, r in skipped.items() if self.reported.get(n) != r}
        self.reported = skipped  # a name saved again, then skipped again, is reported again
        return new

    def _write(self, payload, pickle):
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        temporary = "%s.%d.tmp" % (self.path, os.getpid())
        with open(temporary, "wb") as f:
            pickle.dump(payload, f, pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, self.path)  # a crash mid-write never leaves half a state

    # -- loading -----------------------------------------------------------------------------

    def load(self, namespace):
        """Restore into the namespace; return (restored names, {name: reason not restored})."""
        import pickle

        try:
            with open(self.path, "rb") as f:
                payload = pickle.load(f)
        except FileNotFoundError:
            return [], {}
        except Exception as exc:
            return [], {"*": "the state file %s is unreadable: %s" % (self.path, exc)}
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            return [], {"*": "the state file %s has an unknown format" % self.path}
        library = payload.get("library")
        if library not in (None, "pickle", "cloudpickle"):
            # dill re-opens the file objects it saved, which can truncate them: not loaded
            return [], {"*": "the state was saved with %s, which sandlot no longer loads" % library}
        if library == "cloudpickle" and self.module is None:
            return [], {"*": "the state was saved with cloudpickle, which this sandbox lacks"}
        restored = []
        failed = {}
        for name, blob in payload.get("values", {}).items():
            try:
                namespace[name] = pickle.loads(blob)
                restored.append(name)
            except Exception as exc:
                failed[name] = "%s: %s" % (type(exc).__name__, exc)
        self._written = None
        return restored, failed
