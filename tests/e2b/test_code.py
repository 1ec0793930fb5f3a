"""The E2B code interpreter SDK (``e2b_code_interpreter``), unmodified, against a real
``sandlot serve``: ``run_code`` with state kept, output and callbacks, errors, a matplotlib PNG,
a pandas table, per-cell ``envs``, contexts of their own (list, remove, restart), a timeout
that interrupts the cell and keeps the state, the async SDK, and a refused language. The cells
go through sandlot's core: the session's transcript records them, secrets are masked."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from e2b import NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Sandbox  # type: ignore[import-untyped]

pytestmark = pytest.mark.timeout(120)


def sandlot_api(server: Any, method: str, path: str, body: Any = None) -> Any:
    """A call of sandlot's own HTTP API with the tests' key; its JSON answer (or text)."""
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        text = answer.read().decode()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


@pytest.fixture(scope="module")
def sbx(e2b_server: Any) -> Iterator[Sandbox]:
    """A sandbox made through the E2B control plane, as E2B code makes it (the URLs and key
    as arguments: a module's fixture comes before the environment each test gets)."""
    server = e2b_server
    sandbox = Sandbox.create(
        timeout=600, api_key=server.api_key, api_url=server.url, sandbox_url=server.url
    )
    yield sandbox
    sandbox.kill()


def test_state_is_kept_between_cells(sbx: Sandbox) -> None:
    first = sbx.run_code("x = 41")
    assert (first.results, first.error) == ([], None)
    second = sbx.run_code("x + 1")
    assert second.text == "42"
    assert second.results[0].is_main_result
    assert second.execution_count == first.execution_count + 1


def test_stdout_stderr_in_logs_and_callbacks(sbx: Sandbox) -> None:
    out: list[Any] = []
    err: list[Any] = []
    results: list[Any] = []
    execution = sbx.run_code(
        "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n'done'",
        on_stdout=out.append,
        on_stderr=err.append,
        on_result=results.append,
    )
    assert "".join(execution.logs.stdout) == "to out\n"
    assert "".join(execution.logs.stderr) == "to err\n"
    assert "".join(m.line for m in out) == "to out\n"
    assert "".join(m.line for m in err) == "to err\n"
    assert err[0].error and not out[0].error
    assert execution.text == "done"  # a string's quotes dropped, as E2B's interpreter does
    assert [r.text for r in results] == ["done"]


def test_an_exception_is_the_execution_error(sbx: Sandbox) -> None:
    errors: list[Any] = []
    execution = sbx.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert "ZeroDivisionError" in execution.error.traceback
    assert "return 1 / 0" in execution.error.traceback
    assert errors == [execution.error]
    syntax = sbx.run_code("def (:")
    assert syntax.error is not None and syntax.error.name == "SyntaxError"
    assert sbx.run_code("1 + 1").text == "2"  # the context goes on


def test_matplotlib_show_gives_a_png(sbx: Sandbox) -> None:
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()"
    )
    assert execution.error is None
    assert len(execution.results) == 1
    result = execution.results[0]
    assert not result.is_main_result
    assert result.png is not None and not result.png.startswith("data:")
    assert base64.b64decode(result.png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "png" in result.formats()


def test_pandas_dataframe_has_html_and_text(sbx: Sandbox) -> None:
    execution = sbx.run_code(
        "import pandas as pd\npd.DataFrame({'alpha': [1, 2], 'beta': ['x', 'y']})"
    )
    assert execution.error is None
    result = execution.results[0]
    assert result.is_main_result
    assert result.html is not None and "<table" in result.html and "alpha" in result.html
    assert result.text is not None and "alpha" in result.text and "beta" in result.text
    assert {"text", "html"} <= set(result.formats())


def test_other_mime_types_are_fields_or_extra(sbx: Sandbox) -> None:
    execution = sbx.run_code(
        "class Rich:\n"
        "    def _repr_markdown_(self): return '**b**'\n"
        "    def _repr_latex_(self): return '$x$'\n"
        "    def _repr_json_(self): return {'k': 1}\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/x-custom': 'custom'}\n"
        "display(Rich())"
    )
    result = execution.results[0]
    assert (result.markdown, result.latex, result.json) == ("**b**", "$x$", {"k": 1})
    assert result.extra == {"text/x-custom": "custom"}
    assert "text/x-custom" in result.formats()


def test_envs_are_set_for_the_cell_only(sbx: Sandbox) -> None:
    code = "import os\nos.environ.get('SANDLOT_E2B_VAR', 'unset')"
    assert sbx.run_code(code, envs={"SANDLOT_E2B_VAR": "for this cell"}).text == "for this cell"
    assert sbx.run_code(code).text == "unset"


def test_a_context_of_its_own(sbx: Sandbox) -> None:
    sbx.run_code("shared = 'default'")
    assert sbx.run_code("import os\nos.getcwd()").text == "/home/user"  # E2B's home
    assert sbx.create_code_context().cwd == "/home/user"
    context = sbx.create_code_context(cwd="/tmp")
    assert (context.language, context.cwd) == ("python", "/tmp")
    assert sbx.run_code("import os\nos.getcwd()", context=context).text == "/tmp"
    missing = sbx.run_code("shared", context=context)
    assert missing.error is not None and missing.error.name == "NameError"
    sbx.run_code("own = 1", context=context)
    assert sbx.run_code("own", context=context).text == "1"
    assert sbx.run_code("shared").text == "default"
    assert context.id in [c.id for c in sbx.list_code_contexts()]

    sbx.restart_code_context(context)
    restarted = sbx.run_code("own", context=context)
    assert restarted.error is not None and restarted.error.name == "NameError"

    sbx.remove_code_context(context.id)
    assert context.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(NotFoundException):
        sbx.run_code("1", context=context)
    with pytest.raises(NotFoundException):
        sbx.remove_code_context(context)


def test_timeout_interrupts_the_cell_and_keeps_the_state(sbx: Sandbox) -> None:
    sbx.run_code("kept = 'still here'\nphase = 'before'")
    with pytest.raises(TimeoutException):
        sbx.run_code("import time\nphase = 'running'\nwhile True:\n    time.sleep(0.05)", timeout=1)
    # The next cell waits its turn while the interrupted one winds down.
    assert sbx.run_code("kept, phase").text == "('still here', 'running')"


def test_unsupported_language_is_a_clear_error(sbx: Sandbox) -> None:
    with pytest.raises(SandboxException, match="Python only"):
        sbx.run_code("console.log(1)", language="javascript")
    with pytest.raises(SandboxException, match="Python only"):
        sbx.create_code_context(language="r")
    assert sbx.run_code("'python ok'", language="python").text == "python ok"


def test_cells_are_in_the_transcript_with_secrets_masked(e2b_server: Any, sbx: Sandbox) -> None:
    sandlot_api(e2b_server, "PUT", "/v1/secrets/interp_token", {"value": "s3cret-value-for-e2b"})
    marker = "print('recorded ' + 'cell')"
    # A secret reference in envs (JSON allows it; the SDK passes the dict through).
    envs: Any = {"TOKEN": {"secret": "interp_token"}}
    execution = sbx.run_code(f"{marker}\nimport os\nprint(os.environ['TOKEN'])", envs=envs)
    assert execution.logs.stdout[0].startswith("recorded cell\n")
    assert "s3cret-value-for-e2b" not in "".join(execution.logs.stdout)
    log = sandlot_api(e2b_server, "GET", f"/v1/sandboxes/{sbx.sandbox_id}/events?follow=false")
    assert json.dumps(marker)[1:-1] in log and "code.run" in log
    assert "recorded cell" in log and "s3cret-value-for-e2b" not in log


def test_the_async_sdk(sbx: Sandbox) -> None:
    async def flow() -> None:
        sandbox = await AsyncSandbox.connect(sbx.sandbox_id)  # the control plane too
        seen: list[str] = []

        async def on_stdout(message: Any) -> None:
            seen.append(message.line)

        await sandbox.run_code("async_value = 6")
        execution = await sandbox.run_code(
            "print('async out')\nasync_value * 7", on_stdout=on_stdout
        )
        assert (execution.text, seen) == ("42", ["async out\n"])
        context = await sandbox.create_code_context()
        failed = await sandbox.run_code("async_value", context=context)
        assert failed.error is not None and failed.error.name == "NameError"
        assert context.id in [c.id for c in await sandbox.list_code_contexts()]
        await sandbox.remove_code_context(context)
        with pytest.raises(TimeoutException):
            await sandbox.run_code("import time\nwhile True:\n    time.sleep(0.05)", timeout=1)
        assert (await sandbox.run_code("async_value")).text == "6"

    asyncio.run(flow())


def test_big_output_streams_in_order(sbx: Sandbox) -> None:
    chunks: list[str] = []
    execution = sbx.run_code(
        "for i in range(2000):\n    print(f'line {i:05d}')",
        on_stdout=lambda m: chunks.append(m.line),
    )
    text = "".join(execution.logs.stdout)
    assert text == "".join(f"line {i:05d}\n" for i in range(2000))
    assert "".join(chunks) == text
    buffer = io.StringIO(text)
    assert sum(1 for _ in buffer) == 2000


def test_concurrent_cells_in_one_context_take_turns(sbx: Sandbox) -> None:
    """E2B's interpreter queues a context's executions: none fails as busy."""
    sbx.run_code("turns = []")
    code = "import time\nturns.append('in')\ntime.sleep(0.05)\nturns.append('out')"
    with ThreadPoolExecutor(6) as pool:
        executions = list(pool.map(lambda _: sbx.run_code(code), range(6)))
    assert [e.error for e in executions] == [None] * 6
    assert sbx.run_code("turns").text == str(["in", "out"] * 6)  # never two at once


def test_a_sandbox_killed_mid_cell(e2b_server: Any) -> None:
    """The cell's stream ends with an error (no hang); later calls raise what E2B raises for
    a sandbox that is gone."""
    sandbox = Sandbox.create()
    started = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["execution"] = sandbox.run_code(
            "import time\nprint('go', flush=True)\nwhile True: time.sleep(0.05)",
            on_stdout=lambda _: started.set(),
        )

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(60)
    Sandbox.kill(sandbox.sandbox_id)
    thread.join(60)
    error = outcome["execution"].error
    assert error is not None and error.name == "UnexpectedEndOfExecution"
    with pytest.raises(TimeoutException, match="has ended"):
        sandbox.run_code("1")
    with pytest.raises(TimeoutException, match="has ended"):
        sandbox.list_code_contexts()


def test_output_with_unicode_line_breaks_and_split_characters(sbx: Sandbox) -> None:
    """The SDK splits the stream as ``str.splitlines`` does (U+2028 too); a character may
    also arrive split across two writes of the cell."""
    execution = sbx.run_code(
        "import sys\nprint('a\\u2028b\\u2029c\\x85d')\n"
        "raw = 'é😀'.encode()\nsys.stdout.buffer.write(raw[:3]); sys.stdout.flush()\n"
        "sys.stdout.buffer.write(raw[3:] + b'\\n'); sys.stdout.flush()"
    )
    assert "".join(execution.logs.stdout) == "a\u2028b\u2029c\x85d\né😀\n"
