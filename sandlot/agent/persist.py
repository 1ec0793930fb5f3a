"""Code-context state on disk: a namespace pickled name by name, so one bad value costs only
itself, and what could not be kept is listed instead of silently dropped.

``cloudpickle`` or ``dill`` is used when the sandbox has one (they keep functions and classes
defined in cells); otherwise the standard ``pickle``, which keeps data and imported modules but
refuses, by name, what was defined in a cell. Standard library only.
"""

import os
import sys

FORMAT = 1
SKIP_NAMES = frozenset(
    ["__builtins__", "__name__", "__doc__", "__loader__", "__spec__", "__package__"]
)


def _pickler_module():
    for name in ("cloudpickle", "dill"):
        try:
            return __import__(name), name
        except ImportError:
            continue
    return None, "pickle"


class Store:
    def __init__(self, path):
        self.path = path
        self.module, self.library = _pickler_module()

    # -- saving ------------------------------------------------------------------------------

    def _dumps(self, value):
        import pickle

        if self.module is not None:
            return self.module.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        import io

        buffer = io.BytesIO()
        _StdPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(value)
        return buffer.getvalue()

    def save(self, namespace, hidden):
        """Write the namespace; return {name: reason} for what could not be pickled."""
        import pickle

        blobs = {}
        skipped = {}
        for name, value in list(namespace.items()):
            if name in SKIP_NAMES or name in hidden or name.startswith("_"):
                continue
            try:
                blobs[name] = self._dumps(value)
            except Exception as exc:  # includes RecursionError: too deeply nested
                skipped[name] = "%s: %s" % (type(exc).__name__, exc)
        payload = {"format": FORMAT, "library": self.library, "values": blobs}
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        temporary = "%s.%d.tmp" % (self.path, os.getpid())
        with open(temporary, "wb") as f:
            pickle.dump(payload, f, pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, self.path)  # a crash mid-write never leaves half a state
        return skipped

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
        loads = self.module.loads if self.module is not None else pickle.loads
        if payload.get("library") not in (None, "pickle", self.library):
            # written with cloudpickle/dill: those pickles need that library to load
            module = _import(payload["library"])
            if module is None:
                return [], {
                    "*": "the state was saved with %s, which this sandbox lacks"
                    % payload["library"]
                }
            loads = module.loads
        restored = []
        failed = {}
        for name, blob in payload.get("values", {}).items():
            try:
                namespace[name] = loads(blob)
                restored.append(name)
            except Exception as exc:
                failed[name] = "%s: %s" % (type(exc).__name__, exc)
        return restored, failed


def _import(name):
    try:
        return __import__(name)
    except ImportError:
        return None


class _StdPickler:
    """``pickle.Pickler`` that keeps modules (by name) and refuses what a new process could not
    load: functions and classes defined in a cell exist only in this process's ``__main__``."""

    def __new__(cls, file, protocol):
        import pickle

        class Pickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, type(sys)):  # by name, through a function any Python has
                    import importlib

                    return importlib.import_module, (obj.__name__,)
                if getattr(obj, "__module__", None) == "__main__" and (
                    isinstance(obj, type) or (callable(obj) and hasattr(obj, "__code__"))
                ):
                    raise pickle.PicklingError(
                        "%s is defined in a cell; install cloudpickle or dill in the sandbox "
                        "to keep it" % getattr(obj, "__qualname__", obj)
                    )
                return NotImplemented

        return Pickler(file, protocol)
