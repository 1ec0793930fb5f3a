"""Code contexts by name, the restore report on the first cell, and cells as event streams
(issue 21, item 6), embedded, on one real sandbox for the module."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

import sandlot
from sandlot.errors import CodeContextNotFoundError, CodeTimeoutError, InvalidArgumentError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def box() -> Iterator[sandlot.Sandbox]:
    with sandlot.Sandbox.create(timeout=600) as sandbox:
        yield sandbox


def out(ex: sandlot.Execution) -> str:
    return "".join(ex.logs.stdout)


# -- names ---------------------------------------------------------------------------------


def test_a_name_is_made_on_first_use_and_then_addresses_the_context(box: sandlot.Sandbox) -> None:
    ex = box.run_code("x = 41\nx + 1", context="anton")
    assert ex.error is None and ex.text == "42"
    assert ex.context.startswith("ctx-")  # the id, a form no name may take
    assert box.run_code("x", context="anton").text == "41"
    found = box.get_code_context("anton")
    assert (found.name, found.id) == ("anton", ex.context)
    assert box.get_code_context(ex.context) == found
    assert [c.name for c in box.list_code_contexts()].count("anton") == 1
    assert box.run_code("x", context=ex.context).text == "41"  # the id works as before
    assert box.run_code("'x' in dir()").text == "False"  # the default context is another

    # restart, interrupt and remove by name
    assert box.restart_code_context("anton", forget_state=True).name == "anton"
    assert box.run_code("'x' in dir()", context="anton").text == "False"
    assert box.interrupt_code("anton") is False  # nothing running
    box.remove_code_context("anton")
    with pytest.raises(CodeContextNotFoundError):
        box.get_code_context("anton")
    with pytest.raises(CodeContextNotFoundError):
        box.interrupt_code("anton")  # only a run makes a missing name
    with pytest.raises(CodeContextNotFoundError):
        box.remove_code_context("anton")
    again = box.run_code("'x' in dir()", context="anton")
    assert again.text == "False" and again.context != ex.context


def test_names_are_validated_and_unique(box: sandlot.Sandbox) -> None:
    made = box.create_code_context(name="bea")
    with pytest.raises(InvalidArgumentError, match="named 'bea' exists"):
        box.create_code_context(name="bea")
    for bad in ("ctx-7", "ctx-anton", "default"):  # an id's form: never a name
        with pytest.raises(InvalidArgumentError, match="form of a context id"):
            box.create_code_context(name=bad)
    for bad in ("", "a b", "x" * 65, "../up", "é"):
        with pytest.raises(InvalidArgumentError):
            box.run_code("1", context=bad)
    with pytest.raises(CodeContextNotFoundError):  # an id's form is never made on first use
        box.run_code("1", context="ctx-999")
    assert box.run_code("1", context="bea").context == made.id
    box.remove_code_context("bea")


# -- the restore report ------------------------------------------------------------------------


def test_the_first_cell_after_a_restore_says_what_came_back(box: sandlot.Sandbox) -> None:
    box.create_code_context(name="keep", persist=True)
    first = box.run_code("import threading\nkept = 5\nlock = threading.Lock()", context="keep")
    assert first.restored == [] and first.not_restored == {}  # nothing was saved yet
    assert "lock" in first.not_persisted
    second = box.run_code("more = 1", context="keep")
    assert second.restored is None and second.not_restored is None
    assert "lock" not in second.not_persisted  # each name is reported once

    box.restart_code_context("keep")  # a new process: the saved namespace comes back
    after = box.run_code("kept + more", context="keep")
    assert after.text == "6"
    assert after.restored is not None and {"kept", "more"} <= set(after.restored)
    assert after.not_restored == {}
    assert box.run_code("kept", context="keep").restored is None
    assert box.run_code("1").restored is None  # a context that does not persist: never
    box.remove_code_context("keep")


# -- event streams -----------------------------------------------------------------------------


def test_a_cell_streams_its_events_in_order(box: sandlot.Sandbox) -> None:
    code = (
        "import sys\nprint('one', flush=True)\nsandlot_progress('half')\n"
        "print('two', file=sys.stderr, flush=True)\ndisplay(7)\n40 + 2"
    )
    events = list(box.run_code_stream(code, context="streams"))
    kinds = [e.type for e in events]
    assert kinds == ["stdout", "progress", "stderr", "result", "result", "end"]
    assert isinstance(events[0], sandlot.OutputEvent) and events[0].text == "one\n"
    assert isinstance(events[1], sandlot.ProgressEvent) and events[1].message == "half"
    assert isinstance(events[3], sandlot.ResultEvent) and events[3].result.text == "7"
    end = events[-1]
    assert isinstance(end, sandlot.EndEvent) and end.error is None
    assert end.execution is not None and end.execution.text == "42"
    assert out(end.execution) == "one\n"  # the Execution has it all too


def test_errors_end_the_stream_as_events(box: sandlot.Sandbox) -> None:
    events = list(box.run_code_stream("1/0", context="streams"))
    end = events[-1]
    assert isinstance(end, sandlot.EndEvent) and end.error is None  # the cell's own error
    assert end.execution is not None and end.execution.error is not None
    assert end.execution.error.name == "ZeroDivisionError"

    code = "print('start', flush=True)\nimport time\ntime.sleep(60)"
    events = list(box.run_code_stream(code, context="streams", timeout=1))
    end = events[-1]
    assert [e.type for e in events] == ["stdout", "end"]
    assert isinstance(end, sandlot.EndEvent) and isinstance(end.error, CodeTimeoutError)
    assert end.execution is not None and end.execution.interrupted

    bad = list(box.run_code_stream("1", context="ctx-999"))
    assert len(bad) == 1 and isinstance(bad[0], sandlot.EndEvent)
    assert isinstance(bad[0].error, CodeContextNotFoundError)


def test_breaking_out_interrupts_the_cell_and_keeps_the_state(box: sandlot.Sandbox) -> None:
    code = "state = 'kept'\nimport time\nprint('go', flush=True)\ntime.sleep(60)\nstate = 'ran'"
    for event in box.run_code_stream(code, context="breaker"):
        assert event.type == "stdout"
        break  # the generator is dropped here: its close interrupts the cell and waits
    context = box.get_code_context("breaker")
    assert not context.busy
    assert box.run_code("state", context="breaker").text == "'kept'"


def test_the_async_stream(box: sandlot.Sandbox) -> None:
    async def main() -> tuple[list[str], str | None, bool]:
        asb = await sandlot.AsyncSandbox.connect(box.id)
        kinds: list[str] = []
        text = None
        async for event in asb.run_code_stream("print('a')\n6 * 7", context="async"):
            kinds.append(event.type)
            if isinstance(event, sandlot.EndEvent) and event.execution is not None:
                text = event.execution.text
        code = "import time\nprint('x', flush=True)\ntime.sleep(60)"
        async with contextlib.aclosing(asb.run_code_stream(code, context="async")) as events:
            async for _event in events:
                break
        busy = (await asb.get_code_context("async")).busy
        await asb.close()
        return kinds, text, busy

    kinds, text, busy = asyncio.run(main())
    assert kinds == ["stdout", "result", "end"] and text == "42"
    assert busy is False
