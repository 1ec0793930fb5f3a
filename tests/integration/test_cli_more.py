"""``sandlot create``, ``cp``, ``logs``, ``--json``, ``--version`` and ``completion``, run for
real: a subprocess per call, real bubblewrap sandboxes (and again through a real ``sandlot
serve`` in tests/remote/test_cli_shared.py, where ``SANDLOT_URL`` reaches the subprocesses).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_cli import CLI, _env, assert_one_line_error, cli, home, running

# test_cli's fixture, imported so that pytest finds it; every test (at the end), so that
# tests/remote/test_cli_shared.py runs them again through a server.
__all__ = ["home", "made"]


def remote() -> bool:
    return bool(os.environ.get("SANDLOT_URL"))


def create(home: Path, *args: str) -> str:
    done = cli(home, "create", *args)
    assert done.returncode == 0, done.stderr
    sandbox_id = done.stdout.strip()
    assert sandbox_id.startswith("sb-"), done.stdout
    return sandbox_id


@pytest.fixture
def made(home: Path) -> Iterator[str]:
    """A sandbox made by `sandlot create`, killed at the end."""
    sandbox_id = create(home, "--timeout", "120")
    yield sandbox_id
    cli(home, "kill", sandbox_id)


# -- create ------------------------------------------------------------------------------------


def test_create_outlives_the_command_until_killed(home: Path) -> None:
    sandbox_id = create(home, "--timeout", "120")
    # The command has ended; its sandbox runs on, for other commands.
    assert sandbox_id in [i["id"] for i in running(home)]
    done = cli(home, "exec", sandbox_id, "--", "echo kept > /workspace/f")
    assert done.returncode == 0, done.stderr
    done = cli(home, "exec", sandbox_id, "cat", "/workspace/f")
    assert (done.stdout, done.returncode) == ("kept\n", 0)

    done = cli(home, "kill", sandbox_id)
    assert (done.stdout, done.returncode) == (f"killed {sandbox_id}\n", 0)
    assert sandbox_id not in [i["id"] for i in running(home)]
    assert_one_line_error(cli(home, "exec", sandbox_id, "--", "true"))


def test_create_takes_the_spec_and_prints_its_record_as_json(home: Path) -> None:
    args = [
        "--json",
        "-t",
        "120",
        "--idle-timeout",
        "900",
        "-e",
        "GREETING=hi",
        "-m",
        "who=cli-more",
    ]
    done = cli(home, "create", *args, "-w", "/workspace/src", "--memory-mb", "256")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    try:
        assert record["id"].startswith("sb-")
        assert record["state"] == "running"
        assert record["metadata"]["who"] == "cli-more"
        assert record["idle_timeout"] == 900
        assert [i["id"] for i in running(home, "who=cli-more")] == [record["id"]]
        done = cli(home, "exec", record["id"], "--", 'echo "$GREETING"; pwd')
        assert (done.stdout, done.returncode) == ("hi\n/workspace/src\n", 0)
    finally:
        cli(home, "kill", record["id"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--memory-mb", "1"], "memory_mb"),
        (["--provider", "nope"], "unknown provider"),
        (["--workdir", "rel"], "absolute"),
        (["--timeout", "0"], "--timeout"),
        (["--idle-timeout", "-1"], "--idle-timeout"),
        (["-e", "novalue"], "KEY=VALUE"),
    ],
)
def test_create_refuses_bad_input(home: Path, args: list[str], needle: str) -> None:
    assert needle in assert_one_line_error(cli(home, "create", *args))
    assert running(home) == []


# -- cp ----------------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (root / "run.sh").chmod(0o755)
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    (root / "sub" / "deeper" / "c").write_text("")
    (root / "link").symlink_to("a.txt")


def _same_tree(one: Path, two: Path) -> None:
    def listing(root: Path) -> list[tuple[str, str, bytes | str, int]]:
        found = []
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found.append((rel, "link", os.readlink(path), 0))
            elif path.is_dir():
                found.append((rel, "dir", b"", 0))
            else:
                found.append((rel, "file", path.read_bytes(), path.stat().st_mode & 0o111))
        return found

    assert listing(one) == listing(two)


def test_cp_a_file_both_ways(home: Path, made: str, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    done = cli(home, "cp", str(tmp_path / "in.txt"), f"{made}:/workspace/in.txt")
    assert (done.stdout, done.stderr, done.returncode) == ("", "", 0)
    done = cli(home, "exec", made, "cat", "/workspace/in.txt")
    assert done.stdout == "one\ntwo\n"

    # Into an existing folder, under its own name; back into a local folder likewise.
    assert cli(home, "cp", str(tmp_path / "in.txt"), f"{made}:/tmp").returncode == 0
    (tmp_path / "back").mkdir()
    done = cli(home, "cp", f"{made}:/tmp/in.txt", str(tmp_path / "back"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "back" / "in.txt").read_text() == "one\ntwo\n"
    done = cli(home, "cp", f"{made}:/workspace/in.txt", str(tmp_path / "renamed.txt"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "renamed.txt").read_text() == "one\ntwo\n"


def test_cp_a_folder_both_ways(home: Path, made: str, tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    done = cli(home, "cp", str(tmp_path / "src"), f"{made}:/workspace")
    assert done.returncode == 0, done.stderr
    done = cli(home, "exec", made, "--", "cd /workspace/src && ./run.sh && readlink link")
    assert (done.stdout, done.returncode) == ("ran\na.txt\n", 0), done.stderr

    # Back to a new local name: the folder's content lands there.
    done = cli(home, "cp", f"{made}:/workspace/src", str(tmp_path / "copy"))
    assert done.returncode == 0, done.stderr
    _same_tree(tmp_path / "src", tmp_path / "copy")
    # To an existing local folder: inside it, under its own name.
    (tmp_path / "into").mkdir()
    assert cli(home, "cp", f"{made}:/workspace/src", str(tmp_path / "into")).returncode == 0
    _same_tree(tmp_path / "src", tmp_path / "into" / "src")


def test_cp_stdin_and_stdout(home: Path, made: str) -> None:
    done = cli(home, "cp", "-", f"{made}:/workspace/note", input="from stdin\n")
    assert done.returncode == 0, done.stderr
    done = cli(home, "cp", f"{made}:/workspace/note", "-")
    assert (done.stdout, done.returncode) == ("from stdin\n", 0)

    # Bytes come out exactly; a folder comes out as a tar stream.
    cli(
        home,
        "exec",
        made,
        "--",
        "mkdir -p /workspace/d/e && printf '\\000\\377' > /workspace/d/e/x",
    )
    out = subprocess.run(
        [*CLI, "cp", f"{made}:/workspace/d/e/x", "-"], env=_env(home), capture_output=True
    )
    assert (out.stdout, out.returncode) == (b"\x00\xff", 0)
    out = subprocess.run(
        [*CLI, "cp", f"{made}:/workspace/d", "-"], env=_env(home), capture_output=True
    )
    assert out.returncode == 0, out.stderr
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        assert sorted(tar.getnames()) == ["d", "d/e", "d/e/x"]
        member = tar.extractfile("d/e/x")
        assert member is not None and member.read() == b"\x00\xff"


def test_cp_never_writes_through_a_link(home: Path, made: str, tmp_path: Path) -> None:
    """Links in the sandbox come out as links, never followed; and a link already at the
    place of a file in the destination is not written through."""
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    make = f"mkdir -p /workspace/d && ln -s {victim} /workspace/d/evil && echo new > /workspace/d/f"
    assert cli(home, "exec", made, "--", make).returncode == 0

    done = cli(home, "cp", f"{made}:/workspace/d", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert os.readlink(tmp_path / "out" / "evil") == str(victim)
    assert (tmp_path / "out" / "f").read_text() == "new\n"

    (tmp_path / "trap").mkdir()
    (tmp_path / "trap" / "f").symlink_to(victim)
    done = cli(home, "cp", f"{made}:/workspace/d/.", str(tmp_path / "trap"))
    assert "cannot write" in assert_one_line_error(done)
    assert victim.read_text() == "untouched\n"


def test_cp_errors_are_clear(home: Path, made: str, tmp_path: Path) -> None:
    local = str(tmp_path / "f")
    Path(local).write_text("x")
    cases = [
        (["cp", f"{made}:/workspace/nope", local], "no such file or folder"),
        (["cp", str(tmp_path / "nope"), f"{made}:/workspace"], "cannot read"),
        (["cp", "sb-000000000000:/workspace/f", local], "sb-000000000000"),
        (["cp", local, str(tmp_path / "g")], "one side must be in a sandbox"),
        (["cp", f"{made}:/a", f"{made}:/b"], "only one side"),
        (["cp", local, f"{made}:relative"], "absolute path"),
        (["cp", "-", f"{made}:/workspace"], "is a folder"),
    ]
    for args, needle in cases:
        assert needle in assert_one_line_error(cli(home, *args, input="")), args


# -- logs --------------------------------------------------------------------------------------


def _session(home: Path) -> str:
    done = cli(home, "sessions", "create")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_logs_of_a_session_shows_commands_output_and_exits(home: Path) -> None:
    session = _session(home)
    done = cli(home, "run", "--session", session, "--", "echo one; echo two >&2; printf x; exit 3")
    assert done.returncode == 3, done.stderr

    done = cli(home, "logs", session)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = lines.index("$ echo one; echo two >&2; printf x; exit 3")
    assert lines[start + 1 : start + 4] == ["one", "x", "[exit 3]"]
    assert "two\n" in done.stderr

    done = cli(home, "logs", "--json", session)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [e["kind"] for e in events]
    assert {"started", "stdout", "stderr", "exit"} <= set(kinds)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # The same shape as `sessions events --json`.
    done = cli(home, "sessions", "events", "--json", session)
    assert [json.loads(line) for line in done.stdout.splitlines()] == events


def test_logs_follow_prints_a_running_command_and_ends_with_its_sandbox(home: Path) -> None:
    session = _session(home)
    script = "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.5; done; echo last"
    runner = subprocess.Popen(
        [*CLI, "run", "--session", session, "--", "echo go; read _; " + script],
        env=_env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    follower = None
    try:
        assert runner.stdout is not None and runner.stdout.readline() == "go\n"
        shown = json.loads(cli(home, "sessions", "show", session).stdout)
        sandbox_id = shown["sandbox_id"]
        follower = subprocess.Popen(
            [*CLI, "logs", "-f", sandbox_id],
            env=_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        seen = []
        for line in follower.stdout:  # the log so far, up to the command waiting for us
            seen.append(line)
            if line.startswith("$ echo go"):
                break
        runner.communicate("\n", timeout=60)  # the command goes on now, to its end
        seen.append(follower.stdout.read())  # ends by itself: the run's sandbox is detached
        assert follower.wait(timeout=30) == 0
    finally:
        for proc in (runner, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = "".join(seen).splitlines()
    start = lines.index("$ echo go; read _; " + script)
    printed = ["go", *(f"line{i}" for i in range(1, 7)), "last", "[exit 0]"]
    assert lines[start + 1 : start + 10] == printed
    assert f"[sandbox ended {sandbox_id}]" in lines[start:]


def test_logs_follow_of_a_session_stops_at_ctrl_c(home: Path) -> None:
    session = _session(home)
    follower = subprocess.Popen(
        [*CLI, "logs", "-f", session],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    assert follower.stdout.readline() == "[session created]\n"
    done = cli(home, "run", "--session", session, "--", "echo later")
    assert done.returncode == 0, done.stderr
    for line in follower.stdout:
        if line == "later\n":
            break
    follower.send_signal(signal.SIGINT)
    assert follower.wait(timeout=30) == 130
    assert "Traceback" not in follower.stderr.read()  # type: ignore[union-attr]


def test_logs_of_a_created_sandbox(home: Path, made: str) -> None:
    done = cli(home, "exec", made, "--", "echo recorded")
    assert done.returncode == 0, done.stderr
    done = cli(home, "logs", made)
    if not remote():  # embedded, only a session's sandboxes are recorded
        assert "keeps no transcript" in assert_one_line_error(done)
        return
    assert done.returncode == 0, done.stderr
    assert "$ echo recorded\nrecorded\n[exit 0]\n" in done.stdout


def test_logs_of_nothing_is_a_clear_error(home: Path) -> None:
    assert "no sandbox or session" in assert_one_line_error(cli(home, "logs", "sb-000000000000"))


# -- --json, --version, completion -------------------------------------------------------------


def test_run_and_exec_json(home: Path, made: str) -> None:
    done = cli(home, "run", "--json", "--", "echo out; echo err >&2; exit 4")
    assert done.returncode == 4
    result = json.loads(done.stdout)
    assert result == {
        "exit_code": 4,
        "signal": None,
        "timed_out": False,
        "stdout": "out\n",
        "stderr": "err\n",
        "truncated": False,
    }
    done = cli(home, "exec", "--json", "--timeout", "1", made, "--", "echo part; sleep 30")
    assert done.returncode == 124
    result = json.loads(done.stdout)
    assert (result["timed_out"], result["stdout"], result["exit_code"]) == (True, "part\n", None)


def test_json_outputs_parse(home: Path) -> None:
    for args in (
        ["ls", "--json"],
        ["providers", "--json"],
        ["sessions", "ls", "--json"],
        ["sessions", "create", "--json"],
        ["secrets", "ls", "--json"],
        ["remote", "status", "--json"],
    ):
        done = cli(home, *args)
        assert done.returncode == 0, (args, done.stderr)
        json.loads(done.stdout)


def test_version(home: Path) -> None:
    import sandlot

    for flag in ("--version", "-V"):
        done = cli(home, flag)
        assert (done.stdout, done.returncode) == (f"sandlot {sandlot.__version__}\n", 0)


def test_completion_scripts_and_answers(home: Path) -> None:
    done = cli(home, "completion", "bash")
    assert done.returncode == 0
    assert "_SANDLOT_COMPLETE=complete_bash" in done.stdout
    assert "complete -o default -F _sandlot_completion sandlot" in done.stdout
    for shell in ("zsh", "fish", "powershell"):
        done = cli(home, "completion", shell)
        assert done.returncode == 0 and "_SANDLOT_COMPLETE" in done.stdout, shell
    assert "invalid" in assert_one_line_error(cli(home, "completion", "tcsh")).lower()

    # What the bash script asks: the commands (or options) that start with the word.
    asked = _env(home, {"_SANDLOT_COMPLETE": "complete_bash", "COMP_CWORD": "1"})
    done = cli(home, env={**asked, "COMP_WORDS": "sandlot c"})
    assert done.stdout.split() == ["create", "cp", "completion"]
    done = cli(home, env={**asked, "COMP_WORDS": "sandlot logs --f", "COMP_CWORD": "2"})
    assert done.stdout.split() == ["--follow"]


def test_startup_of_a_command_does_not_build_the_others(home: Path) -> None:
    code = (
        "import sys; from sandlot.cli import entry_point as e; "
        "c = e.build_app('cp'); print(sorted(i.name for i in c.registered_commands)); "
        "print(sorted(m for m in sys.modules if m.startswith('sandlot.cli.')))"
    )
    done = subprocess.run(
        [*CLI[:1], "-c", code], env=_env(home), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    names, modules = done.stdout.splitlines()
    assert names == "['cp']"
    assert "sandlot.cli.logs" not in modules and "sandlot.cli.create" not in modules


__all__ += [name for name in list(globals()) if name.startswith("test_")]
