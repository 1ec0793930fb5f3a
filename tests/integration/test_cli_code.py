"""``sandlot run-code`` and ``sandlot repl``, run for real: a subprocess per call, real sandboxes.

Each test gets its own ``SANDLOT_HOME`` (the ``home`` fixture of test_cli). State kept between
two ``run-code`` calls lives in a sandbox held by another process (``Holder``), as it would be
for a program using the SDK.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from .test_cli import CLI, Holder, _env, assert_one_line_error, cli, holder, home, running

__all__ = ["holder", "home"]  # the fixtures of test_cli, imported so that pytest finds them

CELL = """\
import sys
print("to stdout")
print("to stderr", file=sys.stderr)
answer = 6 * 7
answer
"""

NEW_CONTEXT = """\
import sys
import sandlot

sb = sandlot.Sandbox.connect(sys.argv[1])
print(sb.create_code_context(name="other").id)
sb.close()
"""


def repl(
    home: Path, *args: str, input: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "repl", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(home),
    )


# -- run-code ----------------------------------------------------------------------------------


def test_run_code_from_a_file(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "cell.py"
    script.write_text(CELL)
    done = cli(home, "run-code", str(script))
    assert (done.stdout, done.stderr, done.returncode) == ("to stdout\n42\n", "to stderr\n", 0)
    assert running(home) == []  # the fresh sandbox was killed


def test_run_code_from_stdin(home: Path) -> None:
    done = cli(home, "run-code", "-", input="x = 'ab' * 2\nprint(len(x))\nx\n")
    assert (done.stdout, done.returncode) == ("4\n'abab'\n", 0), done.stderr


def test_run_code_shows_results_and_saves_images(home: Path, tmp_path: Path) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 100).decode()
    code = f"""\
class Picture:
    def _repr_png_(self):
        import base64
        return base64.b64decode({png!r})
    def __repr__(self):
        return "<a picture>"

class Page:
    def _repr_html_(self):
        return "<b>bold</b>"
    def __repr__(self):
        return "Page()"

display(Page())
Picture()
"""
    out = tmp_path / "out"
    done = cli(home, "run-code", "--save-results", str(out), "-", input=code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["Page()", "[text/html, 11 B]", "<a picture>"], done.stdout
    assert lines[3].startswith("[image/png, 108 B] saved to "), done.stdout
    saved = Path(lines[3].split("saved to ", 1)[1])
    assert saved.parent == out
    assert saved.read_bytes() == base64.b64decode(png)

    # Without --save-results, only the note.
    done = cli(home, "run-code", "-", input=code)
    assert done.stdout.splitlines()[3] == "[image/png, 108 B]"


def test_run_code_raising_cell_exits_1_with_the_traceback(home: Path) -> None:
    done = cli(home, "run-code", "-", input="print('before')\n{}['missing']\n")
    assert done.returncode == 1
    assert done.stdout == "before\n"
    assert done.stderr.startswith("Traceback (most recent call last):\n")
    assert "KeyError: 'missing'" in done.stderr
    assert "error:" not in done.stderr  # the cell failed, not sandlot


def test_run_code_timeout_exits_124_and_says_so(home: Path) -> None:
    started = time.monotonic()
    code = "import time\nprint('partial', flush=True)\ntime.sleep(60)\n"
    done = cli(home, "run-code", "--timeout", "1", "-", input=code)
    assert time.monotonic() - started < 20
    assert done.returncode == 124
    assert done.stdout == "partial\n"
    assert "KeyboardInterrupt" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the cell ran past its timeout of 1 s"), done.stderr
    assert "(exit 124)" in last
    assert running(home) == []


def test_run_code_inactivity_timeout(home: Path) -> None:
    code = (  # quiet sleeps are alive; the worker stopping itself is not
        "import os, signal, time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(i)\n"
        "os.kill(os.getpid(), signal.SIGSTOP)\n"
    )
    done = cli(home, "run-code", "--inactivity-timeout", "1.5", "-", input=code)
    assert done.returncode == 124
    assert done.stdout == "0\n1\n2\n"
    assert "no sign of life for 1.5 s" in done.stderr


def test_run_code_json(home: Path) -> None:
    done = cli(home, "run-code", "--json", "-", input="print('hi')\n{'a': [1, 2]}\n")
    assert done.returncode == 0, done.stderr
    execution = json.loads(done.stdout)
    assert execution["error"] is None
    assert execution["logs"]["stdout"] == ["hi\n"]
    assert execution["results"] == [
        {"data": {"text/plain": "{'a': [1, 2]}"}, "is_main_result": True, "dropped": []}
    ]

    failed = cli(home, "run-code", "--json", "-", input="1 / 0\n")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["error"]["name"] == "ZeroDivisionError"
    assert failed.stderr == ""


def test_run_code_bad_input_exits_2(home: Path, tmp_path: Path) -> None:
    script = tmp_path / "cell.py"
    script.write_text("1\n")
    line = assert_one_line_error(cli(home, "run-code", "sb-000000000000", str(script)))
    assert "sb-000000000000" in line
    line = assert_one_line_error(cli(home, "run-code", str(tmp_path / "missing.py")))
    assert "missing.py" in line and "No such file" in line
    assert_one_line_error(cli(home, "run-code", "--timeout", "0", str(script)))
    assert_one_line_error(cli(home, "run-code"))
    assert_one_line_error(cli(home, "run-code", "a", "b", "c"))
    assert_one_line_error(cli(home, "run-code", "--context", "nope", str(script)))
    assert running(home) == []


def test_run_code_keeps_state_in_a_running_sandbox(home: Path, holder: Holder) -> None:
    first = cli(home, "run-code", holder.id, "-", input="counter = 40\n")
    assert (first.stdout, first.returncode) == ("", 0), first.stderr
    second = cli(home, "run-code", holder.id, "-", input="counter += 2\ncounter\n")
    assert (second.stdout, second.returncode) == ("42\n", 0), second.stderr
    # The sandbox is someone else's: run-code leaves it running.
    assert [i["id"] for i in running(home, f"run={holder.run}")] == [holder.id]


# -- repl --------------------------------------------------------------------------------------


def test_repl_through_a_pipe(home: Path) -> None:
    session = (
        "def double(a):\n"
        "    return a * 2\n"
        "\n"
        "double(21)\n"
        "x = 5\n"
        "1 / 0\n"
        "x + 1\n"
        "def broken(:\n"
        "for i in range(2):\n"
        "    print('loop', i)\n"
        "\n"
        "print('end', x)\n"
    )
    done = repl(home, input=session)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n6\nloop 0\nloop 1\nend 5\n"
    assert "ZeroDivisionError: division by zero" in done.stderr
    assert "SyntaxError" in done.stderr
    assert "error:" not in done.stderr
    assert running(home) == []


def test_repl_runs_a_block_left_open_at_the_end_of_input(home: Path) -> None:
    done = repl(home, input="for i in range(3):\n    print(i)")
    assert (done.stdout, done.returncode) == ("0\n1\n2\n", 0), done.stderr


def test_repl_in_a_running_sandbox_and_context(home: Path, holder: Holder) -> None:
    assert cli(home, "run-code", holder.id, "-", input="shared = 'from run-code'\n").returncode == 0
    done = repl(home, holder.id, input="shared\n")
    assert (done.stdout, done.returncode) == ("'from run-code'\n", 0), done.stderr

    # Another process (an SDK user) makes a second, named context.
    made = subprocess.run(
        [sys.executable, "-c", NEW_CONTEXT, holder.id],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    context_id = made.stdout.strip()
    done = repl(home, "--context", "other", holder.id, input="'shared' in dir()\n")
    assert (done.stdout, done.returncode) == ("False\n", 0), done.stderr
    done = repl(home, "--context", context_id, holder.id, input="y = 1\n")
    assert done.returncode == 0, done.stderr
    assert_one_line_error(repl(home, "--context", "nope", holder.id, input="1\n"))


def test_repl_unknown_sandbox_exits_2(home: Path) -> None:
    assert_one_line_error(repl(home, "sb-000000000000", input="1\n"))


def test_repl_keep_leaves_the_sandbox_running(home: Path) -> None:
    done = repl(home, "--keep", input="kept = 'yes'\n")
    assert done.returncode == 0, done.stderr
    sandbox_id = done.stdout.strip().splitlines()[-1]
    assert sandbox_id.startswith("sb-")
    assert [i["id"] for i in running(home)] == [sandbox_id]
    again = cli(home, "run-code", sandbox_id, "-", input="kept\n")
    assert (again.stdout, again.returncode) == ("'yes'\n", 0), again.stderr
    assert cli(home, "kill", sandbox_id).returncode == 0
    assert running(home) == []


def test_repl_ctrl_c_interrupts_the_cell_and_keeps_state(home: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "repl"],
        env=_env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell running us in the background may ignore SIGINT; the child must not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(
            "x = 5\nif True:\n    print('looping', flush=True)\n    while True: pass\n\n"
        )
        proc.stdin.flush()
        assert proc.stdout.readline() == "looping\n"
        time.sleep(0.3)  # inside the loop
        proc.send_signal(signal.SIGINT)
        # If the interrupt did not reach the cell, it loops on and this times out.
        stdout, stderr = proc.communicate("print('alive', x)\n", timeout=30)
        assert (stdout, proc.returncode) == ("alive 5\n", 0), stderr
        assert "KeyboardInterrupt" in stderr
        assert "while True: pass" in stderr
        assert "state was lost" not in stderr
    finally:
        proc.kill()
        proc.wait()
    assert running(home) == []


def test_repl_sigterm_kills_its_fresh_sandbox(home: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "repl"],
        env=_env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("print('up', flush=True)\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "up\n"
        assert len(running(home)) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert running(home) == []
