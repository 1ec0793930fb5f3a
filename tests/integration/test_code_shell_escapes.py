"""IPython's shell escapes in code cells (``!cmd``, ``%pip ...``), which notebooks, E2B's
code interpreter and the agents written for them use (smolagents starts with
``!pip install ...``): the command's output is the cell's, state is kept, valid Python is
never rewritten."""

from __future__ import annotations

from typing import Any


def test_a_shell_escape_runs_and_its_output_is_the_cells(sb: Any) -> None:
    sb.run_code("x = 41")
    run = sb.run_code(
        "!echo from-shell; echo err >&2\nx += 1\nfor i in range(2):\n    !echo loop\nx"
    )
    assert run.error is None
    assert "".join(run.logs.stdout) == "from-shell\nloop\nloop\n"
    assert "".join(run.logs.stderr) == "err\n"
    assert run.results[0].text == "42"


def test_a_failing_command_is_not_an_error_and_pip_is_the_sandboxs(sb: Any) -> None:
    run = sb.run_code("!exit 3\n%pip --version")
    assert run.error is None  # IPython ignores the status too
    assert "pip" in "".join(run.logs.stdout)


def test_valid_python_is_never_rewritten_and_bad_python_stays_a_syntax_error(sb: Any) -> None:
    run = sb.run_code("a, b = 1, 2\nnot_equal = a != b\ntext = '''\n!not a command\n'''\nnot_equal")
    assert run.results[0].text == "True"
    assert sb.run_code("text").results[0].text == repr("\n!not a command\n")
    broken = sb.run_code("!echo never\ndef (:")
    assert broken.error is not None and broken.error.name == "SyntaxError"
    assert broken.logs.stdout == []  # nothing of a cell that does not compile runs
