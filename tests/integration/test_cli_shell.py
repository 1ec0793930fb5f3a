"""``sandlot shell``, driven as a person would: pexpect runs it on a pseudo-terminal of its
own (the test's terminal), types, resizes the window and reads the screen's bytes. Real
bubblewrap sandboxes (and, from tests/remote, a real server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from . import test_cli
from .test_cli import CLI, Holder, _env, assert_one_line_error, cli, running

home = test_cli.home  # the fixtures, shared
holder = test_cli.holder

pytestmark = pytest.mark.timeout(180)
WAIT = 60  # a bound on every wait, never an assertion on speed
SHELL = "bash --norc --noprofile -i"


def spawn(home: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        CLI[0], [*CLI[1:], "shell", *args], env=_env(home), dimensions=(24, 80), timeout=WAIT
    )
    child.delaybeforesend = None
    return child


def ids(home: Path) -> set[str]:
    return {str(s["id"]) for s in running(home)}


def ended(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return int(child.exitstatus)


def test_a_new_sandbox_shell_is_a_terminal_that_follows_the_window(home: Path) -> None:
    before = ids(home)
    child = spawn(home, "--command", SHELL)
    child.sendline("PS1='PRO''MPT> '")  # typed ahead: it waits for the shell
    child.expect("PROMPT> ")
    child.sendline("tty; stty size; echo MARK$((1+1))")
    child.expect("MARK2")
    assert b"/dev/pts/" in child.before and b"24 80" in child.before
    child.setwinsize(33, 101)  # the CLI gets SIGWINCH and resizes the sandbox's terminal
    child.sendline("stty size; echo MARK$((2+1))")
    child.expect("MARK3")
    assert b"33 101" in child.before
    # Ctrl-C reaches the foreground job in the sandbox, not the CLI.
    child.sendline("python3 -c \"print('REA'+'DY', flush=True); import time; time.sleep(300)\"")
    child.expect("READY")
    child.sendcontrol("c")
    child.sendline("echo EXIT=$?")
    child.expect("EXIT=130")
    assert len(ids(home) - before) == 1
    child.sendline("exit 3")
    assert ended(child) == 3
    assert ids(home) <= before  # the sandbox it made is gone with it


def test_the_default_shell_has_a_prompt_and_an_exit_code(home: Path) -> None:
    child = spawn(home)
    child.expect(r"[$#] ")  # the sandbox's own shell, interactive: a prompt
    child.sendline("exit 7")
    assert ended(child) == 7


def test_a_running_sandbox_stays_running(home: Path, holder: Holder) -> None:
    child = spawn(home, holder.id, "-c", SHELL)
    child.sendline("echo IN-$((6*7)) > /workspace/mark; cat /workspace/mark")
    child.expect("IN-42")
    child.sendline("exit")
    assert ended(child) == 0
    assert holder.id in ids(home)
    done = cli(home, "exec", holder.id, "--", "cat /workspace/mark")
    assert done.stdout == "IN-42\n"


def test_sigterm_ends_the_shell_and_kills_its_sandbox(home: Path) -> None:
    before = ids(home)
    child = spawn(home, "-c", SHELL)
    child.sendline("PS1='PRO''MPT> '")
    child.expect("PROMPT> ")
    child.kill(signal.SIGTERM)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 128 + signal.SIGTERM
    assert ids(home) <= before


def test_the_terminal_is_restored_after_the_shell(home: Path) -> None:
    """After `sandlot shell` exits, the terminal it ran on is as it was (cooked, echoing)."""
    probe = (
        "import subprocess, sys, termios\n"
        "before = termios.tcgetattr(0)\n"
        "code = subprocess.call(sys.argv[1:])\n"
        "print('RESTORED' if termios.tcgetattr(0) == before else 'CHANGED', code)\n"
    )
    child = pexpect.spawn(
        sys.executable,
        ["-c", probe, *CLI, "shell", "-c", "exit 5"],
        env=_env(home),
        timeout=WAIT,
    )
    child.expect(r"(RESTORED|CHANGED) (\d+)")
    assert child.match.group(1) == b"RESTORED" and child.match.group(2) == b"5"
    ended(child)


def test_not_a_terminal_is_a_clear_error(home: Path) -> None:
    before = ids(home)
    done = subprocess.run(
        [*CLI, "shell"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(home),
        timeout=WAIT,
    )
    assert "needs a terminal" in assert_one_line_error(done)
    assert ids(home) <= before


def test_an_unknown_sandbox_is_a_clear_error(home: Path) -> None:
    child = spawn(home, "sb-000000000000")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus in (2, 125), child.before
    assert b"error:" in child.before and b"Traceback" not in child.before
    assert os.environ.get("SANDLOT_URL") or b"sb-000000000000" in child.before
