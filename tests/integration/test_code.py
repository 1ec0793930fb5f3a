"""Stateful code contexts through the sync API: notebook cells in real sandboxes.

One sandbox serves the module; a test that needs a clean namespace (or kills, restarts or
breaks its worker) gets its own context from the ``ctx`` fixture, which is cheap.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

import sandlot

from .helpers import wait_until

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MiB = 1 << 20

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def box() -> Iterator[sandlot.Sandbox]:
    """One sandbox for the module: contexts keep tests apart."""
    with sandlot.Sandbox.create(timeout=1800) as sandbox:
        yield sandbox


@pytest.fixture
def ctx(box: sandlot.Sandbox) -> Iterator[sandlot.CodeContext]:
    """A fresh context in the shared sandbox, removed after the test."""
    context = box.create_code_context()
    yield context
    try:
        box.remove_code_context(context)
    except sandlot.CodeContextNotFoundError:
        pass


def stdout(ex: sandlot.Execution) -> str:
    return "".join(ex.logs.stdout)


def stderr(ex: sandlot.Execution) -> str:
    return "".join(ex.logs.stderr)


def worker_alive(box: sandlot.Sandbox, pid: int) -> bool:
    """Whether the sandbox has a live (non-zombie) process ``pid`` running the kernel."""
    r = box.commands.run(
        f"test -r /proc/{pid}/cmdline && grep -q ' [RSDT] ' /proc/{pid}/stat "
        f"&& tr '\\0' ' ' < /proc/{pid}/cmdline"
    )
    return r.exit_code == 0 and "kernel.main" in r.stdout


# -- state, results, errors ------------------------------------------------------------------


def test_state_persists_across_calls(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("import math\nx = 2", context=ctx)
    assert ex.error is None
    assert ex.results == [] and ex.text is None
    assert ex.context == ctx.id
    ex = box.run_code("x += 1\nmath.sqrt(x)", context=ctx)
    assert ex.error is None
    assert ex.text == "1.7320508075688772"
    assert ex.main_result is not None and ex.main_result.is_main_result
    assert box.run_code("x", context=ctx).text == "3"


def test_default_context_is_used_without_a_context(box: sandlot.Sandbox) -> None:
    box.run_code("default_marker = 'here'")
    assert box.run_code("default_marker").text == "'here'"
    assert box.run_code("default_marker", context="default").text == "'here'"
    assert "default" in {c.id for c in box.list_code_contexts()}


def test_execution_count_increments(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    counts = [box.run_code("1", context=ctx).execution_count for _ in range(3)]
    assert counts == [1, 2, 3]


def test_underscore_holds_the_last_result(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    box.run_code("6 * 7", context=ctx)
    assert box.run_code("_ + 1", context=ctx).text == "43"


def test_error_with_traceback(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("a = 1\nb = 2\n1/0", context=ctx)
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert ex.error.value == "division by zero"
    tb = ex.error.traceback
    assert tb.startswith("Traceback (most recent call last):")
    assert "line 3" in tb and "1/0" in tb
    assert tb.rstrip().endswith("ZeroDivisionError: division by zero")
    for internal in ("kernel.py", "display.py", "/.sandlot", "agent/", "_exec", "run_until"):
        assert internal not in tb, internal
    assert ex.results == []
    # the statements before the error ran
    assert box.run_code("a + b", context=ctx).text == "3"


def test_traceback_through_functions_in_earlier_cells(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    box.run_code("def inner(v):\n    return {}[v]\n", context=ctx)
    ex = box.run_code("def outer():\n    return inner('missing')\nouter()", context=ctx)
    assert ex.error is not None and ex.error.name == "KeyError"
    assert ex.error.value == "'missing'"
    tb = ex.error.traceback
    assert "outer()" in tb and "return inner('missing')" in tb and "return {}[v]" in tb
    assert "kernel.py" not in tb


def test_raise_in_the_trailing_expression(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("v = 1\nint('nope')", context=ctx)
    assert ex.error is not None and ex.error.name == "ValueError"
    assert "nope" in ex.error.value
    assert ex.text is None
    assert box.run_code("v", context=ctx).text == "1"


def test_syntax_error_keeps_state(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    box.run_code("kept = 'yes'", context=ctx)
    ex = box.run_code("kept = 'no'\nx = (\n", context=ctx)
    assert ex.error is not None
    assert ex.error.name == "SyntaxError"
    assert "never closed" in ex.error.value
    assert "SyntaxError" in ex.error.traceback
    assert "kernel.py" not in ex.error.traceback
    # nothing of a cell that does not compile runs
    assert box.run_code("kept", context=ctx).text == "'yes'"


def test_indentation_error(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("if True:\nprint(1)", context=ctx)
    assert ex.error is not None and ex.error.name == "IndentationError"


def test_system_exit_is_the_cells_error(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    box.run_code("alive = True", context=ctx)
    ex = box.run_code("import sys\nsys.exit(4)", context=ctx)
    assert ex.error is not None and ex.error.name == "SystemExit"
    assert ex.state_lost is False
    assert box.run_code("alive", context=ctx).text == "True"


# -- output ----------------------------------------------------------------------------------


def test_print_goes_to_logs(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("print('a')", context=ctx)
    assert ex.logs.stdout == ["a\n"]
    assert ex.logs.stderr == []
    assert ex.text is None  # print returns None: no result


def test_stderr_goes_to_logs(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("import sys\nprint('oops', file=sys.stderr)", context=ctx)
    assert ex.logs.stderr == ["oops\n"]
    assert ex.logs.stdout == []


def test_print_without_newline_is_not_lost(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("print('no newline', end='')\n5", context=ctx)
    assert stdout(ex) == "no newline"
    assert ex.text == "5"


def test_unicode_output(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("print('héllo wörld ✓ 🐍')\n'ünï'", context=ctx)
    assert stdout(ex) == "héllo wörld ✓ 🐍\n"
    assert ex.text == "'ünï'"


def test_streaming_order_and_callbacks(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    events: list[tuple[str, str, float]] = []
    code = (
        "import sys, time\n"
        "print('o1')\n"
        "time.sleep(0.3)\n"
        "print('e1', file=sys.stderr)\n"
        "time.sleep(0.3)\n"
        "print('o2')\n"
        "time.sleep(0.3)\n"
        "print('e2', file=sys.stderr)\n"
    )
    ex = box.run_code(
        code,
        context=ctx,
        on_stdout=lambda s: events.append(("out", s, time.monotonic())),
        on_stderr=lambda s: events.append(("err", s, time.monotonic())),
    )
    ended = time.monotonic()
    assert [(kind, text) for kind, text, _ in events] == [
        ("out", "o1\n"),
        ("err", "e1\n"),
        ("out", "o2\n"),
        ("err", "e2\n"),
    ]
    assert ex.logs.stdout == ["o1\n", "o2\n"]
    assert ex.logs.stderr == ["e1\n", "e2\n"]
    # streamed while running, not delivered in one go at the end
    assert events[0][2] < ended - 0.6


def test_first_callback_arrives_before_the_cell_ends(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    first: list[float] = []
    seen: list[str] = []

    def on_stdout(text: str) -> None:
        if not first:
            first.append(time.monotonic())
        seen.append(text)

    ex = box.run_code(
        "import time\nprint('start')\ntime.sleep(0.5)\nprint('end')",
        context=ctx,
        on_stdout=on_stdout,
    )
    ended = time.monotonic()
    assert "".join(seen) == "start\nend\n" == stdout(ex)
    assert first and first[0] <= ended - 0.4


def test_subprocess_output_is_captured(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("import os\nos.system('echo hi; echo err >&2')", context=ctx)
    assert stdout(ex) == "hi\n"
    assert stderr(ex) == "err\n"
    assert ex.text == "0"


def test_subprocess_run_output_interleaves_with_print(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    ex = box.run_code(
        "import subprocess\nprint('before')\nsubprocess.run(['echo', 'child'])\nprint('after')",
        context=ctx,
    )
    assert stdout(ex) == "before\nchild\nafter\n"


def test_output_between_cells_does_not_leak(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    # a background thread prints after its cell ended; the next cell must not get it mixed
    # with its own output in the wrong place (it may see nothing or the late lines)
    box.run_code(
        "import threading, time\n"
        "def late():\n    time.sleep(0.3)\n    print('late', flush=True)\n"
        "threading.Thread(target=late).start()",
        context=ctx,
    )
    time.sleep(0.6)
    ex = box.run_code("print('mine')", context=ctx)
    assert stdout(ex) == "mine\n"


# -- rich results ----------------------------------------------------------------------------


def test_display_adds_results_in_order(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    got: list[sandlot.Result] = []
    ex = box.run_code(
        "display(1)\ndisplay('two', [3])\n4",
        context=ctx,
        on_result=got.append,
    )
    assert [r.text for r in ex.results] == ["1", "'two'", "[3]", "4"]
    assert [r.is_main_result for r in ex.results] == [False, False, False, True]
    assert ex.text == "4"
    assert [r.text for r in got] == ["1", "'two'", "[3]", "4"]


def test_display_and_print_keep_their_order(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    """Output printed after a display() must not overtake it. The race is timing-dependent,
    so the cell runs several times."""
    for _ in range(10):
        order: list[str] = []
        box.run_code(
            "print('p1')\ndisplay('d1')\nprint('p2')\ndisplay('d2')",
            context=ctx,
            on_stdout=lambda s, order=order: order.extend("out:" + x for x in s.splitlines()),
            on_result=lambda r, order=order: order.append("res:" + str(r.text)),
        )
        assert order == ["out:p1", "res:'d1'", "out:p2", "res:'d2'"]


def test_rich_objects_defined_in_the_cell(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    code = """
import base64
class Rich:
    def __repr__(self):
        return 'Rich()'
    def _repr_html_(self):
        return '<b>bold</b>'
    def _repr_markdown_(self):
        return '**bold**'
    def _repr_svg_(self):
        return '<svg xmlns="http://www.w3.org/2000/svg"></svg>'
    def _repr_png_(self):
        return b'\\x89PNG\\r\\n\\x1a\\nfake'
    def _repr_json_(self):
        return {'a': [1, 2]}
    def _repr_latex_(self):
        return '$x^2$'
Rich()
"""
    ex = box.run_code(code, context=ctx)
    assert ex.error is None
    r = ex.main_result
    assert r is not None
    assert r.text == "Rich()"
    assert r.html == "<b>bold</b>"
    assert r.markdown == "**bold**"
    assert r.svg == '<svg xmlns="http://www.w3.org/2000/svg"></svg>'
    assert r.png is not None and base64.b64decode(r.png) == PNG_SIGNATURE + b"fake"
    assert r.json == {"a": [1, 2]}
    assert r.latex == "$x^2$"
    assert set(r.formats()) >= {"text", "html", "markdown", "svg", "png", "json", "latex"}


def test_mimebundle_and_display_of_a_rich_object(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    code = """
class Bundled:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {'text/plain': 'bundled text', 'text/html': '<i>b</i>'}
display(Bundled())
"""
    ex = box.run_code(code, context=ctx)
    assert ex.error is None
    assert len(ex.results) == 1
    r = ex.results[0]
    assert r.is_main_result is False
    assert (r.text, r.html) == ("bundled text", "<i>b</i>")


def test_a_failing_repr_does_not_fail_the_cell(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    code = """
class Bad:
    def __repr__(self):
        return 'Bad()'
    def _repr_html_(self):
        raise RuntimeError('html broke')
Bad()
"""
    ex = box.run_code(code, context=ctx)
    assert ex.error is None
    assert ex.text == "Bad()"
    assert ex.main_result is not None and ex.main_result.html is None
    assert "_repr_html_" in stderr(ex) and "html broke" in stderr(ex)


def test_a_class_shows_as_text_only(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("class K:\n    def _repr_html_(self):\n        return '<p/>'\nK", context=ctx)
    assert ex.error is None
    assert ex.main_result is not None
    assert ex.main_result.data == {"text/plain": "<class '__main__.K'>"}


def test_matplotlib_show_gives_a_png(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()",
        context=ctx,
        timeout=90,
    )
    assert ex.error is None, ex.error
    pngs = [r for r in ex.results if r.png]
    assert len(pngs) == 1
    assert pngs[0].is_main_result is False
    data = base64.b64decode(pngs[0].png or "")
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000
    assert "Figure" in (pngs[0].text or "")
    # shown figures are closed: the next cell shows nothing again
    again = box.run_code("plt.get_fignums()", context=ctx)
    assert again.text == "[]"
    assert [r for r in again.results if r.png] == []


def test_matplotlib_figure_without_show_appears_at_the_end(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    ex = box.run_code(
        "import matplotlib.pyplot as plt\n"
        "fig = plt.figure()\n"
        "plt.plot([1, 2], [3, 4])\n"
        "print('drawn')\n"
        "'main value'",
        context=ctx,
        timeout=90,
    )
    assert ex.error is None, ex.error
    assert stdout(ex) == "drawn\n"
    assert [r.is_main_result for r in ex.results] == [True, False]
    assert ex.results[0].text == "'main value'"
    figure = ex.results[1]
    assert figure.png is not None
    assert base64.b64decode(figure.png).startswith(PNG_SIGNATURE)


def test_matplotlib_two_figures_one_shown_one_left_open(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    ex = box.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.figure(); plt.plot([1, 2]); plt.show()\n"
        "plt.figure(); plt.bar([1, 2], [3, 4]);",
        context=ctx,
        timeout=90,
    )
    assert ex.error is None, ex.error
    pngs = [r.png for r in ex.results if r.png]
    assert len(pngs) == 2
    assert pngs[0] != pngs[1]
    assert ex.main_result is None  # the trailing ';' hid the bar container


def test_pandas_dataframe_has_html_and_text(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code(
        "import pandas as pd\npd.DataFrame({'alpha': [1, 2], 'beta': ['x', 'y']})",
        context=ctx,
        timeout=90,
    )
    assert ex.error is None, ex.error
    r = ex.main_result
    assert r is not None
    assert r.html is not None and "<table" in r.html and "alpha" in r.html
    assert r.text is not None and "alpha" in r.text and "beta" in r.text


def test_trailing_semicolon_hides_the_result(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    ex = box.run_code("1 + 1;", context=ctx)
    assert ex.error is None
    assert ex.results == [] and ex.text is None
    assert box.run_code("1 + 1", context=ctx).text == "2"
    assert box.run_code("'a;'", context=ctx).text == "'a;'"
    assert box.run_code("2 + 2;  # comment", context=ctx).results == []


def test_none_is_not_a_result(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    assert box.run_code("None", context=ctx).results == []


def test_top_level_await(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code(
        "import asyncio\nawait asyncio.sleep(0)\nawait asyncio.sleep(0.01, result=7)",
        context=ctx,
    )
    assert ex.error is None, ex.error
    assert ex.text == "7"
    ex = box.run_code(
        "async def twice(v):\n    await asyncio.sleep(0)\n    return v * 2\n"
        "await asyncio.gather(twice(1), twice(2))",
        context=ctx,
    )
    assert ex.error is None, ex.error
    assert ex.text == "[2, 4]"


def test_hidden_helpers_are_callable_not_shown(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    ex = box.run_code("callable(display) and callable(sandlot_progress)", context=ctx)
    assert ex.text == "True"


def test_cell_does_not_see_the_agent(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code(
        "import sys\n[m for m in sys.modules if m == 'agent' or m.startswith('agent.')]",
        context=ctx,
    )
    assert ex.text == "[]"


# -- timeouts and interrupts -----------------------------------------------------------------


def test_timeout_interrupts_and_keeps_state(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    box.run_code("x = 41", context=ctx)
    started = time.monotonic()
    with pytest.raises(sandlot.CodeTimeoutError) as info:
        box.run_code("print('before the loop')\nx += 1\nwhile True: pass", context=ctx, timeout=2)
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 10
    ex = info.value.execution
    assert isinstance(ex, sandlot.Execution)
    assert stdout(ex) == "before the loop\n"
    assert ex.timed_out is True
    assert ex.interrupted is True
    assert ex.state_lost is False
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
    assert "timeout" in str(info.value)
    assert isinstance(info.value, TimeoutError)
    assert box.run_code("x", context=ctx).text == "42"


def test_timeout_during_sleep(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    with pytest.raises(sandlot.CodeTimeoutError) as info:
        box.run_code("import time\ntime.sleep(60)", context=ctx, timeout=1)
    assert info.value.execution.state_lost is False
    assert box.run_code("1 + 1", context=ctx).text == "2"


def test_inactivity_timeout_spares_a_cell_that_prints(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    ex = box.run_code(
        "import time\nfor i in range(10):\n    print(i)\n    time.sleep(0.3)\n'finished'",
        context=ctx,
        inactivity_timeout=1.0,
    )
    assert ex.error is None
    assert ex.text == "'finished'"
    assert ex.timed_out is False and ex.interrupted is False
    assert ex.duration >= 2.5


def test_inactivity_timeout_spares_a_cell_that_reports_progress(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    progress: list[str] = []
    ex = box.run_code(
        "import time\nfor i in range(8):\n    sandlot_progress(f'step {i}')\n    time.sleep(0.3)\n"
        "'done'",
        context=ctx,
        inactivity_timeout=1.0,
        on_progress=progress.append,
    )
    assert ex.error is None
    assert ex.text == "'done'"
    assert progress == [f"step {i}" for i in range(8)]
    assert ex.logs.stdout == []  # progress is not output


def test_inactivity_timeout_stops_a_silent_cell(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    box.run_code("kept = 'still here'", context=ctx)
    started = time.monotonic()
    with pytest.raises(sandlot.CodeTimeoutError) as info:
        box.run_code(
            # Quiet is not dead (a silent sleep is alive): a stopped worker is.
            "import os, signal, time\nprint('talking')\ntime.sleep(0.3)\nprint('then silence')\n"
            # the loop takes the interrupt: a cell that would end on its own right after
            # waking could end before the SIGINT lands, and its execution has no error
            "os.kill(os.getpid(), signal.SIGSTOP)\nwhile True: time.sleep(0.01)",
            context=ctx,
            inactivity_timeout=1.0,
        )
    elapsed = time.monotonic() - started
    assert 1.2 <= elapsed < 10
    ex = info.value.execution
    assert stdout(ex) == "talking\nthen silence\n"
    assert ex.timed_out and ex.interrupted and not ex.state_lost
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
    assert "no sign of life" in str(info.value)
    assert box.run_code("kept", context=ctx).text == "'still here'"


def test_sigint_ignoring_code_is_killed_after_the_grace(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    box.run_code("doomed = 1", context=ctx)
    started = time.monotonic()
    with pytest.raises(sandlot.CodeTimeoutError) as info:
        box.run_code(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('stubborn')\n"
            "while True: pass",
            context=ctx,
            timeout=1,
            interrupt_grace=0.5,
        )
    assert time.monotonic() - started < 10
    ex = info.value.execution
    assert ex.state_lost is True
    assert ex.timed_out is True
    assert ex.error is not None and ex.error.name == "ContextKilled"
    assert "state was lost" in ex.error.value
    assert stdout(ex) == "stubborn\n"
    assert "killed" in str(info.value)
    ex = box.run_code("doomed", context=ctx)
    assert ex.error is not None and ex.error.name == "NameError"
    assert ex.state_lost is False  # the loss was reported once, by the killed cell
    assert box.run_code("2 * 21", context=ctx).text == "42"


def test_sigint_ignoring_background_cell_interrupted_by_hand(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    box.run_code("doomed = 1", context=ctx)
    handle = box.run_code(
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('ready')\n"
        "while True: time.sleep(0.01)",
        context=ctx,
        background=True,
        interrupt_grace=0.5,
    )
    assert wait_until(lambda: "ready" in "".join(handle.logs.stdout), 10)
    assert handle.interrupt() is True
    ex = handle.wait()
    assert ex.state_lost is True and ex.interrupted is True and ex.timed_out is False
    assert ex.error is not None and ex.error.name == "ContextKilled"
    ex = box.run_code("doomed", context=ctx)
    assert ex.error is not None and ex.error.name == "NameError"


def test_background_cell_interrupt_keeps_state(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    box.run_code("before = 'kept'", context=ctx)
    handle = box.run_code(
        "import time\nduring = 'set'\nprint('looping')\nwhile True: time.sleep(0.01)",
        context=ctx,
        background=True,
    )
    assert wait_until(lambda: "looping" in "".join(handle.logs.stdout), 10)
    assert handle.done() is False
    assert handle.interrupt() is True
    ex = handle.wait()
    assert handle.done() is True
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
    assert "time.sleep" in ex.error.traceback or "while True" in ex.error.traceback
    assert ex.interrupted is True and ex.timed_out is False and ex.state_lost is False
    assert box.run_code("before, during", context=ctx).text == "('kept', 'set')"
    assert handle.interrupt() is False  # already over


def test_interrupt_while_a_big_cell_compiles(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    """An interrupt that reaches the worker before the cell's code starts (here: while a
    large cell compiles, which makes the race deterministic) must still stop that cell with
    KeyboardInterrupt, not be forgotten until the grace kill takes the state."""
    box.run_code("before = 'kept'", context=ctx)
    code = "import time\n" + "_pad = 0\n" * 30000 + "while True: time.sleep(0.01)\n"
    handle = box.run_code(code, context=ctx, background=True, interrupt_grace=2)
    assert handle.interrupt() is True
    ex = handle.wait()
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt", ex.error
    assert ex.state_lost is False
    assert box.run_code("before", context=ctx).text == "'kept'"


def test_interrupt_code_by_context(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    assert box.interrupt_code(ctx) is False  # nothing running
    handle = box.run_code("import time\nprint('go')\ntime.sleep(60)", context=ctx, background=True)
    assert wait_until(lambda: "go" in "".join(handle.logs.stdout), 10)
    assert box.interrupt_code(ctx) is True
    ex = handle.wait()
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"


def test_background_handle_collects_results(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    handle = box.run_code(
        "import time\ndisplay('early')\nprint('p')\ntime.sleep(0.3)\n'last'",
        context=ctx,
        background=True,
    )
    ex = handle.wait()
    assert ex.error is None
    assert [r.text for r in ex.results] == ["'early'", "'last'"]
    assert [r.text for r in handle.results] == ["'early'", "'last'"]
    assert ex.text == "'last'"
    assert stdout(ex) == "p\n"


def test_busy_context_refuses_a_second_cell(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    handle = box.run_code(
        "import time\nprint('busy')\ntime.sleep(60)", context=ctx, background=True
    )
    assert wait_until(lambda: "busy" in "".join(handle.logs.stdout), 10)
    with pytest.raises(sandlot.CodeContextBusyError):
        box.run_code("1", context=ctx)
    assert any(c.id == ctx.id and c.busy for c in box.list_code_contexts())
    # other contexts are not blocked
    other = box.create_code_context()
    try:
        assert box.run_code("'free'", context=other).text == "'free'"
    finally:
        box.remove_code_context(other)
    handle.interrupt()
    handle.wait()
    assert box.run_code("'again'", context=ctx).text == "'again'"


def test_a_raising_callback_interrupts_the_cell_and_keeps_the_context(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    box.run_code("n = 7", context=ctx)

    def explode(text: str) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        box.run_code("import time\nprint('x')\ntime.sleep(30)", context=ctx, on_stdout=explode)

    # the cell was interrupted: the context becomes free again soon, with its state
    def free() -> bool:
        try:
            return box.run_code("n", context=ctx).text == "7"
        except sandlot.CodeContextBusyError:
            return False

    assert wait_until(free, 10, interval=0.2)


# -- dying workers ---------------------------------------------------------------------------


def test_os_exit_restarts_the_context_empty(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    box.run_code("lost = 1", context=ctx)
    old_pid = next(c.pid for c in box.list_code_contexts() if c.id == ctx.id)
    ex = box.run_code("import os\nprint('bye', flush=True)\nos._exit(3)", context=ctx)
    assert ex.error is not None
    assert ex.error.name == "ContextDied"
    assert "status 3" in ex.error.value
    assert ex.state_lost is True
    assert stdout(ex) == "bye\n"
    ex = box.run_code("lost", context=ctx)
    assert ex.error is not None and ex.error.name == "NameError"
    assert box.run_code("'works'", context=ctx).text == "'works'"
    new_pid = next(c.pid for c in box.list_code_contexts() if c.id == ctx.id)
    assert new_pid != old_pid


def test_worker_killed_while_idle_reports_lost_state(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    box.run_code("idle_value = 1", context=ctx)
    pid = next(c.pid for c in box.list_code_contexts() if c.id == ctx.id)
    assert pid is not None
    assert box.commands.run(f"kill -9 {pid}").exit_code == 0
    assert wait_until(lambda: not worker_alive(box, pid), 10)
    ex = box.run_code("'after'", context=ctx)
    assert ex.text == "'after'"
    assert ex.state_lost is True  # the next cell learns the namespace is gone
    ex = box.run_code("idle_value", context=ctx)
    assert ex.error is not None and ex.error.name == "NameError"
    assert ex.state_lost is False


def test_restart_clears_state(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    box.run_code("gone_after_restart = 1", context=ctx)
    old = next(c for c in box.list_code_contexts() if c.id == ctx.id)
    info = box.restart_code_context(ctx)
    assert isinstance(info, sandlot.CodeContext)
    assert info.id == ctx.id
    assert info.pid is not None and info.pid != old.pid
    ex = box.run_code("gone_after_restart", context=ctx)
    assert ex.error is not None and ex.error.name == "NameError"
    assert ex.state_lost is False  # a restart asked for is not a loss to report
    assert ex.execution_count == 1
    assert wait_until(lambda: not worker_alive(box, old.pid or -1), 10)


def test_restart_default_context(box: sandlot.Sandbox) -> None:
    box.run_code("default_gone = 1")
    box.restart_code_context()
    ex = box.run_code("default_gone")
    assert ex.error is not None and ex.error.name == "NameError"


# -- several contexts ------------------------------------------------------------------------


def test_contexts_are_isolated(box: sandlot.Sandbox) -> None:
    box.files.make_dir("/workspace/ctx-a")
    box.files.make_dir("/tmp/ctx-b")
    a = box.create_code_context(cwd="/workspace/ctx-a")
    b = box.create_code_context(cwd="/tmp/ctx-b", env={"CTX_FLAVOUR": "bee"})
    try:
        assert a.id != b.id
        assert (a.cwd, b.cwd) == ("/workspace/ctx-a", "/tmp/ctx-b")
        assert a.pid != b.pid
        box.run_code("only_in_a = 'a'", context=a)
        ex = box.run_code("only_in_a", context=b)
        assert ex.error is not None and ex.error.name == "NameError"
        assert box.run_code("only_in_a", context=a).text == "'a'"
        assert box.run_code("import os\nos.getcwd()", context=a).text == "'/workspace/ctx-a'"
        assert box.run_code("import os\nos.getcwd()", context=b).text == "'/tmp/ctx-b'"
        assert box.run_code("os.environ.get('CTX_FLAVOUR')", context=b).text == "'bee'"
        assert box.run_code("os.environ.get('CTX_FLAVOUR')", context=a).text is None
        # relative files land in each context's own folder
        box.run_code("open('note.txt', 'w').write('from a')", context=a)
        assert box.files.read("/workspace/ctx-a/note.txt") == "from a"
        assert box.run_code("os.path.exists('note.txt')", context=b).text == "False"
    finally:
        box.remove_code_context(a)
        box.remove_code_context(b)


def test_context_by_id_string(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    box.run_code("by_id = 5", context=ctx)
    assert box.run_code("by_id", context=ctx.id).text == "5"


def test_cwd_that_does_not_exist(box: sandlot.Sandbox) -> None:
    with pytest.raises(sandlot.FileNotFoundInSandboxError):
        box.create_code_context(cwd="/workspace/no/such/folder")


def test_named_contexts_and_list(box: sandlot.Sandbox) -> None:
    named = box.create_code_context(name="analysis")
    try:
        assert named.name == "analysis"
        assert named.persist is False
        assert named.python and named.python.startswith("3.")
        assert named.busy is False
        listed = {c.id: c for c in box.list_code_contexts()}
        assert named.id in listed
        assert listed[named.id].name == "analysis"
        assert listed[named.id].pid == named.pid
        assert listed[named.id].cwd == "/workspace"
        with pytest.raises(sandlot.InvalidArgumentError):
            box.create_code_context(name="analysis")  # names are unique
    finally:
        box.remove_code_context(named)


def test_remove_context(box: sandlot.Sandbox) -> None:
    """Once remove_code_context returns the context is gone: not listed, and using it raises
    CodeContextNotFoundError (not a cell started on a dying worker). Several rounds, because
    the worker's exit races with the next call."""
    pids = []
    for _ in range(5):
        context = box.create_code_context()
        box.run_code("v = 1", context=context)
        assert context.pid is not None
        assert worker_alive(box, context.pid)
        pids.append(context.pid)
        box.remove_code_context(context)
        assert context.id not in {c.id for c in box.list_code_contexts()}
        with pytest.raises(sandlot.CodeContextNotFoundError):
            box.run_code("v", context=context)
        with pytest.raises(sandlot.CodeContextNotFoundError):
            box.remove_code_context(context)
        with pytest.raises(sandlot.CodeContextNotFoundError):
            box.restart_code_context(context)
    for pid in pids:
        assert wait_until(lambda pid=pid: not worker_alive(box, pid), 10)


def test_remove_a_busy_context(box: sandlot.Sandbox) -> None:
    context = box.create_code_context()
    handle = box.run_code(
        "import time\nprint('run')\ntime.sleep(60)", context=context, background=True
    )
    assert wait_until(lambda: "run" in "".join(handle.logs.stdout), 10)
    box.remove_code_context(context)
    ex = handle.wait()
    assert ex.error is not None and ex.error.name == "ContextRestarted"
    assert ex.state_lost is True
    assert context.pid is not None
    assert wait_until(lambda: not worker_alive(box, context.pid or -1), 10)


def test_unknown_context(box: sandlot.Sandbox) -> None:
    with pytest.raises(sandlot.CodeContextNotFoundError):
        box.run_code("1", context="ctx-does-not-exist")
    with pytest.raises(sandlot.CodeContextNotFoundError):
        box.interrupt_code("ctx-does-not-exist")


# -- output caps -----------------------------------------------------------------------------


def run_capped(
    box: sandlot.Sandbox, context: sandlot.CodeContext, code: str, seconds: float, **kwargs: Any
) -> sandlot.Execution:
    """Run a cell in the background and wait at most ``seconds`` for it: a cell whose END
    never arrives fails here with the reason instead of hanging the suite."""
    handle = box.run_code(code, context=context, background=True, **kwargs)
    deadline = time.monotonic() + seconds
    idle_since = None  # when the agent first said the context was free again
    while not handle.done():
        now = time.monotonic()
        busy = any(c.busy for c in box.list_code_contexts() if c.id == context.id)
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if now > deadline or (idle_since is not None and now - idle_since > 3):
            got = sum(map(len, handle.logs.stdout)) + sum(map(len, handle.logs.stderr))
            pytest.fail(
                f"run_code did not return (context busy: {busy}; {got} characters of output "
                "received): the agent finished the cell but its END never arrived"
                if not busy
                else f"the cell did not finish within {seconds:g} s"
            )
        time.sleep(0.1)
    return handle.wait()


def test_output_cap_keeps_head_and_tail(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = run_capped(
        box,
        ctx,
        "import sys\nprint('HEAD')\nfor _ in range(50): sys.stdout.write('x' * (1<<20))\n"
        "print()\nprint('TAIL')",
        60,
        timeout=90,
    )
    assert ex.error is None
    out = stdout(ex)
    assert 2 * MiB <= len(out) <= 2 * MiB + 200
    assert out.startswith("HEAD\nxxxx")
    assert out.endswith("xxxx\nTAIL\n")
    assert "bytes of stdout cut" in out
    marker = out[out.index("[sandlot:") :]
    marker = marker[: marker.index("]") + 1]
    total = 5 + 50 * MiB + 1 + 5
    assert ex.cut["stdout"] == total - 2 * MiB
    assert marker == f"[sandlot: {total - 2 * MiB} bytes of stdout cut here]"
    assert 47 * MiB < ex.cut["stdout"] < 49 * MiB
    assert "stderr" not in ex.cut
    # the context still works and its next cell is not capped
    assert stdout(run_capped(box, ctx, "print('small')", 10)) == "small\n"


def test_output_cap_per_call(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = run_capped(
        box, ctx, "import sys\nsys.stderr.write('E' * 1000 + 'e' * 1000)", 10, max_output_bytes=100
    )
    err = stderr(ex)
    assert err.startswith("E" * 50 + "\n[sandlot: 1900 bytes of stderr cut here]\n")
    assert err.endswith("e" * 50)
    assert ex.cut == {"stderr": 1900}


def test_output_just_over_the_cap_loses_nothing(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    # 99 bytes under a cap of 100: 50 of head, 49 in the tail, nothing dropped
    ex = run_capped(box, ctx, "print('y' * 99, end='')", 10, max_output_bytes=100)
    assert stdout(ex) == "y" * 99
    assert "[sandlot:" not in stdout(ex)
    assert ex.cut == {}  # the tail path ran, but nothing was left out


def test_output_under_the_cap_is_not_cut(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = run_capped(box, ctx, "print('y' * 40, end='')", 10, max_output_bytes=100)
    assert stdout(ex) == "y" * 40
    assert ex.cut == {}


def test_large_result_is_delivered(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    ex = box.run_code("'z' * (3 << 20)", context=ctx, timeout=60)
    assert ex.text is not None and len(ex.text) == (3 << 20) + 2


# -- install ---------------------------------------------------------------------------------


def _wheel(name: str, version: str, module_source: str) -> bytes:
    """A minimal pure-Python wheel built by hand: no build tools needed."""

    def record_hash(data: bytes) -> str:
        digest = hashlib.sha256(data).digest()
        return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": module_source.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: a test package\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: sandlot-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist_info}/RECORD", record)
    return buffer.getvalue()


def test_install_without_network_fails_fast_and_says_why(box: sandlot.Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(sandlot.InstallError) as info:
        box.install(["some-nonexistent-package-xyz"], timeout=120)
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert "no network" in message
    assert isinstance(info.value, sandlot.CodeError)
    assert info.value.stdout or info.value.stderr  # pip's own output is kept


def test_install_a_local_wheel_offline(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    # a context already running before the install must see the package afterwards
    ex = box.run_code("import mypkg", context=ctx)
    assert ex.error is not None and ex.error.name == "ModuleNotFoundError"
    wheel = _wheel("mypkg", "0.1", "VALUE = 42\ndef hello():\n    return 'hello from mypkg'\n")
    path = "/workspace/mypkg-0.1-py3-none-any.whl"
    box.files.write(path, wheel)
    streamed: list[str] = []
    result = box.install([path], timeout=120, on_stdout=streamed.append)
    assert result.exit_code == 0
    assert "Successfully installed mypkg-0.1" in result.stdout
    assert "".join(streamed) == result.stdout
    ex = box.run_code("import mypkg\nmypkg.hello(), mypkg.VALUE", context=ctx)
    assert ex.error is None, ex.error
    assert ex.text == "('hello from mypkg', 42)"
    # a context created afterwards has it too
    fresh = box.create_code_context()
    try:
        assert box.run_code("import mypkg\nmypkg.VALUE", context=fresh).text == "42"
    finally:
        box.remove_code_context(fresh)


def test_install_from_a_local_index(box: sandlot.Sandbox) -> None:
    """A PEP 503 index in the workspace works offline, and a package it lacks is reported as
    missing, not as a network problem."""
    wheel = _wheel("idxpkg", "1.0", "NAME = 'from the index'\n")
    filename = "idxpkg-1.0-py3-none-any.whl"
    box.files.write(f"/workspace/index/idxpkg/{filename}", wheel)
    box.files.write(
        "/workspace/index/idxpkg/index.html",
        f'<html><body><a href="{filename}">{filename}</a></body></html>',
    )
    box.files.write(
        "/workspace/index/index.html", '<html><body><a href="idxpkg/">idxpkg</a></body></html>'
    )
    box.install(["idxpkg"], index_url="file:///workspace/index", timeout=120)
    assert box.run_code("import idxpkg\nidxpkg.NAME").text == "'from the index'"
    with pytest.raises(sandlot.InstallError) as info:
        box.install(["no-such-package-here"], index_url="file:///workspace/index", timeout=120)
    assert "no package matches no-such-package-here" in str(info.value)
    assert "network" not in str(info.value)


# -- invalid input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda b: b.run_code(123), id="code not a str"),
        pytest.param(lambda b: b.run_code(b"1"), id="code bytes"),
        pytest.param(lambda b: b.run_code("a\0b"), id="NUL in code"),
        pytest.param(lambda b: b.run_code("1", timeout=-1), id="negative timeout"),
        pytest.param(lambda b: b.run_code("1", timeout=0), id="zero timeout"),
        pytest.param(lambda b: b.run_code("1", inactivity_timeout=-5), id="negative inactivity"),
        pytest.param(lambda b: b.run_code("1", interrupt_grace=-1), id="negative grace"),
        pytest.param(lambda b: b.run_code("1", max_output_bytes=1), id="tiny max_output"),
        pytest.param(lambda b: b.run_code("1", max_output_bytes=2.5), id="float max_output"),
        pytest.param(lambda b: b.run_code("1", context=""), id="empty context id"),
        pytest.param(lambda b: b.run_code("1", context=5), id="context not a str"),
        pytest.param(lambda b: b.install(["--index-url=http://x"]), id="pip option"),
        pytest.param(lambda b: b.install(["ok", "-e."]), id="pip option later"),
        pytest.param(lambda b: b.install([]), id="no packages"),
        pytest.param(lambda b: b.install([""]), id="empty package"),
        pytest.param(lambda b: b.install(["a\nb"]), id="newline in package"),
        pytest.param(lambda b: b.install(["x"], index_url="ftp://x"), id="bad index url"),
        pytest.param(lambda b: b.install(["x"], timeout=-1), id="negative install timeout"),
        pytest.param(lambda b: b.create_code_context(name="bad name!"), id="bad name"),
        pytest.param(lambda b: b.create_code_context(name=""), id="empty name"),
        pytest.param(lambda b: b.create_code_context(name=".hidden"), id="dot name"),
        pytest.param(lambda b: b.create_code_context(name="x" * 65), id="long name"),
        pytest.param(lambda b: b.create_code_context(name="a/b"), id="slash name"),
        pytest.param(lambda b: b.create_code_context(cwd="relative/dir"), id="relative cwd"),
        pytest.param(lambda b: b.create_code_context(env={"A": 1}), id="env not str"),
    ],
)
def test_invalid_input(box: sandlot.Sandbox, call) -> None:  # type: ignore[no-untyped-def]
    before = {c.id for c in box.list_code_contexts()}
    with pytest.raises(sandlot.InvalidArgumentError):
        call(box)
    assert {c.id for c in box.list_code_contexts()} == before
    assert box.run_code("'still fine'").text == "'still fine'"


# -- persistence -----------------------------------------------------------------------------


PERSIST_PATH = "/workspace/.sandlot/contexts/p.pickle"


def _has_rich_pickler(box: sandlot.Sandbox) -> bool:
    """Persistent contexts use the host's cloudpickle, shipped beside the agent."""
    import importlib.util

    return importlib.util.find_spec("cloudpickle") is not None


def test_persisted_data_moves_to_a_new_sandbox() -> None:
    with sandlot.Sandbox.create() as a:
        rich = _has_rich_pickler(a)
        ctx = a.create_code_context(persist=True, name="p")
        assert ctx.persist is True and ctx.restored == []
        ex = a.run_code(
            "numbers = [1, 2, 3]\n"
            "table = {'k': (1.5, None), 'nested': {'s': 'text'}}\n"
            "blob = b'\\x00\\xff'\n"
            "import collections\n"
            "counts = collections.Counter('hello')\n"
            "square = lambda v: v * v\n"
            "def cube(v):\n    return v ** 3\n"
            "_private = 'not saved'\n",
            context=ctx,
        )
        assert ex.error is None
        for name in ("numbers", "table", "blob", "counts"):
            assert name not in ex.not_persisted, ex.not_persisted
        assert "_private" not in ex.not_persisted
        assert "display" not in ex.not_persisted and "sandlot_progress" not in ex.not_persisted
        if rich:
            assert "square" not in ex.not_persisted and "cube" not in ex.not_persisted
        else:
            assert set(ex.not_persisted) >= {"square", "cube"}
            assert "defined in a cell" in ex.not_persisted["square"]
            assert "defined in a cell" in ex.not_persisted["cube"]
        state = a.files.read(PERSIST_PATH, "bytes")
        assert len(state) > 0

    with sandlot.Sandbox.create() as b:
        b.files.write(PERSIST_PATH, state)
        ctx = b.create_code_context(persist=True, name="p")
        assert set(ctx.restored) >= {"numbers", "table", "blob", "counts"}
        assert "_private" not in ctx.restored
        assert ctx.not_restored == {}
        ex = b.run_code("numbers, table, blob, counts['l']", context=ctx)
        assert ex.error is None, ex.error
        assert (
            ex.text == "([1, 2, 3], {'k': (1.5, None), 'nested': {'s': 'text'}}, b'\\x00\\xff', 2)"
        )
        if rich:
            assert b.run_code("square(4), cube(2)", context=ctx).text == "(16, 8)"
        else:
            assert "square" not in ctx.restored
            ex = b.run_code("square", context=ctx)
            assert ex.error is not None and ex.error.name == "NameError"
        # a context without persist=True does not load the saved state
        plain = b.create_code_context(name="q")
        ex = b.run_code("numbers", context=plain)
        assert ex.error is not None and ex.error.name == "NameError"


def test_persisted_module_import_moves_to_a_new_sandbox() -> None:
    """Plain pickle keeps imported modules by name (persist.py says so); so do cloudpickle
    and dill. ``import math`` in one sandbox is ``math`` in the next."""
    with sandlot.Sandbox.create() as a:
        ctx = a.create_code_context(persist=True, name="p")
        ex = a.run_code("import math\nimport os.path as osp\nradius = 2.0", context=ctx)
        assert ex.error is None
        assert ex.not_persisted == {}, ex.not_persisted
        state = a.files.read(PERSIST_PATH, "bytes")

    with sandlot.Sandbox.create() as b:
        b.files.write(PERSIST_PATH, state)
        ctx = b.create_code_context(persist=True, name="p")
        assert set(ctx.restored) == {"math", "osp", "radius"}, (ctx.restored, ctx.not_restored)
        ex = b.run_code("round(math.pi * radius ** 2, 3), osp.join('a', 'b')", context=ctx)
        assert ex.error is None, ex.error
        assert ex.text == "(12.566, 'a/b')"


def test_persist_restart_reloads_saved_state(box: sandlot.Sandbox) -> None:
    ctx = box.create_code_context(persist=True, name="restartable")
    try:
        box.run_code("saved = {'v': 1}", context=ctx)
        info = box.restart_code_context(ctx)
        assert "saved" in info.restored
        assert box.run_code("saved", context=ctx).text == "{'v': 1}"
        # deleting a name is saved too
        box.run_code("del saved", context=ctx)
        info = box.restart_code_context(ctx)
        assert "saved" not in info.restored
    finally:
        box.remove_code_context(ctx)
    assert box.files.exists("/workspace/.sandlot/contexts/restartable.pickle")


def test_restart_forgetting_state_resets_a_persistent_context(box: sandlot.Sandbox) -> None:
    ctx = box.create_code_context(persist=True, name="resettable")
    try:
        box.run_code("kept = 1", context=ctx)
        info = box.restart_code_context(ctx, forget_state=True)
        assert info.restored == []
        assert box.run_code("kept", context=ctx).error.name == "NameError"
        assert box.run_code("fresh = 2", context=ctx).error is None
        assert box.restart_code_context(ctx).restored == ["fresh"]
    finally:
        box.remove_code_context(ctx)


def test_unreadable_state_file_is_reported(box: sandlot.Sandbox) -> None:
    box.files.write("/workspace/.sandlot/contexts/broken.pickle", b"not a pickle at all")
    ctx = box.create_code_context(persist=True, name="broken")
    try:
        assert ctx.restored == []
        assert "*" in ctx.not_restored and "unreadable" in ctx.not_restored["*"]
        assert box.run_code("'works anyway'", context=ctx).text == "'works anyway'"
    finally:
        box.remove_code_context(ctx)


# -- a long cell does not hold up the sandbox ------------------------------------------------


def test_commands_run_while_a_cell_runs(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> None:
    handle = box.run_code(
        "import time\nprint('in cell')\ntime.sleep(60)", context=ctx, background=True
    )
    try:
        assert wait_until(lambda: "in cell" in "".join(handle.logs.stdout), 10)
        assert box.commands.run("echo side").stdout == "side\n"
        box.files.write("/workspace/during.txt", "ok")
        assert box.files.read("/workspace/during.txt") == "ok"
    finally:
        handle.interrupt()
        handle.wait()


def test_two_contexts_run_in_parallel(box: sandlot.Sandbox) -> None:
    a = box.create_code_context()
    b = box.create_code_context()
    try:
        results: dict[str, float] = {}

        def run(context: sandlot.CodeContext) -> None:
            started = time.monotonic()
            box.run_code("import time\ntime.sleep(1)", context=context)
            results[context.id] = time.monotonic() - started

        started = time.monotonic()
        threads = [threading.Thread(target=run, args=(c,)) for c in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(results) == 2
        assert time.monotonic() - started < 1.9
    finally:
        box.remove_code_context(a)
        box.remove_code_context(b)


def test_progress_from_a_module_the_cell_imports(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    box.files.write(
        "/workspace/progress_helper.py",
        "def work():\n"
        "    for i in range(3):\n"
        "        sandlot_progress(f'module {i}')\n"
        "    return 'ok'\n",
    )
    progress: list[str] = []
    ex = box.run_code(
        "import progress_helper\nprogress_helper.work()", context=ctx, on_progress=progress.append
    )
    assert ex.error is None, ex.error
    assert ex.text == "'ok'"
    assert progress == ["module 0", "module 1", "module 2"]


# -- a cell attacking its own control socket ---------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "b'\\xff\\xff\\xff\\xff'",  # a frame length over any limit
        "struct.pack('!I', 5) + b'hello'",  # not JSON
    ],
)
def test_garbage_on_the_control_socket_restarts_only_that_context(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext, garbage: str
) -> None:
    box.run_code("x = 1", context=ctx)
    ex = box.run_code(
        f"import os, struct, time\nos.write(3, {garbage})\ntime.sleep(5)", context=ctx
    )
    assert ex.error is not None and ex.error.name == "ContextDied"
    assert "control socket" in ex.error.value and ex.state_lost
    assert box.run_code("x", context=ctx).error.name == "NameError"
    assert box.run_code("1 + 1", context=ctx).text == "2"
    assert box.commands.run("echo agent fine").stdout == "agent fine\n"


def test_a_forged_result_for_another_cell_is_ignored(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    code = (
        "import json, os, struct\n"
        "body = json.dumps({'type': 'result', 'cell': 999, 'data': {'text/plain': 'forged'},"
        " 'main': True}).encode()\n"
        "os.write(3, struct.pack('!I', len(body)) + body)\n"
        "'real'"
    )
    ex = box.run_code(code, context=ctx)
    assert ex.error is None
    assert [r.text for r in ex.results] == ["'real'"]


def test_a_local_module_cannot_replace_the_standard_library(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    """Files in the working folder named like standard modules the worker imports lazily
    (ast, tokenize, traceback) break neither the worker nor the user's imports; a local
    module still imports."""
    folder = "/workspace/shadow"
    for name in ("ast", "tokenize", "traceback", "pprint"):
        box.files.write(f"{folder}/{name}.py", "raise RuntimeError('the local one')\n")
    box.files.write(f"{folder}/localmod.py", "WHERE = 'local'\n")
    shadowed = box.create_code_context(cwd=folder)
    try:
        ex = box.run_code("import localmod\nlocalmod.WHERE; [1, 2]; 1/0", context=shadowed)
        assert ex.error is not None and ex.error.name == "ZeroDivisionError"
        assert "1/0" in ex.error.traceback
        ex = box.run_code("import ast\nlocalmod.WHERE, hasattr(ast, 'parse')", context=shadowed)
        assert ex.text == "('local', True)"
        assert box.run_code("{'k': list(range(30))}", context=shadowed).error is None
    finally:
        box.remove_code_context(shadowed)


def test_a_forked_child_does_not_become_a_second_kernel(
    box: sandlot.Sandbox, ctx: sandlot.CodeContext
) -> None:
    ex = box.run_code("import os\npid = os.fork()\nkept = 7", context=ctx)
    assert ex.error is None
    for _ in range(5):  # with two kernels reading the control socket, cells would go astray
        assert box.run_code("kept", context=ctx).text == "7"
