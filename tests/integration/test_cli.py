"""The ``sandlot`` command line, run for real: a subprocess per call, real bubblewrap sandboxes.

Each test gets its own short ``SANDLOT_HOME`` so ``ls`` and ``gc`` see only what the test made.
Cross-process behaviour (``ls``, ``exec``, ``kill``, ``gc``) uses a separate Python process that
creates and holds a sandbox, as another program using the SDK would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "sandlot.cli"]

HOLDER = textwrap.dedent(
    """
    import sys
    import sandlot

    sb = sandlot.Sandbox.create(metadata={"owner": "cli-test", "run": sys.argv[1]}, timeout=120)
    print(sb.id, flush=True)
    sys.stdin.read()  # hold the sandbox until the test closes our stdin (or kills us)
    """
)


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sl-", dir="/tmp"))
    yield path
    env = {**os.environ, "SANDLOT_HOME": str(path)}
    listed = subprocess.run([*CLI, "ls", "--json"], env=env, capture_output=True, text=True)
    ids = [info["id"] for info in json.loads(listed.stdout or "[]")]
    if ids:
        subprocess.run([*CLI, "kill", *ids], env=env, capture_output=True)
    subprocess.run([*CLI, "gc"], env=env, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def _env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "SANDLOT_HOME": str(home), **(extra or {})}


def cli(
    home: Path,
    *args: str,
    input: str | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(home),
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def running(home: Path, *meta: str) -> list[dict[str, object]]:
    done = cli(home, "ls", "--json", *[x for m in meta for x in ("--meta", m)])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


class Holder:
    """Another process that created a sandbox (with metadata) and keeps it alive."""

    def __init__(self, home: Path) -> None:
        self.run = uuid.uuid4().hex[:12]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, self.run],
            env=_env(home),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.id = self.proc.stdout.readline().strip()
        assert self.id.startswith("sb-"), self.id

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def holder(home: Path) -> Iterator[Holder]:
    h = Holder(home)
    yield h
    h.close()


# -- run ---------------------------------------------------------------------------------------


def test_run_shell_command_exit_code_and_streams(home: Path) -> None:
    done = cli(home, "run", "--", "echo hi; echo oops >&2; exit 3")
    assert (done.stdout, done.stderr, done.returncode) == ("hi\n", "oops\n", 3)


def test_run_argv_keeps_arguments_apart(home: Path) -> None:
    done = cli(home, "run", "--", "printf", "[%s]", "a b", "$HOME", "c;d")
    assert (done.stdout, done.returncode) == ("[a b][$HOME][c;d]", 0)


def test_run_without_separator_passes_options_to_the_command(home: Path) -> None:
    done = cli(home, "run", "ls", "-d", "/workspace")
    assert (done.stdout, done.returncode) == ("/workspace\n", 0)


def test_run_death_by_signal_is_128_plus_n(home: Path) -> None:
    assert cli(home, "run", "--", "kill -KILL $$").returncode == 128 + 9
    assert cli(home, "run", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15


def test_run_command_not_found(home: Path) -> None:
    done = cli(home, "run", "--", "no-such-program", "x")
    assert done.returncode == 127
    assert "no-such-program" in done.stderr


def test_run_streams_output_live(home: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "run", "--", "echo first; echo err-first >&2; sleep 3; echo second"],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    started = time.monotonic()
    try:
        assert proc.stdout.readline() == "first\n"
        assert proc.stderr.readline() == "err-first\n"
        assert proc.poll() is None, "the first line must arrive while the command still runs"
        assert time.monotonic() - started < 2.9
        assert proc.stdout.read() == "second\n"
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_run_keeps_order_within_each_stream_and_binary_output(home: Path) -> None:
    done = cli(home, "run", "--", "for i in $(seq 1 200); do echo o$i; echo e$i >&2; done")
    assert done.stdout == "".join(f"o{i}\n" for i in range(1, 201))
    assert done.stderr == "".join(f"e{i}\n" for i in range(1, 201))
    raw = subprocess.run(
        [*CLI, "run", "--", "printf '\\377ok\\n'"],
        env=_env(home),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert raw.returncode == 0
    assert raw.stdout == "\ufffdok\n".encode()  # decoded with replacement, never a crash


def test_run_command_timeout_is_clear_and_exits_124(home: Path) -> None:
    started = time.monotonic()
    done = cli(home, "run", "--command-timeout", "1", "--", "echo partial; sleep 30")
    assert time.monotonic() - started < 15
    assert done.returncode == 124
    assert done.stdout == "partial\n"
    assert "timed out after 1 s" in done.stderr
    assert "Traceback" not in done.stderr
    assert running(home) == []


def test_run_timeout_bounds_the_command_by_default(home: Path) -> None:
    done = cli(home, "run", "--timeout", "1", "--", "sleep 30")
    assert done.returncode == 124
    assert "timed out" in done.stderr


def test_run_env_workdir_and_no_host_environment(home: Path) -> None:
    done = cli(
        home,
        "run",
        "--env",
        "FOO=bar baz",
        "-e",
        "EMPTY=",
        "--workdir",
        "/workspace/sub/dir",
        "--",
        'echo "$FOO|${EMPTY-unset}|${HOST_SECRET-hidden}"; pwd',
        env=_env(home, {"HOST_SECRET": "s3cret"}),
    )
    assert (done.stdout, done.returncode) == ("bar baz||hidden\n/workspace/sub/dir\n", 0)


def test_run_memory_limit_is_applied(home: Path) -> None:
    grab = "python3 -c 'x = bytearray(200 * 1024 * 1024); print(len(x))'"
    small = cli(home, "run", "--memory-mb", "64", "--", grab)
    assert small.returncode != 0
    assert "200" not in small.stdout
    big = cli(home, "run", "--memory-mb", "512", "--", grab)
    assert (big.stdout, big.returncode) == (f"{200 * 1024 * 1024}\n", 0)


def test_run_passes_provider_settings(home: Path) -> None:
    done = cli(home, "run", "--set", 'ro_binds=["/opt"]', "--", "test -d /opt && echo seen")
    assert (done.stdout, done.returncode) == ("seen\n", 0)


def test_run_refuses_bad_provider_settings(home: Path) -> None:
    line = assert_one_line_error(cli(home, "run", "--set", "bogus=1", "--", "true"), code=2)
    assert "bogus" in line
    line = assert_one_line_error(cli(home, "run", "--set", "nokey", "--", "true"), code=2)
    assert "KEY=VALUE" in line
    # --image is a setting of container providers: bwrap refuses it by name.
    line = assert_one_line_error(cli(home, "run", "--image", "x", "--", "true"), code=2)
    assert "image" in line


def test_stdin_is_not_forwarded_unless_asked(home: Path) -> None:
    done = cli(home, "run", "--", "cat; echo end", input="from the host\n")
    assert (done.stdout, done.returncode) == ("end\n", 0)
    done = cli(home, "run", "--stdin", "--", "rev", input="abc\ndef\n")
    assert (done.stdout, done.returncode) == ("cba\nfed\n", 0)


def test_stdin_forwarding_stops_when_the_command_ends(home: Path) -> None:
    # head exits after one line while our stdin stays open: we must not wait for its EOF.
    proc = subprocess.Popen(
        [*CLI, "run", "--stdin", "--", "head -n 1"],
        env=_env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("one\ntwo\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "one\n"
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()


def test_run_kills_its_sandbox(home: Path) -> None:
    assert cli(home, "run", "--", "true").returncode == 0
    assert running(home) == []
    assert not any((home / "sandboxes").iterdir())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_interrupted_kills_the_sandbox(home: Path, signum: int) -> None:
    proc = subprocess.Popen(
        [*CLI, "run", "--", "echo started; sleep 60"],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 128 + signum
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert running(home) == []
    assert not any((home / "sandboxes").iterdir())


def test_run_stops_when_its_reader_goes_away(home: Path) -> None:
    script = f"{' '.join(CLI)} run -- yes | head -n 2; echo status=${{PIPESTATUS[0]}} >&2"
    done = subprocess.run(
        ["bash", "-c", script],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.stdout == "y\ny\n"
    assert done.stderr.strip() == "status=141", done.stderr
    assert running(home) == []


def test_run_with_the_process_provider_says_it_does_not_isolate(home: Path) -> None:
    done = cli(home, "run", "--provider", "process", "--", "echo unisolated; exit 4")
    assert (done.stdout, done.returncode) == ("unisolated\n", 4)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), done.stderr
    assert "isolation" in lines[0]
    assert running(home) == []


# -- providers ---------------------------------------------------------------------------------


def test_providers_table_and_json(home: Path) -> None:
    from sandlot.providers import provider_class

    table = cli(home, "providers")
    assert table.returncode == 0
    assert "bwrap" in table.stdout and "process" in table.stdout
    assert "usable" in table.stdout

    done = cli(home, "providers", "--json")
    assert done.returncode == 0
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert {"bwrap", "process"} <= set(rows)
    assert rows["bwrap"]["default"] is True and rows["bwrap"]["isolated"] is True
    assert rows["process"]["isolated"] is False and rows["process"]["available"] is True
    assert "isolation" in rows["bwrap"]["capabilities"]
    # The CLI reports what the provider itself says about this host.
    bwrap = provider_class("bwrap")(home).info()
    assert rows["bwrap"]["available"] == bwrap.available
    assert rows["bwrap"]["reason"] == bwrap.reason


def test_providers_says_bwrap_is_usable_here(home: Path) -> None:
    # Sandboxes run on this host (every other test here needs them), so bwrap is usable.
    rows = {row["name"]: row for row in json.loads(cli(home, "providers", "--json").stdout)}
    assert rows["bwrap"]["available"] is True, rows["bwrap"]["reason"]
    assert rows["bwrap"]["reason"] is None


def test_providers_says_why_bwrap_is_unusable(home: Path) -> None:
    env = _env(home, {"PATH": str(home / "no-bin")})  # no bwrap on PATH
    done = cli(home, "providers", "--json", env=env)
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["bwrap"]["available"] is False
    assert "bubblewrap not installed" in rows["bwrap"]["reason"]
    table = cli(home, "providers", env=env)
    assert "bubblewrap not installed" in table.stdout
    assert "no" in table.stdout


def test_run_with_unusable_provider_fails_clearly(home: Path) -> None:
    done = cli(home, "run", "--", "true", env=_env(home, {"PATH": str(home / "no-bin")}))
    line = assert_one_line_error(done, code=125)
    assert "bubblewrap not installed" in line


# -- ls, exec, kill, gc across processes -------------------------------------------------------


def test_ls_shows_sandboxes_of_other_processes(home: Path, holder: Holder) -> None:
    infos = running(home, f"run={holder.run}")
    assert [i["id"] for i in infos] == [holder.id]
    info = infos[0]
    assert info["provider"] == "bwrap"
    assert info["metadata"] == {"owner": "cli-test", "run": holder.run}
    assert {"created_at", "expires_at"} <= set(info)
    assert "handle" not in info
    assert running(home, "run=someone-else") == []
    assert [i["id"] for i in running(home, "owner=cli-test", f"run={holder.run}")] == [holder.id]

    table = cli(home, "ls")
    assert table.returncode == 0
    assert holder.id in table.stdout
    assert f"run={holder.run}" in table.stdout
    assert "in 1m" in table.stdout or "in 2m" in table.stdout  # expires in about 120 s


def test_exec_in_a_sandbox_of_another_process(home: Path, holder: Holder) -> None:
    done = cli(home, "exec", holder.id, "--", "echo $((6 * 7)); echo warn >&2; exit 5")
    assert (done.stdout, done.stderr, done.returncode) == ("42\n", "warn\n", 5)

    assert cli(home, "exec", holder.id, "--", "echo kept > /workspace/f").returncode == 0
    done = cli(home, "exec", holder.id, "cat", "/workspace/f")
    assert (done.stdout, done.returncode) == ("kept\n", 0)

    done = cli(home, "exec", "--env", "A=1", "--workdir", "/tmp", holder.id, "--", "echo $A; pwd")
    assert (done.stdout, done.returncode) == ("1\n/tmp\n", 0)

    done = cli(home, "exec", "--stdin", holder.id, "--", "tr a-z A-Z", input="shout\n")
    assert (done.stdout, done.returncode) == ("SHOUT\n", 0)

    done = cli(home, "exec", "--timeout", "0.5", holder.id, "--", "echo part; sleep 20")
    assert (done.stdout, done.returncode) == ("part\n", 124)

    # exec does not end the sandbox.
    assert [i["id"] for i in running(home, f"run={holder.run}")] == [holder.id]


def _exec_started(home: Path, holder: Holder, cmd: str) -> subprocess.Popen[str]:
    """`sandlot exec` running in the background, once its command printed "go"."""
    proc = subprocess.Popen(
        [*CLI, "exec", holder.id, "--", cmd],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "go\n"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def test_exec_interrupted_kills_the_command_not_the_sandbox(home: Path, holder: Holder) -> None:
    proc = _exec_started(home, holder, "echo go; exec sleep 60")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    done = cli(home, "exec", holder.id, "--", "ps -e -o args")
    assert done.returncode == 0
    assert "sleep 60" not in done.stdout
    assert [i["id"] for i in running(home)] == [holder.id]


def test_kill_a_sandbox_of_another_process(home: Path, holder: Holder) -> None:
    done = cli(home, "kill", holder.id)
    assert (done.stdout, done.returncode) == (f"killed {holder.id}\n", 0)
    assert running(home) == []
    assert not (home / "sandboxes" / holder.id).exists()
    assert_one_line_error(cli(home, "exec", holder.id, "--", "true"))
    line = assert_one_line_error(cli(home, "kill", holder.id))
    assert holder.id in line


def test_kill_several_reports_each(home: Path, holder: Holder) -> None:
    other = Holder(home)
    try:
        done = cli(home, "kill", holder.id, "sb-000000000000", other.id)
        assert done.returncode == 2
        assert done.stdout == f"killed {holder.id}\nkilled {other.id}\n"
        assert "sb-000000000000" in done.stderr and "Traceback" not in done.stderr
        assert running(home) == []
    finally:
        other.close()


def test_exec_fails_cleanly_when_the_sandbox_is_killed_meanwhile(
    home: Path, holder: Holder
) -> None:
    proc = _exec_started(home, holder, "echo go; sleep 60")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert cli(home, "kill", holder.id).returncode == 0
        code = proc.wait(timeout=20)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert code != 0
    assert "Traceback" not in err


def test_gc_removes_what_a_killed_owner_left(home: Path) -> None:
    assert cli(home, "gc").stdout == "nothing to remove\n"
    h = Holder(home)
    h.proc.send_signal(signal.SIGKILL)
    h.proc.wait()
    assert running(home) == []  # its sandbox died with it (--die-with-parent) ...
    assert (home / "sandboxes" / h.id).exists()  # ... but its record and folder remain
    done = cli(home, "gc")
    assert done.returncode == 0
    assert h.id in done.stdout and "removed" in done.stdout
    assert not (home / "sandboxes" / h.id).exists()
    done = cli(home, "gc", "--json")
    assert json.loads(done.stdout) == {"removed": [], "orphans": []}


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--provider", "nope", "--", "true"], "unknown provider 'nope'"),
        (["run", "--env", "NOEQUALS", "--", "true"], "--env expects KEY=VALUE"),
        (["run", "--env", "1BAD=x", "--", "true"], "invalid environment variable name"),
        (["run"], "no command given"),
        (["run", "--"], "no command given"),
        (["run", "--", "   "], "command is empty"),
        (["run", "--", "", "x"], "command is empty"),
        (["run", "--timeout", "0", "--", "true"], "--timeout must be a positive"),
        (["run", "--timeout", "soon", "--", "true"], "--timeout"),
        (["run", "--command-timeout", "9", "--timeout", "5", "--", "true"], "cannot exceed"),
        (["run", "--workdir", "relative", "--", "true"], "absolute path"),
        (["run", "--workdir", "/workspace/" + "a" * 256, "--", "true"], "workdir is too long"),
        (["run", "--memory-mb", "1", "--", "true"], "memory_mb"),
        (["run", "--no-such-option", "--", "true"], "No such option"),
        (["exec", "sb-000000000000", "--", "true"], "no sandbox with id 'sb-000000000000'"),
        (["exec", "sb-000000000000"], "no command given"),
        (["exec", "sb-000000000000", "--timeout", "3", "--", "true"], "options go before"),
        (["kill", "sb-000000000000"], "no sandbox with id"),
        (["kill"], "Missing argument"),
        (["ls", "--meta", "novalue"], "--meta expects KEY=VALUE"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_input_is_one_red_line_and_exit_2(home: Path, args: list[str], needle: str) -> None:
    line = assert_one_line_error(cli(home, *args))
    assert needle in line
    assert running(home) == []


def test_help(home: Path) -> None:
    done = cli(home, "--help")
    assert done.returncode == 0
    for command in ("run", "exec", "providers", "ls", "kill", "gc"):
        assert command in done.stdout
    assert cli(home, "run", "--help").returncode == 0


def test_console_script_is_installed(home: Path) -> None:
    script = shutil.which("sandlot", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the sandlot script is not installed next to this interpreter")
    done = subprocess.run(
        [script, "run", "--", "echo via script"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert (done.stdout, done.returncode) == ("via script\n", 0)


def test_importing_the_cli_stays_light() -> None:
    code = "import sys, sandlot.cli; print('rich' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "False\n"  # rich is imported by the commands that print
