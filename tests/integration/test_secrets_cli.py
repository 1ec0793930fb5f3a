"""``sandlot secrets`` on this host: the real CLI in a subprocess, its own state folder."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandlot.secrets.crypto import KEY_ENV
from sandlot.secrets.store import LocalSecrets

VALUE = "cli-secret-9d8c7b6a5f"


def cli(home: Path, *args: str, stdin: bytes | None = b"") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDLOT_HOME": str(home)}
    for name in ("SANDLOT_URL", "SANDLOT_API_KEY", KEY_ENV):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "secrets", *args],
        input=stdin.decode() if stdin is not None else None,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored(home: Path, name: str) -> str:
    os.environ.pop(KEY_ENV, None)
    return asyncio.run(LocalSecrets(home).get(name))


def test_set_reads_stdin_and_strips_one_newline(tmp_path: Path) -> None:
    done = cli(tmp_path, "set", "API_TOKEN", stdin=VALUE.encode() + b"\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "stored secret API_TOKEN" and done.stdout == ""
    assert stored(tmp_path, "API_TOKEN") == VALUE
    assert cli(tmp_path, "set", "TWO", stdin=b"line1\nline2\n\n").returncode == 0
    assert stored(tmp_path, "TWO") == "line1\nline2\n"  # one newline stripped, not all
    assert cli(tmp_path, "set", "CRLF", stdin=b"abc123\r\n").returncode == 0
    assert stored(tmp_path, "CRLF") == "abc123"
    assert cli(tmp_path, "set", "RAW", stdin=b"  spaced  ").returncode == 0
    assert stored(tmp_path, "RAW") == "  spaced  "
    assert VALUE.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))


def test_the_value_is_never_an_argument(tmp_path: Path) -> None:
    done = cli(tmp_path, "set", "API_TOKEN", VALUE, stdin=b"x")
    assert done.returncode == 2
    assert "unexpected extra argument" in done.stderr.lower()
    assert not (tmp_path / "state.db").exists() or cli(tmp_path, "ls", "--json").stdout == "[]\n"


def test_ls_shows_names_and_dates_never_values(tmp_path: Path) -> None:
    done = cli(tmp_path, "ls")
    assert done.returncode == 0 and "no secrets" in done.stdout
    for name in ("B_KEY", "A_KEY"):
        assert cli(tmp_path, "set", name, stdin=f"{VALUE}-{name}".encode()).returncode == 0
    table = cli(tmp_path, "ls")
    assert table.returncode == 0, table.stderr
    assert "A_KEY" in table.stdout and "B_KEY" in table.stdout
    assert table.stdout.index("A_KEY") < table.stdout.index("B_KEY")
    assert time.strftime("%Y-") in table.stdout
    as_json = json.loads(cli(tmp_path, "ls", "--json").stdout)
    assert [row["name"] for row in as_json] == ["A_KEY", "B_KEY"]
    assert set(as_json[0]) == {"name", "created_at", "updated_at"}
    assert VALUE not in table.stdout + table.stderr + json.dumps(as_json)


def test_rm_and_a_missing_name(tmp_path: Path) -> None:
    assert cli(tmp_path, "set", "GONE_SOON", stdin=b"value-1234").returncode == 0
    done = cli(tmp_path, "rm", "GONE_SOON")
    assert done.returncode == 0 and done.stderr.strip() == "removed secret GONE_SOON"
    again = cli(tmp_path, "rm", "GONE_SOON")
    assert again.returncode == 1
    assert again.stderr.strip() == "error: no secret 'GONE_SOON'"
    assert "Traceback" not in again.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("set", "bad name"), b"v", "invalid secret name 'bad name'"),
        (("set", "EMPTY"), b"\n", "the value is empty"),
        (("set", "BINARY"), b"\xff\xfe\x00", "not UTF-8"),
        (("set", "NUL"), b"a\x00b-value", "NUL"),
        (("set", "HUGE"), b"x" * (64 * 1024 + 1), "at most 65536 bytes"),
        (("rm", "1bad"), b"", "invalid secret name"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], stdin: bytes, message: str
) -> None:
    env = {**os.environ, "SANDLOT_HOME": str(tmp_path)}
    env.pop("SANDLOT_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "secrets", *args],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=60,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_malformed_key_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = {**os.environ, "SANDLOT_HOME": str(tmp_path), KEY_ENV: "too-short"}
    env.pop("SANDLOT_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "sandlot.cli", "secrets", "set", "A_1"],
        input="value-1234",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "SANDLOT_SECRET_KEY is not a secret key" in done.stderr
    assert done.stderr.count("\n") == 1 and "too-short" not in done.stderr


def _tty_session(home: Path, answers: list[str]) -> tuple[int, str]:
    """``sandlot secrets set TTY_SECRET`` at a terminal (a pty): answer each prompt."""
    env = {**os.environ, "SANDLOT_HOME": str(home)}
    for name in ("SANDLOT_URL", "SANDLOT_API_KEY", KEY_ENV):
        env.pop(name, None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its terminal
        os.execvpe(
            sys.executable,
            [sys.executable, "-m", "sandlot.cli", "secrets", "set", "TTY_SECRET"],
            env,
        )
    seen = b""
    mark = 0  # where the output after the last answer starts
    deadline = time.monotonic() + 60
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    break  # the child is gone
                if not data:
                    break
                seen += data
                # getpass prints its prompt after turning echo off (and flushing input).
                if pending and seen[mark:].rstrip().endswith(b":"):
                    os.write(fd, pending.pop(0).encode() + b"\n")
                    mark = len(seen)
    finally:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # still waiting for an answer: the test fails below, not hangs
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_at_a_terminal_the_value_is_asked_twice_hidden(tmp_path: Path) -> None:
    code, screen = _tty_session(tmp_path, [VALUE, VALUE])
    assert code == 0, screen
    assert "value of TTY_SECRET:" in screen and "again:" in screen
    assert VALUE not in screen  # no echo
    assert stored(tmp_path, "TTY_SECRET") == VALUE

    code, screen = _tty_session(tmp_path, ["first-value", "second-value"])
    assert code == 2 and "the two values differ" in screen
    assert stored(tmp_path, "TTY_SECRET") == VALUE
