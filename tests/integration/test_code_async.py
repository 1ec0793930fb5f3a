"""Code contexts through ``AsyncSandbox``: the same behaviour as the sync API, awaited."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import pytest

import sandlot

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def asb() -> AsyncIterator[sandlot.AsyncSandbox]:
    async with sandlot.AsyncSandbox.create() as box:
        yield box


def stdout(ex: sandlot.Execution) -> str:
    return "".join(ex.logs.stdout)


async def test_state_results_and_errors(asb: sandlot.AsyncSandbox) -> None:
    ex = await asb.run_code("import math\nx = 2")
    assert ex.error is None and ex.results == []
    ex = await asb.run_code("x += 1\nmath.sqrt(x)")
    assert ex.text == "1.7320508075688772"
    ex = await asb.run_code("1/0")
    assert ex.error is not None
    assert (ex.error.name, ex.error.value) == ("ZeroDivisionError", "division by zero")
    assert "line 1" in ex.error.traceback and "kernel.py" not in ex.error.traceback
    ex = await asb.run_code("y = (")
    assert ex.error is not None and ex.error.name == "SyntaxError"
    assert (await asb.run_code("x")).text == "3"


async def test_coroutine_callbacks_stream_while_running(asb: sandlot.AsyncSandbox) -> None:
    events: list[tuple[str, str, float]] = []

    async def on_stdout(text: str) -> None:
        await asyncio.sleep(0)
        events.append(("out", text, time.monotonic()))

    def on_stderr(text: str) -> None:
        events.append(("err", text, time.monotonic()))

    results: list[sandlot.Result] = []

    async def on_result(result: sandlot.Result) -> None:
        results.append(result)

    ex = await asb.run_code(
        "import sys, time\nprint('a')\ntime.sleep(0.5)\nprint('b', file=sys.stderr)\n"
        "display('shown')\n'main'",
        on_stdout=on_stdout,
        on_stderr=on_stderr,
        on_result=on_result,
    )
    ended = time.monotonic()
    assert [(k, t) for k, t, _ in events] == [("out", "a\n"), ("err", "b\n")]
    assert events[0][2] <= ended - 0.4
    assert ex.logs.stdout == ["a\n"] and ex.logs.stderr == ["b\n"]
    assert [(r.text, r.is_main_result) for r in results] == [("'shown'", False), ("'main'", True)]
    assert ex.text == "'main'"


async def test_subprocess_output_and_top_level_await(asb: sandlot.AsyncSandbox) -> None:
    ex = await asb.run_code("import os\nos.system('echo hi')")
    assert stdout(ex) == "hi\n"
    ex = await asb.run_code("import asyncio\nawait asyncio.sleep(0, result='awaited')")
    assert ex.text == "'awaited'"


async def test_rich_results_and_matplotlib(asb: sandlot.AsyncSandbox) -> None:
    ex = await asb.run_code(
        "class H:\n    def _repr_html_(self):\n        return '<b>h</b>'\nH()",
    )
    assert ex.main_result is not None and ex.main_result.html == "<b>h</b>"
    ex = await asb.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()", timeout=90
    )
    assert ex.error is None, ex.error
    pngs = [r.png for r in ex.results if r.png]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert (await asb.run_code("1 + 1;")).results == []


async def test_timeout_keeps_state(asb: sandlot.AsyncSandbox) -> None:
    await asb.run_code("x = 1")
    with pytest.raises(sandlot.CodeTimeoutError) as info:
        await asb.run_code("print('partial')\nwhile True: pass", timeout=2)
    ex = info.value.execution
    assert stdout(ex) == "partial\n"
    assert ex.timed_out and ex.interrupted and not ex.state_lost
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
    assert (await asb.run_code("x")).text == "1"


async def test_inactivity_timeout_and_progress(asb: sandlot.AsyncSandbox) -> None:
    progress: list[str] = []

    async def on_progress(message: str) -> None:
        progress.append(message)

    ex = await asb.run_code(
        "import time\nfor i in range(6):\n    sandlot_progress(i)\n    time.sleep(0.3)",
        inactivity_timeout=1,
        on_progress=on_progress,
    )
    assert ex.error is None and not ex.timed_out
    assert progress == [str(i) for i in range(6)]
    with pytest.raises(sandlot.CodeTimeoutError):
        await asb.run_code(  # a frozen worker: a silent sleep would be alive
            "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", inactivity_timeout=1
        )


async def test_sigint_ignored_then_killed(asb: sandlot.AsyncSandbox) -> None:
    await asb.run_code("doomed = 1")
    with pytest.raises(sandlot.CodeTimeoutError) as info:
        await asb.run_code(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
            timeout=1,
            interrupt_grace=0.5,
        )
    ex = info.value.execution
    assert ex.state_lost is True
    assert ex.error is not None and ex.error.name == "ContextKilled"
    ex = await asb.run_code("doomed")
    assert ex.error is not None and ex.error.name == "NameError"
    assert (await asb.run_code("'fine'")).text == "'fine'"


async def test_background_interrupt_and_busy(asb: sandlot.AsyncSandbox) -> None:
    await asb.run_code("kept = 'yes'")
    handle = await asb.run_code(
        "import time\nprint('looping')\nwhile True: time.sleep(0.01)", background=True
    )
    deadline = time.monotonic() + 10
    while "looping" not in "".join(handle.logs.stdout):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    with pytest.raises(sandlot.CodeContextBusyError):
        await asb.run_code("1")
    assert await handle.interrupt() is True
    ex = await handle.wait()
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
    assert ex.interrupted and not ex.state_lost
    assert (await asb.run_code("kept")).text == "'yes'"
    assert await asb.interrupt_code() is False


async def test_cancelling_the_await_interrupts_the_cell(asb: sandlot.AsyncSandbox) -> None:
    await asb.run_code("kept = 'yes'")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asb.run_code("import time\ntime.sleep(30)"), 1)
    deadline = time.monotonic() + 10
    while True:
        try:
            ex = await asb.run_code("kept")
            break
        except sandlot.CodeContextBusyError:
            assert time.monotonic() < deadline, "the cancelled cell kept the context busy"
            await asyncio.sleep(0.1)
    assert ex.text == "'yes'"


async def test_os_exit_and_restart(asb: sandlot.AsyncSandbox) -> None:
    await asb.run_code("v = 1")
    ex = await asb.run_code("import os\nos._exit(3)")
    assert ex.error is not None and ex.error.name == "ContextDied" and ex.state_lost
    assert (await asb.run_code("1 + 1")).text == "2"
    await asb.run_code("w = 2")
    await asb.restart_code_context()
    ex = await asb.run_code("w")
    assert ex.error is not None and ex.error.name == "NameError"


async def test_contexts_isolated_listed_and_removed(asb: sandlot.AsyncSandbox) -> None:
    await asb.files.make_dir("/workspace/sub")
    a = await asb.create_code_context(cwd="/workspace/sub", name="a")
    b = await asb.create_code_context()
    await asb.run_code("only_a = 1", context=a)
    ex = await asb.run_code("only_a", context=b)
    assert ex.error is not None and ex.error.name == "NameError"
    assert (await asb.run_code("import os\nos.getcwd()", context=a)).text == "'/workspace/sub'"
    assert (await asb.run_code("import os\nos.getcwd()", context=b)).text == "'/workspace'"
    listed = {c.id: c for c in await asb.list_code_contexts()}
    assert {a.id, b.id} <= set(listed)
    assert listed[a.id].name == "a"
    pid = a.pid
    await asb.remove_code_context(a)
    with pytest.raises(sandlot.CodeContextNotFoundError):
        await asb.run_code("1", context=a)
    assert a.id not in {c.id for c in await asb.list_code_contexts()}
    deadline = time.monotonic() + 10
    while True:
        r = await asb.commands.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
        if r.exit_code != 0 or "kernel.main" not in r.stdout:
            break
        assert time.monotonic() < deadline, "the removed context's worker still runs"
        await asyncio.sleep(0.1)


async def test_concurrent_cells_in_two_contexts(asb: sandlot.AsyncSandbox) -> None:
    a = await asb.create_code_context()
    b = await asb.create_code_context()
    started = time.monotonic()
    ra, rb = await asyncio.gather(
        asb.run_code("import time\ntime.sleep(1)\n'a'", context=a),
        asb.run_code("import time\ntime.sleep(1)\n'b'", context=b),
    )
    assert (ra.text, rb.text) == ("'a'", "'b'")
    assert time.monotonic() - started < 1.9


async def test_output_cap(asb: sandlot.AsyncSandbox) -> None:
    try:
        ex = await asyncio.wait_for(
            asb.run_code(
                "import sys\nprint('HEAD')\nsys.stdout.write('x' * 5000)\nprint()\nprint('TAIL')",
                max_output_bytes=1000,
            ),
            10,
        )
    except TimeoutError:
        pytest.fail("run_code never returned for a cell whose output was cut (END lost)")
    out = stdout(ex)
    assert out.startswith("HEAD\n") and out.endswith("\nTAIL\n")
    assert "bytes of stdout cut" in out
    assert ex.cut["stdout"] == 5 + 5000 + 1 + 5 - 1000


async def test_install_offline_and_invalid_input(asb: sandlot.AsyncSandbox) -> None:
    started = time.monotonic()
    with pytest.raises(sandlot.InstallError, match="no network"):
        await asb.install("some-nonexistent-package-xyz", timeout=120)
    assert time.monotonic() - started < 60
    with pytest.raises(sandlot.InvalidArgumentError):
        await asb.install(["-r", "requirements.txt"])
    with pytest.raises(sandlot.InvalidArgumentError):
        await asb.run_code(42)  # type: ignore[arg-type]
    with pytest.raises(sandlot.InvalidArgumentError):
        await asb.run_code("1", timeout=-1)
    with pytest.raises(sandlot.InvalidArgumentError):
        await asb.create_code_context(name="no spaces allowed")
    with pytest.raises(sandlot.InvalidArgumentError):
        await asb.create_code_context(cwd="workspace")
    assert (await asb.run_code("'ok'")).text == "'ok'"
