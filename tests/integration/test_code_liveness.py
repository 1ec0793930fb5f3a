"""Code contexts: setup code, liveness-based inactivity, ``progress()`` and the working folder.

One sandbox serves the module; each test makes its own contexts (cheap). Timings are scaled
down (an inactivity timeout of 1.5 s); nothing asserts how fast anything was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import sandlot

pytestmark = pytest.mark.timeout(120)

SETUP = (
    "def helper(x):\n"
    "    return x * 2\n"
    "print('setup noise')\n"
    "import sys\n"
    "print('setup noise on stderr', file=sys.stderr)\n"
    "import subprocess\n"
    "subprocess.run(['echo', 'setup noise from a subprocess'])\n"
)


@pytest.fixture(scope="module")
def box() -> Iterator[sandlot.Sandbox]:
    with sandlot.Sandbox.create(timeout=600) as sandbox:
        yield sandbox


def _pid(box: sandlot.Sandbox, context: sandlot.CodeContext) -> int:
    found = [c for c in box.list_code_contexts() if c.id == context.id]
    assert found and found[0].pid
    return found[0].pid


# -- setup -----------------------------------------------------------------------------------


def test_setup_defines_helpers_and_its_output_stays_out_of_cells(box: sandlot.Sandbox) -> None:
    context = box.create_code_context(setup=SETUP)
    assert context.setup and context.setup_error is None
    ex = box.run_code("helper(21)", context=context)
    assert ex.error is None and ex.text == "42"
    assert "setup noise" not in "".join(ex.logs.stdout + ex.logs.stderr)


def test_setup_runs_again_in_every_fresh_worker(box: sandlot.Sandbox) -> None:
    context = box.create_code_context(setup=SETUP)
    # The cell kills its own worker: the replacement runs setup before the next cell.
    ex = box.run_code("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", context=context)
    assert ex.state_lost and ex.error is not None
    ex = box.run_code("helper(2)", context=context)
    assert ex.error is None and ex.text == "4"
    # Killed from outside while idle (SIGKILL from a command).
    pid = _pid(box, context)
    assert box.commands.run(f"kill -9 {pid}").exit_code == 0
    # Until the agent has reaped it: a cell sent while the SIGKILL is still landing meets
    # the dying worker and ends with ContextDied (its state is gone either way).
    for _ in range(400):
        if box.commands.run(f"kill -0 {pid}").exit_code != 0:
            break
        time.sleep(0.025)
    ex = box.run_code("helper(3)", context=context)
    assert ex.error is None and ex.text == "6"
    assert ex.state_lost
    # A restart, too.
    box.restart_code_context(context)
    ex = box.run_code("helper(4)", context=context)
    assert ex.error is None and ex.text == "8"


def test_setup_runs_after_a_restore(box: sandlot.Sandbox) -> None:
    context = box.create_code_context(
        name="setup-restore", persist=True, setup="def helper():\n    return 'fresh'\n"
    )
    ex = box.run_code("kept = 5\nhelper = 'stale'", context=context)
    assert ex.error is None
    restarted = box.restart_code_context(context)
    assert "kept" in restarted.restored
    ex = box.run_code("(kept, helper())", context=context)
    assert ex.error is None and ex.text == "(5, 'fresh')"


def test_a_failing_setup_is_reported_once_and_the_context_stays_usable(
    box: sandlot.Sandbox,
) -> None:
    context = box.create_code_context(setup="x = 1\nprint('before')\nraise ValueError('boom')\n")
    assert context.setup_error is not None and "boom" in context.setup_error
    ex = box.run_code("y = 2", context=context)
    assert ex.error is not None and ex.error.name == "SetupError"
    assert "ValueError: boom" in ex.error.value and "did not run" in ex.error.value
    assert "before" in ex.error.traceback  # the end of the setup's output
    ex = box.run_code("x + 1", context=context)
    assert ex.error is None and ex.text == "2"


def test_setup_is_bounded(box: sandlot.Sandbox) -> None:
    with pytest.raises(sandlot.InvalidArgumentError):
        box.create_code_context(setup="#" * (256 * 1024 + 1))


# -- liveness --------------------------------------------------------------------------------


def test_a_quiet_sleep_is_alive(box: sandlot.Sandbox) -> None:
    context = box.create_code_context()
    ex = box.run_code("import time\ntime.sleep(4)\n'ok'", context=context, inactivity_timeout=1.5)
    assert ex.error is None and not ex.timed_out and ex.text == "'ok'"


def test_a_frozen_worker_is_stopped_and_the_context_lives_on(box: sandlot.Sandbox) -> None:
    context = box.create_code_context()
    box.run_code("kept = 7", context=context)
    with pytest.raises(sandlot.CodeTimeoutError) as info:
        box.run_code(
            "import os, signal, time\nos.kill(os.getpid(), signal.SIGSTOP)\n"
            "while True: time.sleep(0.01)",
            context=context,
            inactivity_timeout=1.5,
        )
    ex = info.value.execution
    assert ex.timed_out and ex.error is not None
    assert "no sign of life" in str(info.value)
    # SIGINT, then SIGCONT: the worker woke to take the interrupt and kept its state.
    assert ex.error.name == "KeyboardInterrupt" and not ex.state_lost
    ex = box.run_code("kept + 1", context=context)
    assert ex.error is None and ex.text == "8"


def test_the_heartbeat_runs_only_during_cells_with_an_inactivity_timeout(
    box: sandlot.Sandbox,
) -> None:
    context = box.create_code_context()
    names = "import threading\n'sandlot-heartbeat' in [t.name for t in threading.enumerate()]"
    assert box.run_code(names, context=context).text == "False"
    assert box.run_code(names, context=context, inactivity_timeout=30).text == "True"
    assert box.run_code(names, context=context).text == "False"  # stopped after the cell


def test_progress_streams_and_a_users_own_progress_wins(box: sandlot.Sandbox) -> None:
    context = box.create_code_context()
    seen: list[str] = []
    ex = box.run_code("progress('x')\nprogress()", context=context, on_progress=seen.append)
    assert ex.error is None and seen == ["x", ""]
    seen.clear()
    ex = box.run_code(
        "def progress(message=''):\n    return 'mine'\nprogress('y')",
        context=context,
        on_progress=seen.append,
    )
    assert ex.text == "'mine'" and seen == []


# -- the working folder ----------------------------------------------------------------------


def test_execution_cwd_follows_chdir(box: sandlot.Sandbox) -> None:
    context = box.create_code_context()
    ex = box.run_code("1", context=context)
    assert ex.cwd == "/workspace"
    ex = box.run_code("import os\nos.chdir('/tmp')", context=context)
    assert ex.error is None and ex.cwd == "/tmp"
    ex = box.run_code("os.getcwd()", context=context)
    assert ex.text == "'/tmp'" and ex.cwd == "/tmp"


def test_cwd_on_path_can_be_left_off(box: sandlot.Sandbox) -> None:
    check = "import sys\n'' in sys.path"
    on = box.create_code_context()
    assert box.run_code(check, context=on).text == "True"
    off = box.create_code_context(cwd_on_path=False)
    assert not off.cwd_on_path
    assert box.run_code(check, context=off).text == "False"


def test_a_long_c_call_holding_the_gil_is_alive(box: sandlot.Sandbox) -> None:
    """``sum(range(n))`` never lets the heartbeat thread run: the worker's CPU time is what
    shows it is alive. ``n`` is calibrated in the cell to last about three timeouts."""
    context = box.create_code_context()
    cell = (
        "import time\n"
        "t = time.perf_counter(); sum(range(10**7)); unit = time.perf_counter() - t\n"
        "n = int(10**7 * 3.0 / max(unit, 1e-6))\n"
        "t = time.perf_counter(); sum(range(n)); spent = time.perf_counter() - t\n"
        "spent > 1.0"
    )
    ex = box.run_code(cell, context=context, inactivity_timeout=1.0)
    assert ex.error is None and not ex.timed_out, ex.error
    assert ex.text == "True"  # it really ran past the timeout in one C call
