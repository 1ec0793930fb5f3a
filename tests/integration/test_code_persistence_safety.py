"""Persistence that never destroys data and says once what it skipped (issue 21, items 1-2).

One bwrap sandbox (its Python is the host's bare /usr/bin/python3) serves the module; each
test has its own persistent context, restarted to restore from the saved state.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot

pytestmark = pytest.mark.timeout(120)

AGENT_PARENT = str(Path(sandlot.__file__).resolve().parent)  # the folder holding agent/


@pytest.fixture(scope="module")
def box() -> Iterator[sandlot.Sandbox]:
    with sandlot.Sandbox.create(timeout=600) as sandbox:
        yield sandbox


def _context(box: sandlot.Sandbox, name: str) -> sandlot.CodeContext:
    return box.create_code_context(persist=True, name=name)


def test_a_file_object_is_refused_and_its_file_survives_a_restore(box: sandlot.Sandbox) -> None:
    ctx = _context(box, "files")
    ex = box.run_code(
        "out = open('/workspace/precious.txt', 'w')\n"
        "out.write('keep me')\n"
        "out.close()\n"
        "reader = open('/workspace/precious.txt')\n"
        "kept = 42\n",
        context=ctx,
    )
    assert ex.error is None, ex.error
    assert set(ex.not_persisted) == {"out", "reader"}, ex.not_persisted
    assert "a file or stream '/workspace/precious.txt'" in ex.not_persisted["out"]
    assert "destroy data" in ex.not_persisted["out"]
    restarted = box.restart_code_context(ctx)
    assert "kept" in restarted.restored and "out" not in restarted.restored
    assert box.files.read("/workspace/precious.txt") == "keep me"
    ex = box.run_code("kept, 'out' in dir()", context=restarted)
    assert ex.text == "(42, False)"
    # in-memory streams are data: kept
    ex = box.run_code("import io\nmemo = io.StringIO('text')", context=restarted)
    assert ex.not_persisted == {}, ex.not_persisted


def test_cell_functions_and_classes_persist_in_a_bare_python(box: sandlot.Sandbox) -> None:
    if importlib.util.find_spec("cloudpickle") is None:
        pytest.skip("the host has no cloudpickle to ship")
    plain = box.create_code_context()
    probe = "import importlib.util, sys\nsys.executable, importlib.util.find_spec('cloudpickle')"
    executable, spec = str(box.run_code(probe, context=plain).text).strip("()").split(", ")
    assert executable.startswith("'/usr/bin/python3") and spec == "None"  # bare: no cloudpickle
    ctx = _context(box, "functions")
    ex = box.run_code(
        "def cube(v):\n    return v ** 3\n"
        "square = lambda v: v * v\n"
        "class Point:\n    def __init__(self, x):\n        self.x = x\n"
        "    def double(self):\n        return Point(self.x * 2)\n"
        "p = Point(3)\n",
        context=ctx,
    )
    assert ex.error is None and ex.not_persisted == {}, (ex.error, ex.not_persisted)
    restarted = box.restart_code_context(ctx)
    assert set(restarted.restored) >= {"cube", "square", "Point", "p"}, restarted.not_restored
    ex = box.run_code("cube(2), square(4), p.double().x", context=restarted)
    assert ex.error is None, ex.error
    assert ex.text == "(8, 16, 6)"


def test_an_oversized_value_is_skipped_once_with_a_report(box: sandlot.Sandbox) -> None:
    ctx = _context(box, "sizes")
    ex = box.run_code(
        "big = b'x' * (100 << 20)\nnumbers = list(range(4_000_000))\nsmall = 1", context=ctx
    )
    assert ex.error is None, ex.error
    assert set(ex.not_persisted) == {"big", "numbers"}, ex.not_persisted
    assert "16 MiB cap per value" in ex.not_persisted["big"]
    assert "16 MiB cap per value" in ex.not_persisted["numbers"]
    # the next cell does not repeat what was already said
    ex = box.run_code("small += 1", context=ctx)
    assert ex.not_persisted == {}, ex.not_persisted
    # once gone and back, it is news again
    box.run_code("del big", context=ctx)
    ex = box.run_code("big = b'y' * (20 << 20)", context=ctx)
    assert set(ex.not_persisted) == {"big"}, ex.not_persisted
    box.run_code("del big, numbers", context=ctx)
    # the total cap: 4 values of 15 MiB fit in 64 MiB, a fifth does not
    ex = box.run_code(
        "\n".join(f"part{i} = bytes([{i}]) * (15 << 20)" for i in range(5)), context=ctx
    )
    assert ex.error is None, ex.error
    assert list(ex.not_persisted) == ["part4"], ex.not_persisted
    assert "total cap of 64 MiB" in ex.not_persisted["part4"]
    restarted = box.restart_code_context(ctx)
    assert {"small", "part0", "part3"} <= set(restarted.restored)
    assert "part4" not in restarted.restored and "big" not in restarted.restored
    assert box.run_code("small, len(part3)", context=restarted).text == f"(2, {15 << 20})"


def test_sockets_locks_and_generators_are_refused_by_name(box: sandlot.Sandbox) -> None:
    ctx = _context(box, "handles")
    ex = box.run_code(
        "import socket, threading\n"
        "left, right = socket.socketpair()\n"
        "lock = threading.Lock()\n"
        "rlock = threading.RLock()\n"
        "event = threading.Event()\n"
        "gen = (i for i in range(3))\n"
        "holder = {'inner': lock}\n"
        "fine = [1, 2]\n",
        context=ctx,
    )
    assert ex.error is None, ex.error
    skipped = ex.not_persisted
    assert set(skipped) == {"left", "right", "lock", "rlock", "event", "gen", "holder"}, skipped
    assert "holds a socket" in skipped["left"]
    assert "holds a lock" in skipped["lock"] and "holds a lock" in skipped["rlock"]
    assert "holds a lock" in skipped["event"] and "holds a lock" in skipped["holder"]
    assert "holds a generator" in skipped["gen"]
    assert box.run_code("fine.append(3)", context=ctx).not_persisted == {}
    restarted = box.restart_code_context(ctx)
    assert set(restarted.restored) >= {"fine", "socket", "threading"}
    assert box.run_code("fine", context=restarted).text == "[1, 2, 3]"


FALLBACK = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from agent import persist
store = persist.Store(sys.argv[2])
store.module, store.library = None, "pickle"  # as when no cloudpickle can be imported
ns = {"__name__": "__main__", "data": {"a": [1, 2]}, "handle": open(sys.argv[2] + ".txt", "w")}
def f():
    return 1
f.__module__ = "__main__"
ns["f"] = f
skipped = store.save(ns, frozenset())
again = store.save(ns, frozenset())
restored = {}
loaded = store.load(restored)
# a state dill wrote is not loaded: dill re-opens saved files, which can truncate them
import pickle
with open(sys.argv[2], "wb") as f:
    pickle.dump({"format": persist.FORMAT, "library": "dill", "values": {}}, f)
print(json.dumps([skipped, again, loaded, restored.get("data"), store.load({})]))
"""


def test_standard_pickle_fallback_refuses_cell_functions_by_name(tmp_path: Path) -> None:
    """Without cloudpickle, data persists and functions are refused by name (host Python
    3.9+, the agent's code as the sandbox runs it)."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", FALLBACK, AGENT_PARENT, str(tmp_path / "s.pickle")],
        capture_output=True,
        text=True,
        check=True,
    )
    skipped, again, (restored, failed), data, dill = json.loads(out.stdout)
    assert set(skipped) == {"f", "handle"}
    assert "defined in a cell and cloudpickle is unavailable" in skipped["f"]
    assert "file or stream" in skipped["handle"]
    assert again == {}
    assert restored == ["data"] and failed == {} and data == {"a": [1, 2]}
    assert dill == [[], {"*": "the state was saved with dill, which sandlot no longer loads"}]
